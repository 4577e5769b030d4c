"""train_and_evaluate(config): data, strategy, Trainer, then test eval, export, results."""

from __future__ import annotations

import os
import signal
import tempfile
import time

import keras
import tensorflow as tf
from absl import logging

from input_pipeline.pipeline import check_batch
from models import summary as model_summary
from trainer import actions as tl_actions
from trainer import distribute, export, files, optimization, run_record, summaries
from trainer.phases import Phases
from trainer.config import FOLDER_CHECK, Config, ConfigError
from trainer.controller import Controller, Timing
from trainer.loop import Trainer


def train_and_evaluate(config: Config, process_start: float | None = None) -> dict:
  """Trains to the target step (resuming from model_dir), evaluates, exports; returns the
  results that also go to model_dir/results.json. process_start: when the command started
  (trainer.phases.process_start), so that the phases include the start-up before this."""
  start = time.time()
  phases = Phases(process_start or start)
  if process_start:
    phases.add("start_up", start - process_start)  # Python, TensorFlow's import, flags
  files.check_model_dir(config.model_dir)
  # Before any work: a rerun that changes what is trained is refused here.
  recorded = run_record.load(config.model_dir)
  config, changed = run_record.check(config, recorded)
  strategy = distribute.create_strategy(config)  # first: it may configure the runtime
  # Signals are answered from here on, not only in the training loop: a worker killed
  # while loading data or exporting would leave the others waiting in a collective.
  preemption = tl_actions.PreemptionStop(agree=distribute.any_worker(strategy),
                                         alone=not distribute.several_workers(strategy))
  preemption.install()
  try:
    config, data = _prepare(config, recorded, phases, start)
    chief = distribute.is_chief(strategy)
    # Under MultiWorkerMirroredStrategy every worker saves (checkpoints, export); a non-chief
    # worker does so into a scratch directory removed at the end.
    scratch = None if chief else tempfile.mkdtemp(prefix="tapeloop-worker-")
    try:
      return _run(config, strategy, data, phases, scratch, recorded, changed, preemption)
    finally:
      if scratch:
        files.rmtree(scratch)
  finally:
    preemption.uninstall()


def _prepare(config: Config, recorded: dict | None, phases: Phases, start: float):
  """Seeds, the data, and every check that needs the data; returns (the config with the
  schedule's horizon, the data). Nothing is written to model_dir before this passes."""
  keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  logging.info("precision policy: %s%s", config.mixed_precision,
               " with dynamic loss scaling" if config.mixed_precision == "mixed_float16"
               else "")
  phases.add("setup", time.time() - start)
  with phases.time("data"):
    data = config.load_data()
  run_record.check_pipeline(config, recorded, data)
  train_split = data.splits.get("train")
  if train_split is None or not train_split.labeled:
    raise ConfigError(f"--dataset={config.dataset} has no labeled train split")
  # Before model_dir exists: a batch the split cannot fill must leave nothing behind.
  check_batch(config.batch_size, len(train_split), "training", need_full=True)
  if config.step_batch > len(train_split):
    raise ConfigError(f"--batch_size={config.batch_size} x --accumulation_steps="
                      f"{config.accumulation_steps} is more than the {len(train_split)} "
                      "training examples: lower either")
  steps_per_epoch, total_steps = config.steps_for(len(train_split))
  config = run_record.resolve_horizon(config, recorded, steps_per_epoch, total_steps)
  if recorded is None:  # a run started before this was refused still resumes
    optimization.Schedule.of(config, total_steps).check_warmup()
  if _eval_split(data) is None and (config.keep_best or config.early_stopping
                                    or config.lr_schedule == "plateau"):
    raise ConfigError("--keep_best, --early_stopping and --lr_schedule=plateau need labeled "
                      "data to evaluate: add --validation_split=0.1")
  logging.info("data %s: %s, image shape %s, %d classes", data.info.name,
               dict(data.info.split_sizes), data.info.image_shape, data.info.num_classes)
  return config, data


def _eval_split(data) -> str | None:
  """What training evaluates: the validation split when one is held out, else test."""
  for split in ("validation", "test"):
    if split in data.splits and data.splits[split].labeled:
      return split
  return None


