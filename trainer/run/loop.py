"""A run's outer loop: what it trains and evaluates, said once; its actions, in the order
they run at each boundary; the controller over the Trainer, unless an earlier early stop
or the run's length says it is done."""

from __future__ import annotations

import os
import shlex

from absl import logging

from models import summary
from trainer.inner.trainer import Trainer
from trainer.options.config import Config
from trainer.outer.actions import (
    PRUNED, Checkpoint, DivergenceCheck, Evaluate, Profiler, ProgressLine, TrainSummaries)
from trainer.outer.best import BestMetric, EarlyStopping, KeepBest, ReduceOnPlateau
from trainer.outer.controller import Controller, Timing
from trainer.outer.triggers import EverySteps
from trainer.run import distribute, export


def train(config: Config, plan, trainer: Trainer, output_dir: str, timed, first: list,
          extra: list) -> tuple[Timing, int]:
  """Trains to plan.total_steps; returns the loop's timing and the step an earlier early
  stop ended the run at (-1: none). first: the actions that run before all others at a
  boundary (the preemption stop); extra: the caller's, after the eval's actions and before
  the checkpoint, which saves on their stop; timed(name, fn): fn with its time counted in
  the run's phase `name`."""
  _describe(config, plan, trainer)
  # Built before an earlier early stop is judged: a BestMetric on another metric than the
  # run's counts anew (Progress.track), and then that stop no longer holds.
  actions = [*first, *_actions(config, plan, trainer, output_dir, timed, extra)]
  # An earlier early stop holds when these flags would have stopped there too: a rerun
  # without --early_stopping, with more patience, or on another metric trains on.
  progress, patience = trainer.state.progress, config.early_stopping
  stopped_at = int(progress.stopped_early_at.numpy())
  if stopped_at >= 0 and patience and int(progress.evals_since_best.numpy()) >= patience:
    logging.info("this run stopped early at step %d (--early_stopping): evaluating only",
                 stopped_at)
    return Timing(), stopped_at
  if stopped_at >= 0:
    logging.info("this run stopped early at step %d; with %s it trains on", stopped_at,
                 f"--early_stopping={patience} on eval {config.keep_best or 'loss'}"
                 if patience else "no --early_stopping")
    progress.stopped_early_at.assign(-1)
  step = trainer.state.step
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
  if timing.stop is not None and timing.stop.kind == PRUNED:  # it ends at its boundary
    step, writer = trainer.state.step, trainer.evaluator.writer
    writer.scalars("eval", step, {"pruned_at_step": float(step)})  # an HParams metric
    writer.text("eval", step, "trial", f"{timing.stop.reason} at step {step}")
  return timing, -1


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


def _actions(config: Config, plan, trainer: Trainer, output_dir: str, timed,
             extra: list) -> list:
  """The loop's own actions, in the order they run at each boundary."""
  state, evaluator, steps = trainer.state, trainer.evaluator, dict(total_steps=plan.total_steps)
  evals = EverySteps(plan.eval_interval, plan.total_steps)
  # The best eval (--keep_best's metric, else loss), tracked for the actions after the eval.
  best, after_eval = None, []
  if plan.eval_split and (config.keep_best or config.early_stopping
                          or config.lr_schedule == "plateau"):
    best = BestMetric(config.keep_best or "loss", state.progress)
    if config.lr_schedule == "plateau":
      after_eval.append(ReduceOnPlateau(best, patience=config.plateau_patience,
                                        factor=config.lr_decay_rate,
                                        learning_rate=state.learning_rate))
    if config.keep_best:
      info = trainer.data.info
      after_eval.append(KeepBest(best, save=state.checkpoints.save_best, export=lambda: (
          export.save_model(state.eval_model, info.image_shape,
                            os.path.join(output_dir, "export_best"), info.class_names,
                            config.tta))))
    if config.early_stopping:
      after_eval.append(EarlyStopping(best, patience=config.early_stopping))
  actions = [
      ProgressLine(steps_per_epoch=plan.steps_per_epoch, batch_size=config.step_batch,
                   **steps),
      DivergenceCheck(lambda: state.loss_scale, retries=config.divergence_retries,
                      recover=trainer.recover,
                      recoveries=lambda: int(state.progress.recoveries.numpy())),
      TrainSummaries(evaluator.writer, learning_rate=state.learning_rate,
                     loss_scale=lambda: state.loss_scale),
  ]
  if plan.eval_split:
    actions.append(Evaluate(report=evaluator.report, split=plan.eval_split, best=best,
                            trigger=evals))
  actions += after_eval + extra
  if config.profile_steps:
    actions.append(Profiler(config.profile_steps, os.path.join(config.model_dir, "profile")))
  actions.append(Checkpoint(save=timed("checkpoints", state.checkpoints.save),
                            interval=plan.checkpoint_interval,
                            every_secs=config.checkpoint_every_secs,
                            agree=distribute.any_worker(trainer.strategy), **steps))
  return actions
