"""Pieces every model shares: the precision policy and the float32 logits head."""

from __future__ import annotations

import contextlib
import math
import threading

import keras
import tensorflow as tf

from models.names import POLICIES


def policy(name: str) -> keras.DTypePolicy:
  if name not in POLICIES:
    raise ValueError(f"precision {name!r} is not one of {', '.join(POLICIES)}")
  return keras.DTypePolicy(name)


def regularizer(l2: float):
  return keras.regularizers.L2(l2) if l2 else None


def logits_head(num_classes: int, l2: float) -> keras.layers.Dense:
  # float32 even under a mixed policy: softmax and the loss lose too much in fp16/bf16.
  return keras.layers.Dense(num_classes, kernel_regularizer=regularizer(l2), dtype="float32",
                            name="logits")


_shard = threading.local()


@contextlib.contextmanager
def batch_shard(index):
  """Random layers called inside draw the randomness of shard `index` of the global batch
  (shards of equal size, in order), e.g. a replica's part of it.

  Keras's seed generators hold one state for all replicas (aggregation "none"): without
  this every replica would draw the same dropout masks. Within it, N shards together draw
  exactly the masks one device draws for the whole batch."""
  previous = getattr(_shard, "index", None)
  _shard.index = index
  try:
    yield
  finally:
    _shard.index = previous


_PHILOX = 1  # TensorFlow's RNG_PHILOX: 4 random words per counter increment


