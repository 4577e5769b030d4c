"""Training targets: label smoothing, Mixup and CutMix, pure functions of (batch, seed).

They run in the graph as each replica's batch is prepared for the loss, so each replica
mixes its examples with its own, with a stateless seed from (seed, replica, step): a resumed
run mixes as an uninterrupted one did.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from input_pipeline.preprocess import _ALG, _uniform


def smooth(targets: tf.Tensor, smoothing: float) -> tf.Tensor:
  """(1 - smoothing) on the targets plus smoothing / classes on every class."""
  if not smoothing:
    return targets
  classes = tf.cast(tf.shape(targets)[-1], targets.dtype)
  return targets * (1.0 - smoothing) + smoothing / classes


@dataclasses.dataclass(frozen=True)
class Mix:
  """Mixup and CutMix Beta parameters (0: off) and the fraction of batches mixed. With
  both on, each mixed batch takes one of the two, even odds (timm's Mixup)."""
  mixup: float = 0.0
  cutmix: float = 0.0
  probability: float = 1.0


# Marsaglia-Tsang candidates drawn per Gamma sample: each is accepted with probability
# >= 0.95, so all 32 failing (then the mean is used) has odds below 1e-41.
_CANDIDATES = 32


def _gamma(alpha: float, seed: tf.Tensor) -> tf.Tensor:
  """One Gamma(alpha, 1) draw by Marsaglia and Tsang's method, written with this module's
  uniforms: tf.random.stateless_gamma has no XLA kernel (--jit_compile=loop)."""
  boost = alpha < 1  # Gamma(a) = Gamma(a + 1) * U^(1/a)
  a = alpha + 1 if boost else alpha
  d = a - 1.0 / 3.0
  c = 1.0 / (9.0 * d) ** 0.5
  u = _uniform([4, _CANDIDATES], seed)
  # Box-Muller normals from two uniforms (1 - u is in (0, 1]: the log is finite).
  x = tf.sqrt(-2.0 * tf.math.log(1.0 - u[0])) * tf.cos(6.283185307179586 * u[1])
  v = (1.0 + c * x) ** 3
  safe_v = tf.maximum(v, 1e-30)
  accept = (v > 0) & (tf.math.log(1.0 - u[2]) < 0.5 * x * x + d - d * safe_v
                      + d * tf.math.log(safe_v))
  first = tf.argmax(tf.cast(accept, tf.int32))
  # tf.gather, not safe_v[first]: XLA's strided slice needs its bounds at compile time,
  # so a slice at a computed index would compile the whole loop anew for every step (seed).
  draw = tf.where(tf.reduce_any(accept), d * tf.gather(safe_v, first), a)
  if boost:
    draw *= tf.pow(1.0 - u[3][0], 1.0 / alpha)
  return draw


def _beta(alpha: float, seed: tf.Tensor) -> tf.Tensor:
  """One draw of Beta(alpha, alpha), as X / (X + Y) of two Gamma(alpha) draws."""
  seeds = tf.random.experimental.stateless_split(seed, 2, alg=_ALG)
  g0, g1 = _gamma(alpha, seeds[0]), _gamma(alpha, seeds[1])
  return g0 / tf.maximum(g0 + g1, 1e-30)


def mix_parameters(mix: Mix, batch: int, height: int, width: int, seed: tf.Tensor):
  """The draw of one batch: (weight of the example's own image and target, the partner
  of each example, use CutMix, its box as y0, y1, x0, x1). A batch not mixed has weight 1."""
  seeds = tf.random.experimental.stateless_split(seed, 4, alg=_ALG)
  u = _uniform([4], seeds[0])  # mix at all, cutmix or mixup, box centre row and column
  partner = tf.argsort(_uniform([batch], seeds[1]), stable=True)
  mixed = u[0] < mix.probability
  use_cutmix = tf.constant(mix.cutmix > 0) if not mix.mixup else (
      tf.logical_and(tf.constant(mix.cutmix > 0), u[1] < 0.5))
  mixup_weight = _beta(mix.mixup, seeds[2]) if mix.mixup else tf.constant(1.0)
  cutmix_weight = _beta(mix.cutmix, seeds[3]) if mix.cutmix else tf.constant(1.0)
  # CutMix's box (timm's rand_bbox): sides sqrt(1 - weight) of the image's, centred at a
  # uniform pixel, clipped to the image; the weight is then the area left uncovered.
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  ratio = tf.sqrt(1.0 - cutmix_weight)
  cut_h, cut_w = tf.floor(h * ratio), tf.floor(w * ratio)
  cy, cx = tf.floor(u[2] * h), tf.floor(u[3] * w)
  y0 = tf.clip_by_value(cy - tf.floor(cut_h / 2), 0, h)
  y1 = tf.clip_by_value(cy + tf.floor(cut_h / 2), 0, h)
  x0 = tf.clip_by_value(cx - tf.floor(cut_w / 2), 0, w)
  x1 = tf.clip_by_value(cx + tf.floor(cut_w / 2), 0, w)
  box_weight = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
  weight = tf.where(use_cutmix, box_weight, mixup_weight)
  weight = tf.where(mixed, weight, 1.0)
  use_cutmix = tf.logical_and(mixed, use_cutmix)
  return weight, partner, use_cutmix, tf.cast(tf.stack([y0, y1, x0, x1]), tf.int32)


def mix_batch(images: tf.Tensor, targets: tf.Tensor, mix: Mix, seed: tf.Tensor):
  """Mixes a batch [B, H, W, C] and its targets [B, classes] with a shuffled copy of
  itself: Mixup blends whole images, CutMix pastes a box; targets are weighted alike."""
  shape = images.shape
  weight, partner, use_cutmix, box = mix_parameters(mix, shape[0] or tf.shape(images)[0],
                                                    shape[1], shape[2], seed)
  other = tf.gather(images, partner)
  rows = tf.range(shape[1])
  cols = tf.range(shape[2])
  in_box = (((rows >= box[0]) & (rows < box[1]))[:, None]
            & ((cols >= box[2]) & (cols < box[3]))[None, :])  # [H, W]
  pasted = tf.where(in_box[None, :, :, None], other, images)
  blended = images * tf.cast(weight, images.dtype) + other * tf.cast(1.0 - weight, images.dtype)
  images = tf.where(use_cutmix, pasted, blended)
  targets = targets * weight + tf.gather(targets, partner) * (1.0 - weight)
  return images, targets
