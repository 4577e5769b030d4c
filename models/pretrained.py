"""Where keras.applications publishes each standard network's ImageNet weights without its
top (include_top=False): the file name Keras caches it under, its URL and its MD5, as
keras.applications itself fetches them (a model named here has that network as its
`backbone`)."""

from __future__ import annotations

import dataclasses

_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclasses.dataclass(frozen=True)
class Published:
  file: str
  url: str
  md5: str


def _published(folder: str, file: str, md5: str) -> Published:
  return Published(file, f"{_BASE}{folder}/{file}", md5)


# By tapeloop model name: keras.applications' ResNet50, MobileNetV3Small (alpha 1.0, not
# minimalistic) and EfficientNetV2B0.
IMAGENET: dict[str, Published] = {
    "resnet50": _published("resnet", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                           "4d473c1dd8becc155b73f8504c6f6626"),
    "mobilenet_v3_small": _published(
        "mobilenet_v3", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "d3e8ec802a04aa4fc771ee12a9a9b836"),
    "efficientnet_v2_b0": _published("efficientnet_v2", "efficientnetv2-b0_notop.h5",
                                     "893217f2bb855e2983157299931e43ff"),
}
