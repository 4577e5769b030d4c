"""keras.applications' ImageNet networks (ResNet50, MobileNetV3Small, EfficientNetV2B0) as
ImageClassifiers: the published network without its top, then tapeloop's head, with the
model's precision policy and synchronized batch norm, preprocessing its own [0, 1] input.

Layer names and weight order stay keras.applications' own: its published ImageNet files
(legacy .h5, matched by layer name) fit the `backbone` as they fit the original."""

from __future__ import annotations

import keras

from models.common import Dropout, ImageClassifier, InputTooSmall, logits_head, regularizer

# keras.applications refuses smaller inputs without their top (obtain_input_shape).
MIN_SIZE = 32

# ImageNet's channel means in BGR order, on 0..255: what the caffe-style ResNet50 weights
# were trained on (keras.applications.resnet50.preprocess_input).
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


class Backbone(keras.Model):
  """A functional network whose checkpoint children are its layers by their Keras names
  ("conv1_conv"), not by their position in the graph (Keras's "_operations/12"): the
  variable paths then read as the network's layers, and match across model versions
  that insert or remove weightless layers."""

  def _trackable_children(self, save_type="checkpoint", **kwargs):
    children = super()._trackable_children(save_type, **kwargs)
    if save_type == "checkpoint":
      children.pop("_operations", None)
      for layer in self.layers:
        if not isinstance(layer, keras.layers.InputLayer):
          children[layer.name] = layer
    return children


def _rebuilt(network: keras.Model, dtype: keras.DTypePolicy, *, sync_batch_norm: bool,
             bn_momentum: float | None, l2: float) -> Backbone:
  """`network` layer by layer from its config, computing in `dtype` (variables float32
  under a mixed policy), its batch norm synchronized or not, its kernels L2-regularized.
  Names, order and shapes of the weights stay those of `network`."""
  reg = keras.regularizers.serialize(regularizer(l2)) if l2 else None

  def rebuild(layer):
    if not isinstance(layer, keras.layers.Layer):
      return layer  # an op such as `a + b`: stateless, computes in its inputs' dtype
    config = layer.get_config()
    config["dtype"] = dtype
    if isinstance(layer, keras.layers.BatchNormalization):
      config["synchronized"] = sync_batch_norm
      if bn_momentum is not None:
        config["momentum"] = bn_momentum
    if isinstance(layer, keras.layers.DepthwiseConv2D):
      config["depthwise_regularizer"] = reg
    elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
      config["kernel_regularizer"] = reg
    # Keras's Dropout (EfficientNet's stochastic depth) draws the same masks on every
    # replica; tapeloop's draws each replica's part of the global batch's masks.
    kind = Dropout if type(layer) is keras.layers.Dropout else type(layer)
    return kind.from_config(config)

  clone = keras.models.clone_model(network, clone_function=rebuild)
  return Backbone(inputs=clone.inputs, outputs=clone.outputs, name=network.name)


class Application(ImageClassifier):
  """Base of the standard networks: grayscale repeated to 3 channels, the network's own
  preprocessing, the backbone, then global average pooling, dropout and the logits.

  Inputs are images in [0, 1] (tapeloop's normalization of uint8 pixels); each subclass
  maps them to what its ImageNet weights were trained on. Sizes from 32x32 up."""

  network = None  # the keras.applications constructor

  def __init__(self, *, dropout: float, l2: float, sync_batch_norm: bool,
               bn_momentum: float, network_args: dict | None = None, **kwargs):
    super().__init__(**kwargs)
    height, width, channels = self.image_shape
    if channels not in (1, 3):
      raise ValueError(f"{type(self).__name__} takes grayscale or RGB images, not "
                       f"{channels} channels")
    if min(height, width) < MIN_SIZE:
      raise InputTooSmall(f"{height}x{width} images are too small for {type(self).__name__} "
                          f"(keras.applications' networks take {MIN_SIZE}x{MIN_SIZE} and up)")
    network = type(self).network(input_shape=(height, width, 3), include_top=False,
                                 weights=None, **(network_args or {}))
    self.backbone = _rebuilt(network, self.dtype_policy, sync_batch_norm=sync_batch_norm,
                             bn_momentum=bn_momentum, l2=l2)
    self.pool = keras.layers.GlobalAveragePooling2D(dtype=self.dtype_policy)
    self.dropout = Dropout(dropout, dtype=self.dtype_policy) if dropout else None
    self.logits = logits_head(self.num_classes, l2)

  def preprocess(self, images):
    """[0, 1] images with 3 channels -> the backbone's input."""
    raise NotImplementedError

  def call(self, images, training=False):
    if self.image_shape[-1] == 1:
      images = keras.ops.repeat(images, 3, axis=-1)
    x = self.backbone(self.preprocess(images), training=training)
    x = self.pool(x)
    if self.dropout:
      x = self.dropout(x, training=training)
    return self.logits(x)


class ResNet50(Application):
  """keras.applications.ResNet50 (25.6M parameters with ImageNet's head, 23.6M without):
  caffe-style input, BGR channels less ImageNet's means on 0..255, as its weights expect."""

  network = keras.applications.ResNet50

  def __init__(self, *, dropout: float = 0.0, l2: float = 0.0, sync_batch_norm: bool = False,
               bn_momentum: float = 0.99, **kwargs):
    super().__init__(dropout=dropout, l2=l2, sync_batch_norm=sync_batch_norm,
                     bn_momentum=bn_momentum, **kwargs)

  def preprocess(self, images):
    bgr = keras.ops.flip(images, axis=-1) * 255.0
    return bgr - keras.ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=bgr.dtype)


class MobileNetV3Small(Application):
  """keras.applications.MobileNetV3Small (0.94M parameters without ImageNet's head): its own
  Rescaling maps 0..255 to [-1, 1]."""

  network = keras.applications.MobileNetV3Small

  def __init__(self, *, dropout: float = 0.0, l2: float = 0.0, sync_batch_norm: bool = False,
               bn_momentum: float = 0.999, **kwargs):
    super().__init__(dropout=dropout, l2=l2, sync_batch_norm=sync_batch_norm,
                     bn_momentum=bn_momentum, network_args={"include_preprocessing": True},
                     **kwargs)

  def preprocess(self, images):
    return images * 255.0


class EfficientNetV2B0(Application):
  """keras.applications.EfficientNetV2B0 (5.9M parameters without ImageNet's head): its own
  Rescaling and Normalization take 0..255 to ImageNet's standardized input. Its blocks'
  stochastic depth (dropout of whole examples, rate up to 0.2) is tapeloop's Dropout."""

  network = keras.applications.EfficientNetV2B0

  def __init__(self, *, dropout: float = 0.0, l2: float = 0.0, sync_batch_norm: bool = False,
               bn_momentum: float = 0.9, **kwargs):
    super().__init__(dropout=dropout, l2=l2, sync_batch_norm=sync_batch_norm,
                     bn_momentum=bn_momentum, network_args={"include_preprocessing": True},
                     **kwargs)

  def preprocess(self, images):
    return images * 255.0
