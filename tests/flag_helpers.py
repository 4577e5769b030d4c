"""Builds a trainer Config from command-line style arguments, as trainer.main does."""

from trainer import config as config_lib


def parse(*args):
  # XLA off unless a test asks: compiling every small MLP trainer built in-process costs
  # about a second each. --jit_compile=auto is covered by tests/trainer/test_xla.py and by
  # every test that runs the CLI (end to end, resume, kill -9).
  if not any(a.startswith("--jit_compile") for a in args):
    args = (*args, "--jit_compile=off")
  return config_lib.from_args(args)
