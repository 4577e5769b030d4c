"""Where keras.applications publishes each standard network's ImageNet weights without its
top (include_top=False): the file name Keras caches it under, its URL and its MD5, as
keras.applications itself fetches them (a model named here has that network as its
`backbone`)."""

from __future__ import annotations

import dataclasses
import os
import shlex

import keras
from keras.src.utils import file_utils

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


class FetchError(Exception):
  """The file could not be fetched: why (reason), and what became of a damaged copy in
  the cache (note: empty, or a clause to append)."""

  def __init__(self, reason: str, note: str = ""):
    super().__init__(reason + note)
    self.reason, self.note = reason, note


def local_copy(published: Published, download: bool = True) -> str | None:
  """The local path of a published file: Keras's cache ($KERAS_HOME, else ~/.keras, then
  models/), else downloaded into it by keras.utils.get_file; None when not in the cache
  and not to download. A cached copy is checked against its MD5 as keras.applications
  does: a download killed part-way leaves a truncated file there, which get_file replaces."""
  home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
  cached = os.path.join(home, "models", published.file)
  damaged = os.path.exists(cached) and not file_utils.validate_file(cached, published.md5)
  if os.path.exists(cached) and not damaged:
    return cached
  if not download:
    return None
  try:
    return keras.utils.get_file(published.file, published.url, cache_subdir="models",
                                file_hash=published.md5, cache_dir=home)
  except Exception as e:  # pylint: disable=broad-except
    # Keras's download errors are plain Exceptions naming the URL; any failure ends alike.
    message = str(e).strip().replace(published.url, "it")
    reason = message.splitlines()[0][:160] if message else type(e).__name__
    note = ""
    if damaged:  # get_file removes a bad copy when its download fails, not always before
      note = (f"; the copy in Keras's cache, {shlex.quote(cached)}, is incomplete or damaged: "
              "delete it" if os.path.exists(cached) else
              f"; Keras removed the incomplete copy in its cache, {shlex.quote(cached)}")
    raise FetchError(reason, note) from None
