"""Evaluate a run's checkpoint without training, or each new one as training writes them.

    python -m trainer.evaluate --model_dir=runs/cnn [--split=test] [--checkpoint=PATH]
    python -m trainer.evaluate --model_dir=runs/cnn --continuous   # an eval VM beside training

The model, dataset and validation split are the run's own (model_dir/flags.json); a flag
given here overrides the run's (e.g. --dataset, --data_dir, --batch_size). --checkpoint is
one of the run's own (checkpoints/ or best/): another run's is refused, naming the command
that evaluates it under its own run's flags. Figures go to
the console, model_dir/eval_<split>.json and TensorBoard's eval_<split> run: loss,
accuracy, the confusion matrix, the worst mistakes and per-class accuracy (with an EMA,
the raw weights' loss and accuracy beside, in eval_<split>_raw; with the run's --tta, the
views' figures beside, in eval_<split>_tta; --tta=none here turns it off).
"""

from absl import flags

from trainer import cli
from trainer.options import command_line, declared

FLAGS = flags.FLAGS
HELP_GROUPS = {"Evaluation": ["model_dir", "split", "checkpoint", "continuous",
                              "poll_seconds", "timeout", "dry_run"],
               "Overrides of the run's flags": ["dataset", "data_dir", "manual_dir",
                                                "batch_size", "strategy", "eval_images",
                                                "tta"]}


def define_flags() -> None:
  """tapeloop's flags and evaluate's own (once per process: cli.define_flag)."""
  command_line.define_flags()
  cli.define_flag("string", "split", "test", "The split to evaluate: test, validation "
                  "(when the run held one out) or train.")
  cli.define_flag("string", "checkpoint", None, "A checkpoint prefix, e.g. "
                  "model_dir/checkpoints/ckpt-100 or model_dir/best/ckpt-80 (default: the "
                  "latest).")
  cli.define_flag("boolean", "continuous", False, "Evaluate each new checkpoint as it "
                  "appears, until the run's last step (or --timeout without a new one).")
  cli.define_flag("integer", "poll_seconds", 10, "--continuous: seconds between looks at "
                  "model_dir.")
  cli.define_flag("integer", "timeout", 3600, "--continuous: stop after this many seconds "
                  "without a new checkpoint.")


def run():
  """Console script entry point (tapeloop-evaluate): the flags are parsed before this
  module's TensorFlow part below is imported (as trainer.evaluate), then its main runs."""
  define_flags()
  cli.run_app("trainer.evaluate", "python -m trainer.evaluate --model_dir=DIR "
              "[--split=test] [--checkpoint=PATH | --continuous]", HELP_GROUPS)


# Above this line, nothing imports TensorFlow: python -m trainer.evaluate stops here.
if __name__ == "__main__":
  run()

# pylint: disable=g-import-not-at-top,wrong-import-position,wrong-import-order
from trainer.process import tf_env

tf_env.apply()  # before anything imports TensorFlow

import shlex
import time

from absl import logging

from trainer.inner import summaries
from trainer.options.values import flag_arg
from trainer.process.errors import ConfigError, UsageError
from trainer.run import dry_run, restored, run_files
# pylint: enable=g-import-not-at-top,wrong-import-position,wrong-import-order


def _run_config(model_dir: str, overrides: dict | None = None):
  """The run's Config and record from model_dir/flags.json, with the flags given here
  (or `overrides`) on top."""
  return restored.run_config(model_dir, {
      name: FLAGS[name].value for name in declared.NAMES if FLAGS[name].present}
      if overrides is None else overrides)


class CheckpointEvaluator:
  """The run's model on one split; evaluates checkpoints and writes what it finds (the
  log, TensorBoard run eval_<split>, model_dir/eval_<split>.json)."""

  def __init__(self, cfg, recorded: dict, split: str | None):
    """split None: the one training evaluates (validation when held out, else test)."""
    self.writer = summaries.Summaries(cfg.model_dir)
    self.trainer = restored.trainer(cfg, recorded, writer=self.writer)
    split = dry_run.evaluated_split(self.trainer.data, split)
    self.cfg, self.split, self.run = cfg, split, f"eval_{split}"

  def close(self) -> None:
    self.writer.close()

  def checkpoints(self) -> list[str]:
    """The run's checkpoints, oldest first."""
    return list(reversed(self.trainer.state.checkpoints.candidates()))

  def __call__(self, checkpoint: str | None) -> dict:
    path = self.trainer.restore(checkpoint)
    if path is None:
      raise UsageError(f"no checkpoint in {shlex.quote(self.trainer.state.checkpoints.directory)}: "
                       "train first, or give --checkpoint")
    result = self.trainer.evaluator.report(self.split, run=self.run)
    figures = {"split": self.split, "checkpoint": path, "global_step": result.step,
               **result.metrics(), "examples": len(result.predictions)}
    run_files.write_eval(self.cfg.model_dir, self.split, figures)
    tta = (f"; with TTA {result.tta_accuracy:.4f} (loss {result.tta_loss:.4f})"
           if result.tta_loss is not None else "")
    print(f"{self.split} accuracy {result.accuracy:.4f} (loss {result.loss:.4f}){tta} at "
          f"step {result.step}, {shlex.quote(path)}", flush=True)
    return figures


