"""Evaluation: an exact pass over a split with the eval weights (each example once, the
padding never counted), cached per step, and one report of it to the log and TensorBoard
(scalars, the raw weights' figures beside an EMA's, pictures). The periodic eval, the
final eval and trainer.evaluate all use it."""

from __future__ import annotations

import dataclasses
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from input_pipeline import Data
from input_pipeline.preprocess import normalize
from trainer.inner import feeds, images, tta_views
from trainer.inner.state import TrainState

# An eval still running after this many seconds logs that it has started.
_EVAL_NOTICE_SECONDS = 3.0


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One eval pass: global loss and accuracy, and per example (in split order) the
  predicted class and the loss."""
  split: str
  step: int
  loss: float
  accuracy: float
  predictions: np.ndarray
  losses: np.ndarray
  seconds: float
  labels: np.ndarray | None = None
  tta_loss: float | None = None  # --tta: the views' averaged prediction's (predictions,
  tta_accuracy: float | None = None  # losses and the pictures stay the plain images')

  def metrics(self, prefix: str = "") -> dict[str, float]:
    """{prefix}loss and {prefix}accuracy; with --tta beside them {prefix}tta_loss and
    {prefix}tta_accuracy."""
    out = {f"{prefix}loss": self.loss, f"{prefix}accuracy": self.accuracy}
    if self.tta_loss is not None:
      out.update({f"{prefix}tta_loss": self.tta_loss, f"{prefix}tta_accuracy": self.tta_accuracy})
    return out

  def tta_metrics(self) -> dict[str, float]:
    """The TTA figures under the plain names (a TensorBoard run of their own)."""
    return {"loss": self.tta_loss, "accuracy": self.tta_accuracy}


class Evaluator:
  """Evaluates `state`'s weights on `data`'s splits in batches of `batch_size` (global).
  writer: summaries.Summaries for `report` (None: nothing written); pictures: write the
  confusion matrix, the worst mistakes and per-class accuracy at each report; tta: --tta's
  views (tta_views.py), whose figures come beside the plain ones."""

  def __init__(self, state: TrainState, data: Data, batch_size: int, writer=None,
               pictures: bool = False, tta: tuple[str, ...] = ()):
    self.state, self.data, self.batch_size = state, data, batch_size
    self.writer, self.pictures, self.tta = writer, pictures, tuple(tta)
    with state.strategy.scope():
      self._loss = keras.metrics.Mean("loss")
      self._accuracy = keras.metrics.SparseCategoricalAccuracy("accuracy")
      self._tta_loss = keras.metrics.Mean("tta_loss")
      self._tta_accuracy = keras.metrics.SparseCategoricalAccuracy("tta_accuracy")
    self._datasets = {}  # split -> distributed dataset, built once: no retracing
    self._cache: dict[tuple[str, bool], Evaluation] = {}  # (split, raw) -> the latest
    self._pass = tf.function(self._pass_fn)
    self.seconds = 0.0  # all eval passes of this process (results.json's phases)
    self.pictures_seconds = 0.0

  def forget(self) -> None:
    """Drops the cached evaluations (the weights were restored)."""
    self._cache.clear()

  def _step(self, model, images, labels, weights, index):
    if images.dtype == tf.uint8:  # a stream's batch: normalized on the device
      images = normalize(images)
    if self.tta:
      logits, probabilities = tta_views.predict(model, images, self.tta)
      tta_losses = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
      self._tta_loss.update_state(tta_losses, sample_weight=weights)
      self._tta_accuracy.update_state(labels, probabilities, sample_weight=weights)
    else:
      logits = model(images, training=False)
    per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    self._loss.update_state(per_example, sample_weight=weights)
    self._accuracy.update_state(labels, logits, sample_weight=weights)
    return (tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(per_example, tf.float32),
            index, labels)

  def _pass_fn(self, dataset, model):
    # Per-example predictions and losses for the confusion matrix and the worst mistakes,
    # gathered from every replica (and worker) with the example index that orders them.
    strategy = self.state.strategy

    def array(dtype):
      return tf.TensorArray(dtype, size=0, dynamic_size=True, infer_shape=False)
    # Separate loop variables: autograph cannot carry a list of TensorArrays.
    predictions, losses, index = array(tf.int32), array(tf.float32), array(tf.int32)
    labels = array(tf.int32)
    i = 0
    for batch in dataset:
      p, l, x, y = strategy.run(self._step, args=(model, *batch))
      predictions = predictions.write(i, strategy.gather(p, axis=0))
      losses = losses.write(i, strategy.gather(l, axis=0))
      index = index.write(i, strategy.gather(x, axis=0))
      labels = labels.write(i, strategy.gather(y, axis=0))
      i += 1
    return predictions.concat(), losses.concat(), index.concat(), labels.concat()

  def evaluate(self, split: str, raw: bool = False) -> Evaluation:
    """Loss and accuracy over the whole split, each example exactly once, and each
    example's prediction, with the eval weights (raw: the model's own, not the EMA's).
    Cached per (split, global step): the weights only change with it."""
    state = self.state
    step, raw = state.step, raw or not state.ema
    cached = self._cache.get((split, raw))
    if cached is not None and cached.step == step:
      return cached
    for metric in (self._loss, self._accuracy, self._tta_loss, self._tta_accuracy):
      metric.reset_state()
    eval_start = time.perf_counter()  # with the first eval's dataset building and tracing
    if split not in self._datasets:
      self._datasets[split] = feeds.eval_dataset(state.strategy, self.data.splits[split],
                                                 self.batch_size)
    # Minutes of silence look like a hang: say so when an eval runs longer than a few seconds.
    notice = threading.Timer(_EVAL_NOTICE_SECONDS, logging.info, args=(
        "evaluating %d %s examples at step %d ...", len(self.data.splits[split]), split, step))
    notice.daemon = True
    notice.start()
    try:
      start = time.perf_counter()
      predictions, losses, index, labels = (t.numpy() for t in self._pass(
          self._datasets[split], state.model if raw else state.ema.model))
    finally:
      notice.cancel()
    # Back into example order (replicas and workers return their slices in any order).
    keep = index >= 0
    order = np.argsort(index[keep], kind="stable")
    result = Evaluation(split=split, step=step, loss=float(self._loss.result()),
                        accuracy=float(self._accuracy.result()),
                        predictions=predictions[keep][order], losses=losses[keep][order],
                        seconds=time.perf_counter() - start, labels=labels[keep][order],
                        **({"tta_loss": float(self._tta_loss.result()),
                            "tta_accuracy": float(self._tta_accuracy.result())}
                           if self.tta else {}))
    self.seconds += time.perf_counter() - eval_start
    self._cache[(split, raw)] = result
    return result

  def report(self, split: str, run: str = "eval") -> Evaluation:
    """Evaluates `split` and writes it: the log line, the scalars of TensorBoard run `run`
    (with an EMA, the raw weights' beside in `run`_raw; with --tta, its figures in
    `run`_tta and `run`_raw_tta), the pictures."""
    result = self.evaluate(split)
    step, raw = result.step, ""
    if self.state.ema:
      raw_result = self.evaluate(split, raw=True)
      self._scalars(f"{run}_raw", raw_result)
      raw = f"; raw weights: {_figures(raw_result)}"
    logging.info("eval on %s at step %d: %s  (%.1f s)%s", split, step, _figures(result),
                 result.seconds, raw and f" with the EMA weights{raw}")
    self._scalars(run, result)
    if self.pictures:
      self.write_pictures(run, result)
    return result

  def _scalars(self, run: str, result: Evaluation) -> None:
    if self.writer is None:
      return
    self.writer.scalars(run, result.step, {"loss": result.loss, "accuracy": result.accuracy})
    if result.tta_loss is not None:  # the same tags in a run of their own: one chart each
      self.writer.scalars(f"{run}_tta", result.step, result.tta_metrics())

  def figures(self, split: str) -> dict[str, float]:
    """The final figures of a split for results.json ({split}_loss, ..., with an EMA the
    raw weights' {split}_raw_loss, ...), logged."""
    result = self.evaluate(split)  # the loop's own final eval is reused, not redone
    logging.info("%s: %s", split, _figures(result))
    out = result.metrics(f"{split}_")
    if self.state.ema:  # what the average buys: the raw weights' figures beside
      raw = self.evaluate(split, raw=True)
      logging.info("%s with the raw weights (not the EMA): %s", split, _figures(raw))
      out.update(raw.metrics(f"{split}_raw_"))
    return out

  def write_pictures(self, run: str, result: Evaluation) -> None:
    """The Images and Text tabs of an evaluation: a confusion matrix, the worst mistakes,
    per-class accuracy. Only where the writer writes (the chief); timed, for its cost."""
    if self.writer is None or not self.writer.enabled:
      return
    start = time.perf_counter()
    split, names, step = self.data.splits[result.split], self.data.info.class_names, result.step
    labels = split.labels if result.labels is None else result.labels
    counts = images.confusion_counts(labels, result.predictions, len(names))
    title = f"{result.split} at step {step}: rows true, columns predicted, % of each row"
    self.writer.image(run, step, "confusion_matrix",
                      images.confusion_matrix(counts, names, title),
                      description=f"Row-normalised confusion matrix on {result.split}.")
    worst = images.worst_mistakes(split.images_at, labels,
                                  result.predictions, result.losses, names)
    if worst is not None:
      self.writer.image(run, step, "worst_mistakes", worst,
                        description=f"The misclassified {result.split} examples with the "
                        "highest loss.")
    self.writer.text(run, step, "per_class_accuracy", images.per_class_table(counts, names))
    self.writer.flush(run)
    self.pictures_seconds += time.perf_counter() - start


def _figures(result: Evaluation) -> str:
  """'loss L  accuracy A', with --tta '; with TTA: loss L  accuracy A' after it."""
  text = f"loss {result.loss:.4f}  accuracy {result.accuracy:.4f}"
  if result.tta_loss is not None:
    text += f"; with TTA: loss {result.tta_loss:.4f}  accuracy {result.tta_accuracy:.4f}"
  return text
