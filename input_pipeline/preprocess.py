"""Normalization and augmentation: pure functions of (images, seed).

They work on a batch [B, H, W, C] with an independent random draw per example. They are
vectorized because a per-example `map` costs more host time than a small model's step.
Randomness is stateless, so an augmented batch is a function of (seed, step): a resumed
run sees the same augmented data as an uninterrupted one.
"""

from __future__ import annotations

import tensorflow as tf

from input_pipeline.specs import Augment


def normalize(images: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [0, 1] (the export signature accepts either).

  A multiplication by the reciprocal, written out: Grappler rewrites `x / 255` so inside a
  tf.function, not inside tf.data functions or eagerly, and the pixels then differ by an
  ulp between the pipelines, the eval and the export."""
  return tf.cast(images, tf.float32) * (1.0 / 255.0)


# Named, not "auto_select": that means Philox in TensorFlow's kernels but another generator
# inside XLA (--jit_compile), which would give other augmentations under XLA.
_ALG = "philox"


def _uniform(shape, seed: tf.Tensor) -> tf.Tensor:
  """Floats in [0, 1) from 24 random bits each. Converted here: TensorFlow's kernels and
  XLA turn the same random bits into different floats (tf.random.stateless_uniform)."""
  bits = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32,
                                     alg=_ALG)
  return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))


def translate(images: tf.Tensor, max_shift: int, seed: tf.Tensor) -> tf.Tensor:
  """Shifts each image by up to max_shift pixels in each direction, filling with zeros:
  the standard pad-and-random-crop (pad by max_shift, crop back to the size)."""
  b, h, w = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
  padded = tf.pad(images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]])
  offsets = tf.random.stateless_uniform([2, b], seed, 0, 2 * max_shift + 1, dtype=tf.int32,
                                        alg=_ALG)
  rows = offsets[0][:, None] + tf.range(h)[None, :]  # [B, H]
  cols = offsets[1][:, None] + tf.range(w)[None, :]  # [B, W]
  out = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W + 2s, C]
  return tf.gather(out, cols, axis=2, batch_dims=1)  # [B, H, W, C]


def flip(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  mask = _uniform([tf.shape(images)[0]], seed) < 0.5
  return tf.where(mask[:, None, None, None], tf.reverse(images, axis=[2]), images)


def erase(images: tf.Tensor, probability: float, seed: tf.Tensor) -> tf.Tensor:
  """Zeroes one random rectangle (2%-25% of the area, aspect 1/3-3) per chosen image."""
  shape = tf.shape(images)
  b, h, w = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
  u = _uniform([6, b], seed)
  area = h * w * (0.02 + 0.23 * u[0])
  aspect = tf.exp(tf.math.log(1 / 3) + u[1] * tf.math.log(9.0))
  eh = tf.minimum(tf.sqrt(area * aspect), h)
  ew = tf.minimum(tf.sqrt(area / aspect), w)
  y0 = u[2] * (h - eh)
  x0 = u[3] * (w - ew)
  ys = tf.range(h)[None, :]
  xs = tf.range(w)[None, :]
  in_rows = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])  # [B, H]
  in_cols = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])  # [B, W]
  box = in_rows[:, :, None] & in_cols[:, None, :] & (u[4] < probability)[:, None, None]
  return tf.where(box[..., None], tf.zeros_like(images), images)


def random_resized_crop(images: tf.Tensor, min_area: float, seed: tf.Tensor) -> tf.Tensor:
  """Per image, a random box (min_area to all of the area, aspect 3/4 to 4/3) resized back
  to the full size (bilinear): the crop Inception-style training uses, on the device."""
  shape = tf.shape(images)
  b = shape[0]
  u = _uniform([4, b], seed)
  area = min_area + (1.0 - min_area) * u[0]
  aspect = tf.exp(tf.math.log(3 / 4) + u[1] * tf.math.log(16 / 9))
  height = tf.minimum(tf.sqrt(area / aspect), 1.0)  # fractions of the image
  width = tf.minimum(tf.sqrt(area * aspect), 1.0)
  top, left = u[2] * (1.0 - height), u[3] * (1.0 - width)
  boxes = tf.stack([top, left, top + height, left + width], axis=1)
  return tf.image.crop_and_resize(images, boxes, tf.range(b), shape[1:3])


def augment_seed(seed: int, replica, step) -> tf.Tensor:
  """The stateless seed of one replica's augmentation at a step, the same in every
  pipeline (a host pipeline that augments the whole global batch is replica 0)."""
  return tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(replica, tf.int64),
                   tf.cast(step, tf.int64)])


def augment_batch(images: tf.Tensor, augment: Augment, seed: tf.Tensor) -> tf.Tensor:
  """Applies the enabled augmentations; seed is a stateless seed of shape [2]."""
  seeds = tf.random.experimental.stateless_split(seed, 3, alg=_ALG)
  if augment.resized_crop:
    # A seed of its own: turning it on or off leaves the other augmentations' draws alone.
    crop_seed = tf.random.experimental.stateless_fold_in(seed, 3, alg=_ALG)
    images = random_resized_crop(images, augment.resized_crop, crop_seed)
  if augment.translate:
    images = translate(images, augment.translate, seeds[0])
  if augment.flip and not augment.alternating:  # alternating: the feed flips (flips=)
    images = flip(images, seeds[1])
  if augment.erase:
    images = erase(images, augment.erase, seeds[2])
  return images
