"""train_and_evaluate(config): the data, the plan, the Trainer and its actions, the outer
loop, then the final evals, the export and results.json."""

from __future__ import annotations

import os
import shlex
import signal
import tempfile
import time
from typing import Sequence

import keras
import tensorflow as tf
from absl import logging

from models import summary
from trainer.inner import summaries
from trainer.inner.trainer import Trainer
from trainer.options.config import Config
from trainer.outer.actions import (
    Action, Checkpoint, DivergenceCheck, Evaluate, PRUNED, Profiler, ProgressLine, TrainSummaries)
from trainer.outer.best import BestMetric, EarlyStopping, KeepBest, ReduceOnPlateau
from trainer.outer.controller import Controller, Timing
from trainer.outer.preemption import PreemptionStop
from trainer.outer.triggers import EverySteps
from trainer.process import files, run_log
from trainer.run import distribute, export, planning, run_files, run_record
from trainer.run.results import (
    log_memory, made_with, memory_scalars, of_run, peak_memory, phase_seconds)
from trainer.run.phases import Phases


def train_and_evaluate(config: Config, process_start: float | None = None,
                       extra_actions: Sequence[Action] = ()) -> dict:
  """Trains to the target step (resuming from model_dir), evaluates, exports; returns the
  results that also go to model_dir/results.json. process_start: when the command started
  (trainer.run.phases.process_start), so that the phases include the start-up before this.
  extra_actions: the caller's own (a tuner's trial report), run after the eval's actions
  and before the checkpoint, which saves on their stop; each checks the plan before the
  run writes anything (Action.check)."""
  with run_log.RunLog() as log:  # the chief's model_dir/tapeloop.log
    return _train_and_evaluate(config, process_start, log, list(extra_actions))


def _train_and_evaluate(config: Config, process_start: float | None,
                        log: run_log.RunLog, extra: list) -> dict:
  start = time.time()
  phases = Phases(process_start or start)
  if process_start:
    phases.add("start_up", start - process_start)  # Python, TensorFlow's import, flags
  run_files.check_model_dir(config.model_dir)
  # Before any work: a rerun that changes what is trained is refused here.
  recorded = run_files.read_record(config.model_dir)
  changed = run_record.check(config, recorded)
  # Signals are answered from here on, not only in the training loop: before training
  # they end the run at once (a command-line program's process, also while the cluster's
  # start-up blocks in C++); after it, a worker killed while exporting would leave the
  # others waiting in a collective.
  preemption = PreemptionStop()
  preemption.install()
  try:
    strategy = distribute.create_strategy(config)  # first: it may configure the runtime
    preemption.agree = distribute.any_worker(strategy)
    planning.check_replicas(config, strategy)  # before the data is read or prepared
    data, plan = _prepare(config, strategy, recorded, phases, start)
    for action in extra:
      action.check(plan)
    chief = distribute.is_chief(strategy)
    # Under MultiWorkerMirroredStrategy every worker saves (checkpoints, export); a non-chief
    # worker does so into a scratch directory removed at the end.
    scratch = None if chief else tempfile.mkdtemp(prefix="tapeloop-worker-")
    try:
      return _run(config, plan, strategy, data, phases, scratch, recorded, changed, preemption,
                  extra, log)
    finally:
      if scratch:
        files.rmtree(scratch)
  finally:
    preemption.uninstall()


def _prepare(config: Config, strategy, recorded: dict | None, phases: Phases, start: float):
  """Seeds, the data and the plan (every check that needs the data). Nothing is written
  to model_dir before this passes."""
  keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  phases.add("setup", time.time() - start)
  with phases.time("data"):
    data = run_files.load_data(config)
  plan = planning.resolve(config, data, strategy, recorded)
  logging.info("data %s: %s, image shape %s, %d classes", data.info.name,
               dict(data.info.split_sizes), data.info.image_shape, data.info.num_classes)
  return data, plan


