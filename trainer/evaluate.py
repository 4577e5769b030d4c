"""Evaluate a run's checkpoint without training, or each new one as training writes them.

    python -m trainer.evaluate --model_dir=runs/cnn [--split=test] [--checkpoint=PATH]
    python -m trainer.evaluate --model_dir=runs/cnn --continuous   # an eval VM beside training

The model, dataset and validation split are the run's own (model_dir/flags.json); a flag
given here overrides the run's (e.g. --dataset, --data_dir, --batch_size). Figures go to
the console, model_dir/eval_<split>.json and TensorBoard's eval_<split> run: loss,
accuracy, the confusion matrix, the worst mistakes and per-class accuracy.
"""

from trainer import tf_env

tf_env.apply()  # before anything imports TensorFlow

import os  # pylint: disable=g-import-not-at-top,wrong-import-order
import time  # pylint: disable=g-import-not-at-top,wrong-import-order

from absl import flags, logging  # pylint: disable=g-import-not-at-top

from trainer import cli  # pylint: disable=g-import-not-at-top
from trainer import flags as tl_flags  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
# How the training run ran (trainer/flags.py), but how its data is read: this process's
# own (a single-machine evaluator), never copied from the run. jit_compile among them:
# runs before --jit_compile=auto recorded it as true/false.
_HOW_IT_RAN = tuple(n for n in tl_flags.HOW_IT_RUNS if n not in tl_flags.READS_DATA)
HELP_GROUPS = {"Evaluation": ["model_dir", "split", "checkpoint", "continuous",
                              "poll_seconds", "timeout"],
               "Overrides of the run's flags": ["dataset", "data_dir", "manual_dir",
                                                "batch_size", "strategy", "eval_images"]}


def define_flags() -> None:
  tl_flags.define_flags()
  flags.DEFINE_string("split", "test", "The split to evaluate: test, validation (when the "
                      "run held one out) or train.")
  flags.DEFINE_string("checkpoint", None, "A checkpoint prefix, e.g. "
                      "model_dir/checkpoints/ckpt-100 or model_dir/best/ckpt-80 "
                      "(default: the latest).")
  flags.DEFINE_boolean("continuous", False, "Evaluate each new checkpoint as it appears, "
                       "until the run's last step (or --timeout without a new one).")
  flags.DEFINE_integer("poll_seconds", 10, "--continuous: seconds between looks at "
                       "model_dir.")
  flags.DEFINE_integer("timeout", 3600, "--continuous: stop after this many seconds "
                       "without a new checkpoint.")


def _run_config(model_dir: str):
  """The run's Config from model_dir/flags.json, with the flags given here on top."""
  from trainer import config, files, run_record  # pylint: disable=g-import-not-at-top
  files.check_checkpoint_path(model_dir)
  recorded = run_record.load(model_dir)  # flags.json, or results.json of an older run
  if recorded is None:
    raise cli.UsageError(f"no flags.json in --model_dir={model_dir}: not a tapeloop run "
                         "(train one there first with python -m trainer.main)")
  values = {k: v for k, v in recorded.items()
            if k in tl_flags.OWN_FLAGS and k not in _HOW_IT_RAN}
  values.update({name: FLAGS[name].value for name in tl_flags.OWN_FLAGS
                 if FLAGS[name].present})
  values["model_dir"] = model_dir
  return config.from_values(values)


