"""An airbench-like net (Keller Jordan's CIFAR-10 speedruns, airbench94) for small images:
a frozen patch-whitening first layer, then conv groups that pool right after their first
convolution, so that each group's second convolution runs at a quarter of the resolution.

    whiten (k x k patches, 2 k^2 C filters, frozen) - GELU
    per width: conv3x3 - maxpool2 - BN - GELU - conv3x3 - BN - GELU
    global max pool - dense (no bias) x 1/9
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from models.common import (BatchNormalization, ImageClassifier, InputTooSmall, gelu,
                           regularizer)

# airbench's: the logits of its bias-free head, scaled down (a softer start).
_LOGIT_SCALE = 1 / 9
# The whitening is fitted to at most this many pixel positions (patches) of the first
# images: a covariance of a few dozen dimensions, in float64 (24 bytes a dimension each).
_FIT_PATCHES = 2_000_000


def batch_norm(momentum: float, sync: bool, dtype) -> BatchNormalization:
  # airbench's: the scale fixed at 1 (only the shift learns). Its eps, 1e-12, blew up evals
  # here (a near-constant channel divided by ~0); PyTorch's default instead.
  return BatchNormalization(momentum=momentum, epsilon=1e-5, scale=False,
                            synchronized=sync, dtype=dtype)


class PatchWhitening(keras.layers.Layer):
  """A k x k 'valid' convolution whose filters whiten the image's patches: fitted once to
  the training data (`fit`), then frozen (a non-trainable weight, so checkpointed and
  exported with the model); its bias learns, from where the outputs have mean 0.
  Each eigenvector of the patches' covariance,
  scaled by 1/sqrt(eigenvalue + eps), is a filter, and so is its negative (after a GELU
  both signs carry information)."""

  def __init__(self, kernel_size: int, eps: float = 5e-4, **kwargs):
    super().__init__(**kwargs)
    self.kernel_size, self.eps = kernel_size, eps

  def build(self, input_shape):
    k, channels = self.kernel_size, input_shape[-1]
    self.filters = 2 * k * k * channels
    self.kernel = self.add_weight(name="kernel", shape=(k, k, channels, self.filters),
                                  initializer="glorot_uniform", trainable=False)
    self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

  def call(self, x):
    y = keras.ops.conv(x, keras.ops.cast(self.kernel, x.dtype), padding="valid")
    return y + keras.ops.cast(self.bias, y.dtype)

  def patches(self, images: np.ndarray) -> np.ndarray:
    """All k x k patches of float images [N, H, W, C], flattened as the kernel's
    (kh, kw, c) order: [N * (H-k+1) * (W-k+1), k*k*C]."""
    k = self.kernel_size
    n, h, w, c = images.shape
    windows = np.lib.stride_tricks.sliding_window_view(images, (k, k), axis=(1, 2))
    # windows: [N, H-k+1, W-k+1, C, k, k] -> [..., k, k, C]
    return np.moveaxis(windows, 3, -1).reshape(-1, k * k * c)

  def fit(self, images: np.ndarray) -> None:
    """Sets the filters from float images [N, H, W, C] (the training data's first ones, as
    many as _FIT_PATCHES patches need). Each eigenvector's sign is fixed (its largest entry
    positive): the same filters from the same images on every worker of a cluster."""
    n, h, w, _ = np.shape(images)
    images = np.asarray(images[:max(1, _FIT_PATCHES // (h * w))], np.float64)
    patches = self.patches(images)
    mean = patches.mean(axis=0)
    patches = patches - mean
    eigenvalues, eigenvectors = np.linalg.eigh(patches.T @ patches / len(patches))
    signs = np.sign(eigenvectors[np.argmax(np.abs(eigenvectors), axis=0),
                                 np.arange(eigenvectors.shape[1])])
    filters = eigenvectors * signs / np.sqrt(eigenvalues + self.eps)  # a column a filter
    filters = np.concatenate([filters, -filters], axis=1)
    k, c = self.kernel_size, images.shape[-1]
    self.kernel.assign(filters.reshape(k, k, c, self.filters).astype(np.float32))
    # The bias starts where the outputs have mean 0 on these images: airbench's inputs are
    # standardized, ours are in [0, 1], whose mean the small directions would amplify.
    self.bias.assign((-mean @ filters).astype(np.float32))


class IdentityStart(keras.initializers.Initializer):
  """Glorot-uniform filters, but the first ones (as many as there are inputs) pass their
  input channel through: airbench's identity init (torch.nn.init.dirac_)."""

  def __call__(self, shape, dtype=None):
    kh, kw, inputs, filters = shape
    n = min(inputs, filters)
    identity = np.zeros(shape, np.float32)
    identity[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
    keep = np.ones(shape, np.float32)
    keep[..., :n] = 0.0
    drawn = keras.initializers.GlorotUniform()(shape, dtype)
    return drawn * keras.ops.cast(keep, drawn.dtype) + keras.ops.cast(identity, drawn.dtype)


class ConvGroup(keras.layers.Layer):
  """conv3x3 - maxpool2 - BN - GELU - conv3x3 - BN - GELU, the convolutions started as
  identities where their shapes allow (IdentityStart; identity_init=False: Glorot)."""

  def __init__(self, width: int, momentum: float, l2: float, sync: bool,
               identity_init: bool = True, **kwargs):
    super().__init__(**kwargs)
    p = self.dtype_policy
    start = IdentityStart() if identity_init else "glorot_uniform"
    conv = lambda: keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                       kernel_initializer=start,
                                       kernel_regularizer=regularizer(l2), dtype=p)
    self.conv1, self.conv2 = conv(), conv()
    self.pool = keras.layers.MaxPooling2D(2, dtype=p)
    self.bn1, self.bn2 = batch_norm(momentum, sync, p), batch_norm(momentum, sync, p)

  def call(self, x, training=False):
    x = self.pool(self.conv1(x))
    x = gelu(self.bn1(x, training=training), training)
    return gelu(self.bn2(self.conv2(x), training=training), training)


