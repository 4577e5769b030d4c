"""The state a resume must keep beside the model and optimizer (checkpointed as
"progress"): the best eval so far and what it measures, the early stop, the plateau
schedule's cuts, divergence recoveries, and a boundary a signal cut short."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer.options.declared import BEST_METRICS


class Progress(tf.Module):
  """Outer-loop state that a resume must keep (checkpointed beside the model): the best
  eval metric so far, its step, evals since it improved, an early stop, divergence
  recoveries, the plateau schedule's cuts, and --freeze's stage."""

  def __init__(self):
    super().__init__(name="progress")
    # --lr_schedule=plateau: the factor on the learning rate so far, and evals since the
    # best eval metric improved or the rate was last cut.
    self.lr_factor = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_factor")
    self.plateau_evals = tf.Variable(0, dtype=tf.int64, trainable=False, name="plateau_evals")
    # What best_value measures: an index into BEST_METRICS, -1 before any is tracked (or
    # in checkpoints older than it). --keep_best may change on a rerun, and a best loss
    # is no best accuracy: see `track`.
    self.best_metric = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_metric")
    self.best_value = tf.Variable(np.nan, dtype=tf.float64, trainable=False, name="best_value")
    self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step")
    self.evals_since_best = tf.Variable(0, dtype=tf.int64, trainable=False,
                                        name="evals_since_best")
    self.stopped_early_at = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                        name="stopped_early_at")
    # The step whose boundary a signal cut short (only its checkpoint ran): its eval, best
    # and pictures run on resume (trainer/outer/controller.py). -1: none.
    self.interrupted_at = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                      name="interrupted_at")
    # Divergence recovery (--divergence_retries): how many, and the training steps of data
    # skipped past, so that a resume reads the data where the recovered run did.
    self.recoveries = tf.Variable(0, dtype=tf.int64, trainable=False, name="recoveries")
    self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")
    # --freeze's stage the checkpoint's optimizer belongs to: 0 frozen, 1 all train, -1 no
    # --freeze (or a checkpoint older than it: its step says). Kept here, not derived from
    # --unfreeze_at_epoch's step, which moves with --batch_size and the data's size.
    self.stage = tf.Variable(-1, dtype=tf.int64, trainable=False, name="stage")

  def best(self) -> tuple[str, float, int] | None:
    """(metric, value, step) of the best eval so far; None before the first."""
    index = int(self.best_metric.numpy())
    if index < 0 or np.isnan(self.best_value.numpy()):
      return None
    return BEST_METRICS[index], float(self.best_value.numpy()), int(self.best_step.numpy())

  def track(self, metric: str) -> str | None:
    """Makes `metric` the one the best, the evals since it and the plateau count are of.
    When they were of another metric, they start again; returns which, else None. A
    checkpoint older than best_metric (-1 with a best) keeps its best as this metric's,
    as the code that wrote it compared it (its early stop and best/ stay as they were)."""
    index = BEST_METRICS.index(metric)
    before = int(self.best_metric.numpy())
    self.best_metric.assign(index)
    if before in (index, -1):
      return None
    self.best_value.assign(np.nan)
    self.best_step.assign(-1)
    self.evals_since_best.assign(0)
    self.plateau_evals.assign(0)
    return BEST_METRICS[before]