class Evaluator:
  """The run's model on one split; evaluates checkpoints and writes what it finds."""

  def __init__(self, cfg, split: str):
    import keras  # pylint: disable=g-import-not-at-top
    from trainer import actions, distribute, summaries  # pylint: disable=g-import-not-at-top
    from trainer.loop import Trainer  # pylint: disable=g-import-not-at-top
    strategy = distribute.create_strategy(cfg)
    keras.utils.set_random_seed(cfg.seed)
    data = cfg.load_data()
    if split not in data.splits or not data.splits[split].labeled:
      held = ", ".join(s for s, v in data.splits.items() if v.labeled)
      raise cli.UsageError(f"--split={split}: the run's data has no labeled {split} split "
                           f"(it has {held})")
    self.cfg, self.split = cfg, split
    self.trainer = Trainer(cfg, strategy, data, restore=False)
    self.run = f"eval_{split}"
    self.writer = summaries.Summaries(cfg.model_dir, runs=(self.run,))
    self.pictures = (actions.EvalPictures(self.writer, data.splits[split],
                                          data.info.class_names, run=self.run)
                     if cfg.eval_images else None)

  def close(self) -> None:
    self.writer.close()

  def checkpoints(self) -> list[str]:
    """The run's checkpoints, oldest first."""
    return list(reversed(self.trainer.checkpoints.candidates()))

  def __call__(self, checkpoint: str | None) -> dict:
    from trainer import files  # pylint: disable=g-import-not-at-top
    path = self.trainer.restore(checkpoint)
    if path is None:
      raise cli.UsageError(f"no checkpoint in {self.trainer.checkpoints.directory}: train "
                           "first, or give --checkpoint")
    result = self.trainer.evaluate(self.split)
    step = result.step
    self.writer.scalars(self.run, step, result.metrics())
    if self.pictures:
      self.pictures(step, result)
    figures = {"split": self.split, "checkpoint": path, "global_step": step,
               **result.metrics(), "examples": len(result.predictions)}
    files.write_json(os.path.join(self.cfg.model_dir, f"{self.run}.json"), figures)
    print(f"{self.split} accuracy {result.accuracy:.4f} (loss {result.loss:.4f}) at step "
          f"{step}, {path}", flush=True)
    return figures


def _last_step(evaluator: Evaluator) -> tuple[int, int | None]:
  """(the run's last step as it now stands, the step it finished at or None). Read anew at
  each look: a rerun may extend the run (flags.json then holds its new length) while an
  older results.json still says it finished; and an early stop is final only as the
  checkpoint it saved says (a rerun with more patience trains on)."""
  from trainer import files  # pylint: disable=g-import-not-at-top
  model_dir = evaluator.cfg.model_dir
  cfg = _run_config(model_dir)
  total = cfg.steps_for(len(evaluator.trainer.data.splits["train"]))[1]
  results = files.read_json(os.path.join(model_dir, "results.json")) or {}
  step = results.get("global_step")
  stopped = ("stopped_early_at" in results and evaluator.trainer.step == step
             and int(evaluator.trainer.progress.stopped_early_at.numpy()) >= 0)
  return total, step if step is not None and (step >= total or stopped) else None


def _continuously(evaluator: Evaluator) -> None:
  """orbit's evaluate_continuously: each new checkpoint once, newest first when several
  arrived, until the run's last step or --timeout seconds without a new one."""
  from trainer.config import ConfigError  # pylint: disable=g-import-not-at-top
  done, last_new, unreadable = -1, time.monotonic(), None
  logging.info("watching %s for checkpoints up to step %d", evaluator.cfg.model_dir,
               _last_step(evaluator)[0])
  while True:
    # Looked at before the checkpoints: the run writes results.json after its last one.
    total, finished_at = _last_step(evaluator)
    newest = next(iter(reversed(evaluator.checkpoints())), None)
    step = int(newest.rsplit("-", 1)[1]) if newest else -1
    if step > done:
      try:
        done, last_new = evaluator(newest)["global_step"], time.monotonic()
      except ConfigError:
        if newest == unreadable:
          raise
        # Possibly still being written: one more look after a pause before giving up.
        unreadable = newest
        logging.info("%s is not readable yet; trying again", newest)
        time.sleep(FLAGS.poll_seconds)
      continue
    if done >= total or (finished_at is not None and done >= 0):
      logging.info("evaluated the run's last checkpoint (step %d): done", done)
      return
    if time.monotonic() - last_new > FLAGS.timeout:
      logging.warning("no new checkpoint for %d s (--timeout): stopping", FLAGS.timeout)
      return
    time.sleep(FLAGS.poll_seconds)


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {' '.join(argv[1:])}: flags look like --name=value")
  if not FLAGS.model_dir:
    raise cli.UsageError("--model_dir is required: the run to evaluate")
  split, checkpoint, continuous = FLAGS.split, FLAGS.checkpoint, FLAGS.continuous
  if continuous and checkpoint:
    raise cli.UsageError("--continuous evaluates each new checkpoint: drop --checkpoint")
  cfg = _run_config(FLAGS.model_dir)
  evaluator = Evaluator(cfg, split)
  if continuous:
    _continuously(evaluator)
  else:
    evaluator(checkpoint)
  evaluator.close()


def run():
  """Console script entry point (tapeloop-evaluate)."""
  define_flags()
  cli.run_app(main, "python -m trainer.evaluate --model_dir=DIR [--split=test] "
              "[--checkpoint=PATH | --continuous]", HELP_GROUPS)


if __name__ == "__main__":
  run()