def _last_step(evaluator: CheckpointEvaluator) -> tuple[int, int | None]:
  """(the run's last step as it now stands, the step it finished at or None). Read anew at
  each look: a rerun may extend the run (flags.json then holds its new length) while an
  older results.json still says it finished; and an early stop is final only as the
  checkpoint it saved says (a rerun with more patience trains on). Without a readable
  results.json (damaged, or not written yet) the last checkpoint evaluated tells an early
  stop alone."""
  model_dir = evaluator.cfg.model_dir
  cfg, _ = _run_config(model_dir)
  total = cfg.steps_for(len(evaluator.trainer.data.splits["train"]))[1]
  results = run_files.read_results(model_dir, training=False) or {}
  step = results.get("global_step")
  step = step if isinstance(step, int) and not isinstance(step, bool) else None
  checkpoint_stopped = int(evaluator.trainer.state.progress.stopped_early_at.numpy()) >= 0
  if step is None:
    return total, evaluator.trainer.state.step if checkpoint_stopped else None
  stopped = ("stopped_early_at" in results and evaluator.trainer.state.step == step
             and checkpoint_stopped)
  return total, step if step >= total or stopped else None


def _step_of(checkpoint: str) -> int:
  return int(checkpoint.rsplit("-", 1)[1])


def _continuously(evaluator: CheckpointEvaluator, poll_seconds: float, timeout: float, *,
                  each: bool = False, after: int = -1) -> None:
  """orbit's evaluate_continuously: each new checkpoint once, newest first when several
  arrived (each: oldest first, every one still kept, for a whole curve), until the run's
  last step or `timeout` seconds without a new one. after: the step evaluated before."""
  done, last_new, unreadable = after, time.monotonic(), None
  logging.info("watching %s for checkpoints up to step %d", shlex.quote(evaluator.cfg.model_dir),
               _last_step(evaluator)[0])
  while True:
    # Looked at before the checkpoints: the run writes results.json after its last one.
    total, finished_at = _last_step(evaluator)
    new = [c for c in evaluator.checkpoints() if _step_of(c) > done]
    if new:
      chosen = new[0] if each else new[-1]
      try:
        done, last_new = evaluator(chosen)["global_step"], time.monotonic()
      except ConfigError:
        if chosen == unreadable:
          raise
        # Possibly still being written: one more look after a pause before giving up.
        unreadable = chosen
        logging.info("%s is not readable yet; trying again", shlex.quote(chosen))
        time.sleep(poll_seconds)
        continue
      continue
    if done >= total or (finished_at is not None and done >= 0):
      logging.info("evaluated the run's last checkpoint (step %d): done", done)
      return
    if time.monotonic() - last_new > timeout:
      logging.warning("no new checkpoint for %d s (--timeout): stopping", timeout)
      return
    time.sleep(poll_seconds)


def cluster_evaluator(model_dir: str, poll_seconds: float = 2.0,
                      timeout: float = 24 * 3600.0) -> None:
  """The `evaluator` task of a TF_CONFIG cluster (trainer.main on it): the run's eval split
  on each checkpoint the chief writes (TensorBoard's eval_<split> run), beside training and
  outside its collective, until the run's last step; a day without a new checkpoint ends
  it. It waits for the chief to start the run (flags.json). Training stopped by a signal
  is resumed by the engine: the evaluator waits for it. Restarted, it goes on after the
  step its eval_<split>.json records."""
  waited = time.monotonic()
  while run_files.read_record(model_dir) is None:
    if time.monotonic() - waited > timeout:
      raise UsageError(f"no run started in {flag_arg('model_dir', model_dir)} for {timeout:.0f} s: "
                       "the evaluator task needs the chief's model_dir")
    time.sleep(poll_seconds)
  # The training tasks' flags but one process's strategy: the evaluator is no worker.
  cfg, recorded = _run_config(model_dir, {"strategy": "auto"})
  logging.info("evaluator task: evaluating the checkpoints of %s", shlex.quote(model_dir))
  evaluator = CheckpointEvaluator(cfg, recorded, None)
  before = run_files.read_eval(model_dir, evaluator.split) or {}
  try:
    _continuously(evaluator, poll_seconds, timeout, each=True,
                  after=int(before.get("global_step", -1)))
  finally:
    evaluator.close()


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {' '.join(argv[1:])}: flags look like --name=value")
  if not FLAGS.model_dir:
    raise UsageError("--model_dir is required: the run to evaluate")
  split, checkpoint, continuous = FLAGS.split, FLAGS.checkpoint, FLAGS.continuous
  if continuous and checkpoint:
    raise UsageError("--continuous evaluates each new checkpoint: drop --checkpoint")
  cfg, recorded = _run_config(FLAGS.model_dir)
  if checkpoint:
    run_files.check_own_checkpoint(cfg.model_dir, checkpoint)
  if cfg.dry_run:
    print(dry_run.evaluate_report(cfg, recorded, split, checkpoint, continuous))
    return
  evaluator = CheckpointEvaluator(cfg, recorded, split)
  if continuous:
    _continuously(evaluator, FLAGS.poll_seconds, FLAGS.timeout)
  else:
    evaluator(checkpoint)
  evaluator.close()