class Dropout(keras.layers.Dropout):
  """Keras's Dropout, with the keep mask drawn from 16 random bits per element instead of
  a float32 uniform: half the Philox work. In the CNN, Keras's mask generation alone was
  a sixth of the training step (TensorBoard profile on a 2-core CPU). Inside batch_shard,
  the mask is that shard's part of the global batch's mask.

  The rate is rounded to a multiple of 1/65536, and kept values are scaled by the exact
  keep probability, so the layer's expected output still equals its input. A noise_shape
  (Keras's: None for the input's size there, e.g. (None, 1, 1, 1) drops whole examples, as
  EfficientNet's stochastic depth) draws one value per element of that shape. Same weights
  and checkpoint entries as Keras's layer (its seed generator's state).
  """

  def call(self, inputs, training=False):
    if not training or self.rate == 0:
      return super().call(inputs, training=training)
    drop_below = min(65535, round(self.rate * 65536))  # P(bits < drop_below) = rate
    keep_probability = (65536 - drop_below) / 65536
    shape = tf.shape(inputs)
    if self.noise_shape is not None:
      shape = tf.stack([shape[i] if d is None else d for i, d in enumerate(self.noise_shape)])
    size = tf.reduce_prod(tf.cast(shape, tf.int64))
    seed = tf.cast(tf.math.floormod(self.seed_generator.next(), tf.int32.max - 1), tf.int32)
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=seed)
    # This shard's 16-bit values start at shard * size in the global batch's stream; Philox
    # is counter based, so skip whole blocks of 8 values and slice off the rest.
    index = getattr(_shard, "index", None)
    start = tf.cast(0 if index is None else index, tf.int64) * size
    counter += tf.stack([tf.cast(start // 8, tf.uint64), tf.constant(0, tf.uint64)])
    skip = start % 8
    words = tf.raw_ops.StatelessRandomUniformFullIntV2(
        shape=tf.reshape((skip + size + 1) // 2, [1]), key=key, counter=counter,
        alg=_PHILOX, dtype=tf.uint32)
    bits = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[skip:skip + size]
    keep = tf.reshape(bits >= tf.constant(drop_below, tf.uint16), shape)  # broadcast below
    scale = tf.constant(1 / keep_probability, inputs.dtype)
    return tf.where(keep, inputs * scale, tf.zeros_like(inputs))


# GELU's tanh approximation (keras.ops.gelu's default): 0.5 x (1 + tanh(c (x + k x^3))).
_GELU_C, _GELU_K = math.sqrt(2 / math.pi), 0.044715


@tf.function(jit_compile=True)
def _gelu_forward(x):
  f = tf.cast(x, tf.float32)
  return tf.cast(0.5 * f * (1 + tf.tanh(_GELU_C * (f + _GELU_K * f * f * f))), x.dtype)


@tf.function(jit_compile=True)
def _gelu_backward(x, dy):
  f = tf.cast(x, tf.float32)
  t = tf.tanh(_GELU_C * (f + _GELU_K * f * f * f))
  slope = 0.5 * (1 + t) + 0.5 * f * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_K * f * f)
  return tf.cast(tf.cast(dy, tf.float32) * slope, x.dtype)


# A tf.function around the custom gradient: traced in a graph of its own, its gradient is
# registered once per input signature. tf.custom_gradient traced straight into a training
# step registers one per trace, for good, each holding that step's graph alive.
@tf.function
@tf.custom_gradient
def _gelu_compiled(x):
  return _gelu_forward(x), lambda dy: _gelu_backward(x, dy)


def gelu(x, training=False):
  """keras.ops.gelu; in training one XLA kernel forward and one back. TensorFlow runs the
  formula as a dozen element-wise ops, each a pass over the activation, not vectorized
  in bfloat16 on a CPU: half of airbench's bf16 step (Mul alone 31%); compiled, 5.6x
  less time. Inference (evals, the export and its conversions) keeps Keras's ops."""
  return _gelu_compiled(x) if training else keras.ops.gelu(x)


class BatchNormalization(keras.layers.BatchNormalization):
  """Keras's batch norm, trained through TensorFlow's fused kernel (FusedBatchNormV3: one
  oneDNN pass forward and one back on a CPU, cuDNN's on a GPU) where Keras would write
  moments, normalization and their gradients as a dozen element-wise ops and reductions
  over the whole activation. The same weights, moving averages (Keras's update, with the
  biased batch variance) and, within float rounding, outputs; inference, masks, renorm
  and synchronized (cross-replica) statistics are Keras's own."""

  def call(self, inputs, training=None, mask=None):
    if not (training and self.trainable) or mask is not None or self.renorm or \
        self.synchronized or len(inputs.shape) != 4 or self.axis not in (-1, 3):
      return super().call(inputs, training=training, mask=mask)
    x = inputs
    if x.dtype not in (tf.bfloat16, tf.float16):
      x = tf.cast(x, tf.float32)
    # A 16-bit input goes in as it is: the kernel computes the statistics and the
    # normalization in float32 (Keras casts the whole activation to float32 and back).
    channels = x.shape[-1]
    gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
    beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)[:3]
    # The kernel's batch variance has Bessel's correction (n / (n - 1)); Keras averages
    # the biased one.
    n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
    variance = tf.where(n > 1.0, variance * (n - 1.0) / tf.maximum(n, 1.0), 0.0)
    m = self.momentum
    self.moving_mean.assign(self.moving_mean * m + tf.stop_gradient(mean) * (1.0 - m))
    self.moving_variance.assign(self.moving_variance * m
                                + tf.stop_gradient(variance) * (1.0 - m))
    return tf.cast(y, self.compute_dtype)


class CheckpointLists:
  """Makes layers held in lists or tuples children in tf.train.Checkpoint's object graph.

  Keras 3 tracks such layers for its own weights, but hands them to TensorFlow only for
  SavedModel, not for checkpoints: their weights would then be saved only where the
  optimizer happens to reference them, and BatchNorm statistics not at all.
  """

  def _trackable_children(self, save_type="checkpoint", **kwargs):
    children = super()._trackable_children(save_type, **kwargs)
    if save_type == "checkpoint":
      for attr in getattr(self, "_tracked", ()):
        value = getattr(self, attr, None)
        if isinstance(value, (list, tuple)):
          for i, item in enumerate(value):
            if isinstance(item, tf.__internal__.tracking.Trackable):
              children.setdefault(f"{attr}_{i}", item)
    return children


class ImageClassifier(CheckpointLists, keras.Model):
  """Base: knows its input shape and class count; `build_for_input` creates the weights."""

  def __init__(self, *, num_classes: int, image_shape, precision: str = "float32", **kwargs):
    super().__init__(dtype=policy(precision), **kwargs)
    self.num_classes = num_classes
    self.image_shape = tuple(image_shape)
    self.precision = precision

  def build_for_input(self) -> ImageClassifier:
    try:
      self(keras.ops.zeros((1,) + self.image_shape), training=False)
    except Exception as e:  # pylint: disable=broad-except
      # Keras refuses an empty convolution or pooling output with a ValueError; oneDNN's
      # pooling kernel given a 1x1 map fails as an op error (AbortedError) instead.
      if ("would be zero or negative" not in str(e)
          and "descriptor for a pooling" not in str(e)):
        raise
      raise InputTooSmall(f"{'x'.join(map(str, self.image_shape[:2]))} images are too small "
                          f"for {type(self).__name__}'s convolutions and pooling") from None
    return self


class InputTooSmall(ValueError):
  """The image size leaves nothing for a later convolution (a conv output would be empty)."""