class AirBench(ImageClassifier):
  """See the module's docstring. widths: one conv group per width; whiten: the stem's
  patch size (0: a trainable 3x3 conv instead); bn_momentum: the moving statistics'
  decay (Keras's convention: 0.99 keeps 99% of the old value; airbench's PyTorch 0.6 is
  0.4 here); sync_batch_norm: as ResNet's; identity_init: the groups' convolutions start
  as identities (airbench's)."""

  def __init__(self, *, widths: Sequence[int] = (64, 128, 256), whiten: int = 2,
               bn_momentum: float = 0.4, l2: float = 0.0, sync_batch_norm: bool = False,
               identity_init: bool = True, **kwargs):
    super().__init__(**kwargs)
    h, w = self.image_shape[:2]
    size = min(h, w) - (whiten - 1 if whiten else 0)
    if size < 2 ** len(widths):  # each group halves the size; oneDNN aborts on an empty pool
      raise InputTooSmall(f"{h}x{w} images are too small for airbench's {len(widths)} conv "
                          f"groups{f' after its {whiten}x{whiten} whitening' if whiten else ''}: "
                          f"they need at least {2 ** len(widths) + (whiten - 1 if whiten else 0)}"
                          " pixels a side")
    p = self.dtype_policy
    self.whiten = PatchWhitening(whiten, dtype=p) if whiten else keras.layers.Conv2D(
        widths[0], 3, padding="same", kernel_regularizer=regularizer(l2), dtype=p)
    self.groups = [ConvGroup(w, bn_momentum, l2, sync_batch_norm, identity_init, dtype=p)
                   for w in widths]
    self.pool = keras.layers.GlobalMaxPooling2D(dtype=p)
    self.logits = keras.layers.Dense(self.num_classes, use_bias=False,
                                     kernel_regularizer=regularizer(l2), dtype="float32",
                                     name="logits")

  def call(self, images, training=False):
    x = gelu(self.whiten(images), training)
    for group in self.groups:
      x = group(x, training=training)
    return self.logits(self.pool(x)) * _LOGIT_SCALE

  @property
  def fit_to_data(self):
    """fit_to_data(float training images): the data-dependent start, the whitening
    filters; None without a whitening stem (--whiten=0)."""
    return self.whiten.fit if isinstance(self.whiten, PatchWhitening) else None
