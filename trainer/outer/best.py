"""The best eval so far (orbit's NewBestMetric), and the actions that follow it: keep the
best checkpoint and export, stop early, cut the learning rate on a plateau. Its state is
checkpointed (trainer/inner/progress.py), so that a resumed run knows it."""

from __future__ import annotations

import shlex
from typing import Callable

import numpy as np
from absl import logging

from trainer.inner.progress import Progress
from trainer.outer.actions import Action, EARLY_STOP, Stop


class BestMetric:
  """The best value of eval `metric` (accuracy: highest; loss: lowest). The Evaluate
  action updates it; KeepBest, EarlyStopping and ReduceOnPlateau consult it."""

  def __init__(self, metric: str, progress: Progress):
    self.metric, self.progress = metric, progress
    self.higher_is_better = metric == "accuracy"
    self._new_at = None  # the step of the last update that improved
    # Before the first eval (also of an evaluate-only rerun): a best of another metric,
    # kept from a run with another --keep_best, is never compared with this one's values.
    was = progress.track(metric)
    if was:
      logging.info("the best eval so far was of eval %s; this run tracks eval %s: its best, "
                   "early stopping and plateau counts start again at the next eval", was,
                   metric)

  def improves(self, value: float) -> bool:
    best = float(self.progress.best_value.numpy())
    if np.isnan(best):
      return True
    return value > best if self.higher_is_better else value < best

  def update(self, step: int, evaluation) -> bool:
    """Takes the eval at `step`; returns whether it is a new best."""
    value = getattr(evaluation, self.metric)
    if not self.improves(value):
      self.progress.evals_since_best.assign_add(1)
      self._new_at = None  # also when this step was a best before a recovery went back
      return False
    self.progress.best_value.assign(value)
    self.progress.best_step.assign(step)
    self.progress.evals_since_best.assign(0)
    self._new_at = step
    return True

  def is_new(self, step: int) -> bool:
    """Whether the eval at `step` was a new best."""
    return self._new_at == step

  @property
  def evals_since(self) -> int:
    return int(self.progress.evals_since_best.numpy())

  @property
  def value_and_step(self) -> tuple[float, int]:
    return float(self.progress.best_value.numpy()), int(self.progress.best_step.numpy())


class KeepBest(Action):
  """On a new best: a checkpoint in model_dir/best/ and an export in model_dir/export_best/."""

  completes_interrupted = True

  def __init__(self, best: BestMetric, *, save: Callable[[int], str],
               export: Callable[[], None]):
    self.best, self.save, self.export = best, save, export

  def __call__(self, b):
    if b.eval is not None and self.best.is_new(b.step):
      path = self.save(b.step)
      self.export()
      logging.info("new best eval %s %.4f at step %d: saved %s and export_best/",
                   self.best.metric, getattr(b.eval, self.best.metric), b.step, shlex.quote(path))


class EarlyStopping(Action):
  """Stops when the eval metric has not improved for `patience` evals in a row."""

  completes_interrupted = True

  def __init__(self, best: BestMetric, *, patience: int):
    self.best, self.patience = best, patience

  def __call__(self, b):
    if b.eval is None or self.best.evals_since < self.patience:
      return
    value, at = self.best.value_and_step
    self.best.progress.stopped_early_at.assign(b.step)
    b.stop = Stop(f"early stopping: eval {self.best.metric} has not improved on {value:.4f} "
                  f"(step {at}) for {self.patience} evals", EARLY_STOP)


class ReduceOnPlateau(Action):
  """--lr_schedule=plateau (Keras's ReduceLROnPlateau on the eval metric): after `patience`
  evals without a new best, the rate's factor is multiplied by `factor`; the count starts
  again after each cut. The state is checkpointed (Progress)."""

  completes_interrupted = True

  def __init__(self, best: BestMetric, *, patience: int, factor: float,
               learning_rate: Callable[[], float]):
    self.best, self.patience, self.factor = best, patience, factor
    self.progress, self.learning_rate = best.progress, learning_rate

  def __call__(self, b):
    if b.eval is None:
      return
    if self.best.is_new(b.step):
      self.progress.plateau_evals.assign(0)
      return
    self.progress.plateau_evals.assign_add(1)
    if int(self.progress.plateau_evals.numpy()) >= self.patience:
      before = float(self.learning_rate())
      self.progress.lr_factor.assign(self.progress.lr_factor * self.factor)
      self.progress.plateau_evals.assign(0)
      logging.info("eval %s has not improved for %d evals: learning rate %.3g -> %.3g at "
                   "step %d", self.best.metric, self.patience, before,
                   float(self.learning_rate()), b.step)