def _actions(config: Config, trainer: Trainer, writer, data, eval_split, output_dir: str,
             phases: Phases, preemption: tl_actions.PreemptionStop):
  """The outer loop's actions, in the order they run at each boundary."""
  steps = dict(total_steps=trainer.total_steps)
  actions = [
      # First: on a signal, the boundary saves the checkpoint and stops, nothing else.
      preemption,
      tl_actions.ProgressLine(steps_per_epoch=trainer.steps_per_epoch,
                              batch_size=config.step_batch, **steps),
      tl_actions.DivergenceCheck(
          lambda: trainer.loss_scale, retries=config.divergence_retries, recover=trainer.recover,
          recoveries=lambda: int(trainer.progress.recoveries.numpy())),
      tl_actions.TrainSummaries(writer, learning_rate=trainer.learning_rate,
                                loss_scale=lambda: trainer.loss_scale),
  ]
  pictures = None
  if eval_split:
    if config.eval_images:
      pictures = tl_actions.EvalPictures(writer, data.splits[eval_split], data.info.class_names)
    raw = (lambda split: trainer.evaluate(split, raw=True)) if trainer.ema else None
    actions.append(tl_actions.Evaluate(evaluate=trainer.evaluate, split=eval_split,
                                       interval=trainer.eval_interval, writer=writer,
                                       pictures=pictures, raw=raw, **steps))
    metric = config.keep_best or "loss"
    plateau = config.lr_schedule == "plateau"
    if config.keep_best or config.early_stopping or plateau:
      actions.append(tl_actions.BestMetric(metric, trainer.progress))
    if plateau:
      actions.append(tl_actions.ReduceOnPlateau(
          patience=config.plateau_patience, factor=config.lr_decay_rate, metric=metric,
          progress=trainer.progress, learning_rate=trainer.learning_rate))
    if config.keep_best:
      actions.append(tl_actions.KeepBest(
          metric=metric, save=trainer.checkpoints.save_best,
          export=lambda: export.save_model(trainer.eval_model, data.info.image_shape,
                                           os.path.join(output_dir, "export_best"),
                                           data.info.class_names)))
    if config.early_stopping:
      actions.append(tl_actions.EarlyStopping(patience=config.early_stopping, metric=metric,
                                              progress=trainer.progress))
  if config.profile_steps:
    actions.append(tl_actions.Profiler(config.profile_steps,
                                       os.path.join(config.model_dir, "profile")))
  actions += [tl_actions.Checkpoint(save=phases.timed("checkpoints", trainer.checkpoints.save),
                                    interval=trainer.checkpoint_interval, **steps)]
  return actions, pictures


def _stopped_early_at(config: Config, progress) -> int:
  """The step an early stop ended the run at (-1: none), when it holds for these flags: a
  rerun without --early_stopping, with more patience, or on another metric (BestMetric
  then counts anew) trains on."""
  at = int(progress.stopped_early_at.numpy())
  if at < 0:
    return -1
  patience = config.early_stopping
  if patience and int(progress.evals_since_best.numpy()) >= patience:
    return at
  logging.info("this run stopped early at step %d; with %s it trains on", at,
               f"--early_stopping={patience} on eval {config.keep_best or 'loss'}" if patience
               else "no --early_stopping")
  progress.stopped_early_at.assign(-1)
  return -1


def _describe_eval(config: Config, trainer: Trainer, eval_split: str | None) -> None:
  if eval_split is None:
    logging.info("no labeled validation or test split: nothing is evaluated during training")
    return
  every = (f"every {trainer.eval_interval} steps" if config.eval_every
           else f"every epoch ({trainer.eval_interval} steps)")
  logging.info("evaluating on the %s split %s%s", eval_split, every,
               "" if eval_split == "validation" else
               " (no --validation_split: the test split stands in for validation)")
  if eval_split == "test" and (config.keep_best or config.early_stopping):
    logging.warning("--keep_best/--early_stopping select on the test split: its final "
                    "figure is then optimistic; hold out --validation_split=0.1 instead")


