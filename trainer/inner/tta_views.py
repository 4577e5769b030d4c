"""Test-time augmentation (--tta): a prediction averages the class probabilities of views
of each image. flip: the image and its mirror, half each; translate: the image (half)
and its 1-pixel shifts down-right and up-left (a quarter each), as airbench's TTA; both:
each translate view and its mirror. The eval, trainer.evaluate, the export (and so
trainer.predict) use it; the plain figures are reported beside."""

from __future__ import annotations

import keras
import tensorflow as tf


def _shift(images: tf.Tensor, dy: int, dx: int) -> tf.Tensor:
  """Moves the content by (dy, dx) pixels, filling with zeros (as --augment's translate)."""
  h, w = images.shape[1], images.shape[2]
  padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]])
  return padded[:, 1 - dy:1 - dy + h, 1 - dx:1 - dx + w, :]


def views(images: tf.Tensor, tta: tuple[str, ...]) -> list[tuple[float, tf.Tensor]]:
  """(weight, view) pairs, the plain images first; the weights sum to 1."""
  out = [(1.0, images)]
  if "translate" in tta:
    out = [(0.5, images), (0.25, _shift(images, 1, 1)), (0.25, _shift(images, -1, -1))]
  if "flip" in tta:
    out = [(w / 2, v) for w, v in out] + [(w / 2, tf.reverse(v, axis=[2])) for w, v in out]
  return out


def predict(model, images: tf.Tensor, tta: tuple[str, ...]) -> tuple[tf.Tensor, tf.Tensor]:
  """(the plain logits, the views' averaged probabilities), float32, from one call of the
  model on all views (inference mode: batch norm's moving statistics, no dropout, so the
  views do not affect each other)."""
  weighted = views(images, tta)
  batch = tf.shape(images)[0]
  logits = tf.cast(model(tf.concat([v for _, v in weighted], axis=0), training=False),
                   tf.float32)
  probabilities = keras.ops.softmax(logits, axis=-1)
  average = tf.add_n([w * probabilities[i * batch:(i + 1) * batch]
                      for i, (w, _) in enumerate(weighted)])
  return logits[:batch], average
