"""What every data source yields: in-memory uint8 images, int labels, metadata."""

from __future__ import annotations

import dataclasses
import shlex
from typing import Callable, Mapping

import numpy as np

from input_pipeline.specs import DataError


def read_file(path: str) -> bytes:
  """A file's bytes from any TensorFlow filesystem (local, gs://, ram://): Python's open()
  sees local disks only. DataError naming the file when it cannot be read."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except tf.errors.OpError as e:
    reason = (e.message or type(e).__name__).rsplit("; ", 1)[-1].strip().splitlines()[0]
    raise DataError(f"cannot read {shlex.quote(path)}: {reason}") from None


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: images (N, H, W, C) uint8 and labels (N,) int64, or None if unlabeled."""
  images: np.ndarray
  labels: np.ndarray | None

  def __len__(self) -> int:
    return len(self.images)

  @property
  def labeled(self) -> bool:
    return self.labels is not None

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def images_at(self, positions: np.ndarray) -> np.ndarray:
    """uint8 images of a few examples by position (e.g. the worst mistakes)."""
    return self.images[positions]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  split_sizes: Mapping[str, int]
  # Names of the classes where the dataset has them (TFDS's ClassLabel), else "0", "1", ...
  class_names: tuple[str, ...] = ()

  def __post_init__(self):
    if not self.class_names:
      object.__setattr__(self, "class_names", tuple(str(i) for i in range(self.num_classes)))


@dataclasses.dataclass(frozen=True)
class Data:
  """splits: in-memory `Split`s, or `stream.StreamSplit`s left in their files.
  pipeline: how training reads them (in_memory, tf_data or stream), and why."""
  info: DatasetInfo
  splits: Mapping[str, Split]
  pipeline: str = "in_memory"
  reason: str = ""
  # folder: data: what the check of its files found (input_pipeline/readers/folder.py).
  folder_check: dict | None = None


def fill(batches, n: int | None) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) arrays from (images, labels) batches, allocated once at their final
  size when n is known: memory peaks at the decoded size, not twice it."""
  if not n:
    parts = list(batches)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
  images, labels, at = None, np.empty(n, np.int64), 0
  for x, y in batches:
    if images is None:
      images = np.empty((n, *x.shape[1:]), x.dtype)
    images[at:at + len(x)], labels[at:at + len(x)] = x, y
    at += len(x)
  return images[:at], labels[:at]


def check_labels(labels: np.ndarray, num_classes: int,
                 where: Callable[[int], str]) -> np.ndarray:
  """Returns labels as int64, or raises naming the first label outside [0, num_classes)."""
  labels = np.asarray(labels).astype(np.int64, copy=False)
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise DataError(
        f"label {labels[i]} at {where(i)} is outside [0, {num_classes}); "
        f"fix the data or pass --num_classes with the real number of classes")
  return labels


def make_data(name: str, splits: Mapping[str, Split], num_classes: int,
              class_names: tuple[str, ...] = (), pipeline: str = "in_memory",
              reason: str = "") -> Data:
  """Builds the Data record, checking that all splits share one image shape."""
  if not splits:
    raise DataError(f"{name}: no splits")
  shapes = {tuple(s.image_shape) for s in splits.values()}
  if len(shapes) != 1:
    raise DataError(f"{name}: splits have different image shapes {sorted(shapes)}")
  for split_name, split in splits.items():
    if len(split) == 0:
      raise DataError(f"{name}: split {split_name!r} has no examples")
  info = DatasetInfo(name=name, image_shape=shapes.pop(), num_classes=num_classes,
                     split_sizes={k: len(v) for k, v in splits.items()},
                     class_names=tuple(class_names))
  return Data(info=info, splits=dict(splits), pipeline=pipeline, reason=reason)