def _run(config: Config, strategy, data, phases: Phases, scratch: str | None,
         recorded: dict | None, changed: dict, preemption: tl_actions.PreemptionStop) -> dict:
  chief = scratch is None
  output_dir = config.model_dir if chief else scratch
  with phases.time("build"):  # model, optimizer, restore
    trainer = Trainer(config, strategy, data, output_dir=scratch)
  run_record.check_length(config, trainer.step, trainer.total_steps)
  flag_changes = []
  if chief:  # what the run was started as, and changes since: trainer.evaluate reads it
    tf.io.gfile.makedirs(config.model_dir)
    flag_changes = run_record.write(config, recorded, changed, trainer.step, trainer.total_steps,
                                    data.pipeline)
    if data.folder_check:
      files.write_json(os.path.join(config.model_dir, FOLDER_CHECK), data.folder_check)
  writer = summaries.Summaries(config.model_dir, enabled=chief)
  table = model_summary.table(trainer.model)
  logging.info("model %s: %d parameters\n%s", config.model, trainer.model.count_params(),
               model_summary.console(table))
  writer.text("train", 0, "model", model_summary.markdown(table))  # flushed with the flags
  writer.flags(config.hparams())
  eval_split = _eval_split(data)
  _describe_eval(config, trainer, eval_split)
  actions, pictures = _actions(config, trainer, writer, data, eval_split, output_dir, phases,
                               preemption)
  step = trainer.step
  stopped_at = _stopped_early_at(config, trainer.progress)
  if stopped_at >= 0:
    logging.info("this run stopped early at step %d (--early_stopping): evaluating only",
                 stopped_at)
    timing = Timing()
  else:
    if step >= trainer.total_steps:
      logging.info("already at step %d of %d: evaluating only", step, trainer.total_steps)
    else:
      batch = str(config.batch_size) + (f" x {config.accumulation_steps} accumulated"
                                        if config.accumulation_steps > 1 else "")
      logging.info("training %s on %s from step %d to %d (%d steps/epoch, global batch %s)",
                   config.model, config.dataset, step, trainer.total_steps,
                   trainer.steps_per_epoch, batch)
    timing = Controller(trainer=trainer, actions=actions, total_steps=trainer.total_steps,
                        steps_per_loop=config.steps_per_loop,
                        batch_size=config.step_batch,
                        interrupted_at=trainer.progress.interrupted_at).run()
  # From here (also when no step was left to train): a signal lets the evals and the
  # export finish.
  preemption.phase = "after"
  results_path = os.path.join(config.model_dir, "results.json")
  stop, timing = timing.stop, {"examples_per_sec": timing.examples_per_sec,
                               "train_seconds": timing.train_seconds,
                               "compile_seconds": timing.compile_seconds}
  trained_here = timing["examples_per_sec"] is not None  # this process trained
  previous = files.read_json(results_path) if not trained_here else None
  if previous:
    # A rerun of a finished run only evaluates: keep the training figures it measured.
    timing = {k: previous.get(k, v) for k, v in timing.items()}

  results = {"global_step": trainer.step, "dataset": data.info.name,
             "model": config.model, "parameters": trainer.model.count_params(),
             "replicas": strategy.num_replicas_in_sync, "chief": chief,
             "pipeline": data.pipeline, **timing,
             "weights_digest": trainer.weights_digest(), "eval_split": eval_split}
  if stop is not None or stopped_at >= 0:
    results["stopped_early_at"] = trainer.step if stop is not None else stopped_at
  if flag_changes:
    results["flag_changes"] = flag_changes
  recoveries = int(trainer.progress.recoveries.numpy())
  if recoveries or config.divergence_retries:
    results["divergence_recoveries"] = recoveries
    results["skipped_steps"] = int(trainer.progress.skipped_steps.numpy())
  best = trainer.progress.best()
  if best is not None and (config.keep_best or config.early_stopping):
    results["best_eval"] = dict(zip(("metric", "value", "step"), best))
  logging.info("model weights digest at step %d: %s", results["global_step"],
               results["weights_digest"])
  for split in ("validation", "test"):
    if split in data.splits and data.splits[split].labeled:
      result = trainer.evaluate(split)  # the loop's own final eval is reused, not redone
      logging.info("%s: loss %.4f  accuracy %.4f", split, result.loss, result.accuracy)
      results.update(result.metrics(f"{split}_"))
      if trainer.ema:  # what the average buys: the raw weights' figures beside
        raw = trainer.evaluate(split, raw=True)
        logging.info("%s with the raw weights (not the EMA): loss %.4f  accuracy %.4f", split,
                     raw.loss, raw.accuracy)
        results.update(raw.metrics(f"{split}_raw_"))
      if split == "test":
        writer.scalars("eval", results["global_step"], result.metrics("test_"))
  if pictures is not None:
    results["eval_pictures_seconds"] = pictures.seconds
  writer.close()
  results["wall_seconds"] = time.time() - phases.start
  results["flags"] = config.flag_values
  with phases.time("export"):
    export.save_model(trainer.eval_model, data.info.image_shape,
                      os.path.join(output_dir, "export"), data.info.class_names)
  # Training loops: the first (tracing and compilation) apart; evals, their pictures and
  # checkpoints ran between loops.
  phases.add("compile", timing["compile_seconds"] if trained_here else 0.0)
  phases.add("train", (timing["train_seconds"] - timing["compile_seconds"])
             if trained_here else 0.0)
  phases.add("eval", trainer.eval_seconds)
  phases.add("eval_pictures", pictures.seconds if pictures is not None else 0.0)
  results["phases"] = phases.summary()
  logging.info("%.1f s in all: %s", results["phases"]["total"], ", ".join(
      f"{k.replace('_', ' ')} {v:.1f} s" for k, v in results["phases"].items() if k != "total"))
  if chief:
    files.write_json(results_path, results)
  if preemption.signal is not None:  # after training: the run finished before stopping
    logging.warning("stopped by %s after training, once the evaluation and the export were "
                    "done: the run is complete", signal.Signals(preemption.signal).name)
  return results
