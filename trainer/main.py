"""python -m trainer.main --flagfile=configs/fashion_cnn.cfg

The flags are parsed and checked before TensorFlow is imported: --help, a mistyped flag or
a bad value answers at once."""

import shlex

from absl import flags

from trainer import cli
from trainer.options import command_line, config
from trainer.process import tf_env
from trainer.process.errors import UsageError

command_line.define_flags()
FLAGS = flags.FLAGS


def _read_record(model_dir: str) -> dict | None:
  """The flags recorded by the run in model_dir (a bucket too, read through tf.io.gfile):
  TensorFlow loads here, after the flags were checked, with its process settings first."""
  tf_env.apply()
  from trainer.run import run_files  # pylint: disable=g-import-not-at-top
  return run_files.read_record(model_dir)


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {' '.join(argv[1:])}: flags look like --name=value")
  cfg = config.from_flags(FLAGS, _read_record)
  tf_env.apply()  # before anything imports TensorFlow
  # pylint: disable=g-import-not-at-top
  from trainer import evaluate
  from trainer.run import distribute, dry_run, phases, train
  from trainer.tuning import trial
  # pylint: enable=g-import-not-at-top
  if cfg.dry_run:
    print(dry_run.report(cfg))
    return
  if cfg.strategy == "multi_worker" and distribute.is_evaluator_task():
    evaluate.cluster_evaluator(cfg.model_dir)
    return
  # A tuner's trial (trainer.tune) reports to it as one more action of the run.
  results = train.train_and_evaluate(cfg, phases.process_start(),
                                     extra_actions=trial.actions(cfg))
  split = "test" if "test_accuracy" in results else "validation"
  if f"{split}_accuracy" in results:
    tta = (f"; with TTA {results[split + '_tta_accuracy']:.4f} "
           f"(loss {results[split + '_tta_loss']:.4f})" if cfg.tta else "")
    print(f"{split} accuracy {results[split + '_accuracy']:.4f} "
          f"(loss {results[split + '_loss']:.4f}){tta} at step {results['global_step']}")
  if results["chief"]:
    print(f"results, checkpoints, TensorBoard events and export in "
          f"{shlex.quote(cfg.model_dir)}")
  else:
    print(f"worker done; the chief writes the outputs to {shlex.quote(cfg.model_dir)}")


def run():
  """Console script entry point (tapeloop-train)."""
  cli.run_app(main, "python -m trainer.main --flagfile=configs/X.cfg [--flag=value ...]",
              command_line.GROUPS)


if __name__ == "__main__":
  run()
