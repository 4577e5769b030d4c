"""Builds a trainer Config from command-line style arguments, as trainer.main does."""

from trainer.options.config import from_args


def parse(*args):
  # XLA off unless a test asks: compiling every small MLP trainer built in-process costs
  # about a second each. --jit_compile=auto is covered by tests/trainer/test_xla.py and by
  # every test that runs the CLI (end to end, resume, kill -9).
  if not any(a.startswith("--jit_compile") for a in args):
    args = (*args, "--jit_compile=off")
  # float32 unless a test asks: --mixed_precision=auto (the default) picks bfloat16 for
  # convolutions on a CPU with AVX-512 BF16 only, and a test's numbers must not depend on
  # the CPU it runs on. auto is covered by tests/trainer/test_train.py (cpu_has_bf16 set)
  # and by the tests that run the CLI.
  if not any(a.startswith("--mixed_precision") for a in args):
    args = (*args, "--mixed_precision=float32")
  return from_args(args)


def build_trainer(cfg, strategy=None, **kwargs):
  """The Trainer of cfg as train.py builds it: the data its flags describe (run_files.load_data)
  and the run's Plan (planning.resolve, no record); kwargs: Trainer's (restore, writer...)."""
  # pylint: disable=g-import-not-at-top
  from trainer.run import distribute, planning, run_files
  from trainer.inner.trainer import Trainer
  strategy = strategy or distribute.create_strategy(cfg)
  data = run_files.load_data(cfg)
  return Trainer(cfg, strategy, data, planning.resolve(cfg, data, strategy), **kwargs)
