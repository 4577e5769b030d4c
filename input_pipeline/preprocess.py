"""Normalization and augmentation: pure functions of (images, seed).

They work on a batch [B, H, W, C] with an independent random draw per example. They are
vectorized because a per-example `map` costs more host time than a small model's step.
Randomness is stateless, so an augmented batch is a function of (seed, step): a resumed
run sees the same augmented data as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
from absl import logging

from input_pipeline.data import DataError

# Random-resized crops keep at least this fraction of the image's area by default.
DEFAULT_CROP = 0.25
# Datasets of characters: a mirrored 2, 7 or 'b' is another class or no class at all.
NO_FLIP_DATASETS = ("mnist", "emnist", "kmnist", "binarized_mnist", "svhn_cropped", "csv")


@dataclasses.dataclass(frozen=True)
class Augment:
  """translate: max shift in pixels (--augment's crop=PIXELS too: padding by PIXELS and a
  random crop of the original size is the same draw); flip: random horizontal flip;
  alternating (with flip): each example flipped every other epoch instead, from a random
  first epoch (airbench's derandomized flips; the in-memory feed draws them); erase: probability of
  blanking a random rectangle (random erasing); resized_crop: random-resized crop, its
  smallest area fraction (None: not given; with --image_size it defaults to DEFAULT_CROP)."""
  translate: int = 0
  flip: bool = False
  alternating: bool = False
  erase: float = 0.0
  resized_crop: float | None = None

  @property
  def enabled(self) -> bool:
    return bool(self.translate or self.flip or self.erase or self.resized_crop)

  def with_default_crop(self) -> Augment:
    """Random-resized crops unless --augment set resized_crop (resized_crop=0: none)."""
    return (self if self.resized_crop is not None
            else dataclasses.replace(self, resized_crop=DEFAULT_CROP))

  @classmethod
  def parse(cls, text: str, dataset: str = "") -> Augment:
    """Parses e.g. 'translate=2,erase=0.25' or 'none'; refuses flip on character datasets."""
    kwargs = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
      if item == "none":
        continue
      key, sep, value = item.partition("=")
      if key in ("translate", "crop") and "translate" in kwargs:
        raise DataError(f"--augment={text}: crop and translate are the same augmentation "
                        "(pad, then crop at a random offset); give one")
      try:
        if key in ("translate", "crop"):
          kwargs["translate"] = int(value) if sep else (4 if key == "crop" else 2)
        elif key == "flip" and value in ("", "alternating"):
          kwargs["flip"], kwargs["alternating"] = True, bool(value)
        elif key == "erase":
          kwargs[key] = float(value) if sep else 0.5
        elif key == "resized_crop":
          kwargs[key] = float(value) if sep else DEFAULT_CROP
        else:
          raise ValueError
      except ValueError:
        raise DataError(f"--augment: cannot read {item!r}; use none or a comma list of "
                        "crop[=PIXELS], translate[=PIXELS], flip[=alternating], "
                        "erase[=PROBABILITY], "
                        "resized_crop[=MIN_AREA]") from None
    augment = cls(**kwargs)
    if (augment.translate < 0 or not 0.0 <= augment.erase <= 1.0
        or not 0.0 <= (augment.resized_crop or 0.0) < 1.0):
      raise DataError(f"--augment={text}: translate must be >= 0, erase in [0, 1] and "
                      "resized_crop in [0, 1) (0: none)")
    if augment.flip:
      check_flip(f"--augment={text}", dataset)
    return augment


def check_flip(flag: str, dataset: str) -> None:
  """Refuses mirrored images (flag: the flag that asks for them) on datasets of characters,
  where a mirrored 2, 7 or 'b' is another class or none; warns on idx:, which cannot tell."""
  base = dataset.removeprefix("tfds:").split(":")[0].split("/")[0]
  if base in NO_FLIP_DATASETS:
    raise DataError(f"{flag} flips images, but on {dataset} mirrored characters change "
                    "meaning; drop flip")
  if base == "idx":
    # IDX files hold digits and letters (MNIST, EMNIST, KMNIST) but also Fashion-MNIST:
    # the format cannot tell, so the user is told instead of refused.
    logging.warning("%s on %s: if these images are digits or letters (MNIST, EMNIST, "
                    "KMNIST), mirrored characters change meaning: drop flip; for clothes "
                    "(Fashion-MNIST) flips are fine", flag, dataset)


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
    # A seed of its own: the others' draws stay what they were before it existed.
    crop_seed = tf.random.experimental.stateless_fold_in(seed, 3, alg=_ALG)
    images = random_resized_crop(images, augment.resized_crop, crop_seed)
  if augment.translate:
    images = translate(images, augment.translate, seeds[0])
  if augment.flip and not augment.alternating:  # alternating: the feed flips (flips=)
    images = flip(images, seeds[1])
  if augment.erase:
    images = erase(images, augment.erase, seeds[2])
  return images