def _actions(config: Config, plan, trainer: Trainer, output_dir: str, phases: Phases,
             preemption: PreemptionStop, extra: list):
  """The outer loop's actions, in the order they run at each boundary."""
  steps = dict(total_steps=plan.total_steps)
  data = trainer.data
  actions = [
      # First: on a signal, the boundary saves the checkpoint and stops, nothing else.
      preemption,
      ProgressLine(steps_per_epoch=plan.steps_per_epoch,
                              batch_size=config.step_batch, **steps),
      DivergenceCheck(
          lambda: trainer.state.loss_scale, retries=config.divergence_retries,
          recover=trainer.recover,
          recoveries=lambda: int(trainer.state.progress.recoveries.numpy())),
      TrainSummaries(trainer.evaluator.writer,
                                learning_rate=trainer.state.learning_rate,
                                loss_scale=lambda: trainer.state.loss_scale),
  ]
  if plan.eval_split:
    # The best eval (--keep_best's metric, else loss) is tracked for the actions after it.
    best = None
    if config.keep_best or config.early_stopping or config.lr_schedule == "plateau":
      best = BestMetric(config.keep_best or "loss", trainer.state.progress)
    actions.append(Evaluate(
        report=trainer.evaluator.report, split=plan.eval_split, best=best,
        trigger=EverySteps(plan.eval_interval, plan.total_steps)))
    if config.lr_schedule == "plateau":
      actions.append(ReduceOnPlateau(
          best, patience=config.plateau_patience, factor=config.lr_decay_rate,
          learning_rate=trainer.state.learning_rate))
    if config.keep_best:
      actions.append(KeepBest(
          best, save=trainer.state.checkpoints.save_best,
          export=lambda: export.save_model(trainer.state.eval_model, data.info.image_shape,
                                           os.path.join(output_dir, "export_best"),
                                           data.info.class_names, config.tta)))
    if config.early_stopping:
      actions.append(EarlyStopping(best, patience=config.early_stopping))
  actions += extra  # after the eval's actions, before the checkpoint that saves on a stop
  if config.profile_steps:
    actions.append(Profiler(config.profile_steps,
                                       os.path.join(config.model_dir, "profile")))
  save = phases.timed("checkpoints", trainer.state.checkpoints.save)
  actions += [Checkpoint(save=save,
                                    interval=plan.checkpoint_interval,
                                    every_secs=config.checkpoint_every_secs,
                                    agree=distribute.any_worker(trainer.strategy), **steps)]
  return actions


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


def _describe(config: Config, plan, trainer: Trainer) -> None:
  """The model and what training evaluates, on the console and in TensorBoard."""
  layers = summary.table(trainer.state.model)
  logging.info("model %s: %d parameters\n%s", config.model, trainer.state.model.count_params(),
               summary.console(layers))
  writer = trainer.evaluator.writer
  writer.text("train", 0, "model", summary.markdown(layers))  # flushed with the flags
  writer.flags({**config.hparams(), "schedule_steps": plan.horizon})  # as results.json
  if plan.eval_split is None:
    logging.info("no labeled validation or test split: nothing is evaluated during training")
    return
  every = (f"every {plan.eval_interval} steps" if config.eval_every
           else f"every epoch ({plan.eval_interval} steps)")
  logging.info("evaluating on the %s split %s%s", plan.eval_split, every,
               "" if plan.eval_split == "validation" else
               " (no --validation_split: the test split stands in for validation)")
  if plan.eval_split == "test" and (config.keep_best or config.early_stopping):
    logging.warning("--keep_best/--early_stopping select on the test split: its final "
                    "figure is then optimistic; hold out --validation_split=0.1 instead")


def _train(config: Config, plan, trainer: Trainer, actions) -> tuple[Timing, int]:
  """The outer loop, unless the run is done; returns its timing and an earlier early stop."""
  step = trainer.state.step
  stopped_at = _stopped_early_at(config, trainer.state.progress)
  if stopped_at >= 0:
    logging.info("this run stopped early at step %d (--early_stopping): evaluating only",
                 stopped_at)
    return Timing(), stopped_at
  if step >= plan.total_steps:
    logging.info("already at step %d of %d: evaluating only", step, plan.total_steps)
  else:
    batch = str(config.batch_size) + (f" x {config.accumulation_steps} accumulated"
                                      if config.accumulation_steps > 1 else "")
    logging.info("training %s on %s from step %d to %d (%d steps/epoch, global batch %s)",
                 config.model, shlex.quote(config.dataset), step, plan.total_steps,
                 plan.steps_per_epoch, batch)
  timing = Controller(trainer=trainer, actions=actions, total_steps=plan.total_steps,
                      steps_per_loop=config.steps_per_loop, batch_size=config.step_batch,
                      interrupted_at=trainer.state.progress.interrupted_at).run()
  return timing, -1


def _run(config: Config, plan, strategy, data, phases: Phases, scratch: str | None,
         recorded: dict | None, changed: dict, preemption: PreemptionStop,
         extra: list, log: run_log.RunLog) -> dict:
  chief = scratch is None
  output_dir = config.model_dir if chief else scratch
  writer = summaries.Summaries(config.model_dir, enabled=chief)
  with phases.time("build"):  # model, optimizer, restore
    trainer = Trainer(config, strategy, data, plan=plan, output_dir=scratch, writer=writer)
  run_record.check_length(config, trainer.state.step, plan.total_steps)
  flag_changes = []
  if chief:  # what the run was started as, and changes since: trainer.evaluate reads it
    tf.io.gfile.makedirs(config.model_dir)
    flag_changes = run_record.write(config, recorded, changed, trainer.state.step, plan,
                                    data.pipeline)
    if data.folder_check:
      run_files.write_folder_check(config.model_dir, data.folder_check)
  log.start(config.model_dir if chief else None)
  _describe(config, plan, trainer)
  actions = _actions(config, plan, trainer, output_dir, phases, preemption, extra)
  timing, stopped_at = _train(config, plan, trainer, actions)
  # From here (also when no step was left to train): a signal lets the evals and the
  # export finish.
  preemption.phase = "after"
  # A process that trained nothing keeps what the last results.json says of the training.
  previous = (run_files.read_results(config.model_dir)
              if timing.examples_per_sec is None else None)
  results = of_run(config, plan, trainer, chief, timing, stopped_at, flag_changes,
                               previous)
  for split in ("validation", "test"):
    if split in data.splits and data.splits[split].labeled:
      results.update(trainer.evaluator.figures(split))
  if "test_loss" in results:
    writer.scalars("eval", results["global_step"], {
        k: results[k] for k in ("test_loss", "test_accuracy", "test_tta_accuracy")
        if k in results})
  if timing.stop is not None and timing.stop.kind == PRUNED:
    step = results["global_step"]  # a stop ends training at its boundary
    results["pruned_at_step"] = step
    writer.scalars("eval", step, {"pruned_at_step": float(step)})  # an HParams metric
    writer.text("eval", step, "trial", f"{timing.stop.reason} at step {step}")
  if config.eval_images and plan.eval_split:
    results["eval_pictures_seconds"] = trainer.evaluator.pictures_seconds
  results["wall_seconds"] = time.time() - phases.start
  with phases.time("export"):
    export.save_model(trainer.state.eval_model, data.info.image_shape,
                      os.path.join(output_dir, "export"), data.info.class_names, config.tta)
  results["phases"] = phase_seconds(phases, timing, trainer.evaluator)
  # What made the figures, and the memory it took (after the export, its last work).
  results["made_with"] = made_with(plan.replicas, previous)
  results["peak_memory"] = peak_memory()
  log_memory(results["peak_memory"])
  writer.scalars("train", results["global_step"],
                 memory_scalars(results["peak_memory"]))
  writer.close()
  if chief:
    run_files.write_results(config.model_dir, results)
  if preemption.signal is not None:  # after training: the run finished before stopping
    logging.warning("stopped by %s after training, once the evaluation and the export were "
                    "done: the run is complete", signal.Signals(preemption.signal).name)
  return results
