"""folder:DIR, a user's own images: DIR/train/<class>/*.jpg|png (and DIR/test,
DIR/validation when present); classes are the train folder's subfolders, sorted.

Every file is decoded once up front (in parallel): a broken file is named before
training starts, or skipped and counted with --skip_bad_images, never met mid-epoch.
The paths may be on any TensorFlow filesystem (a bucket).
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf
from absl import logging

from input_pipeline.data import DataError
from input_pipeline.records import FileRecords, decode_image
from input_pipeline.stream import StreamSplit

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
_SPLITS = ("train", "validation", "test")


def _list(directory: str) -> list[str]:
  try:
    return sorted(tf.io.gfile.listdir(directory))
  except tf.errors.OpError as e:
    raise DataError(f"cannot list {directory}: {e.message}") from None


def _files(root: str, split: str, class_names: list[str]) -> tuple[list[str], list[int]]:
  """The split's image files, class by class (sorted), and their labels."""
  split_dir = tf.io.gfile.join(root, split)
  present = [c.rstrip("/") for c in _list(split_dir) if tf.io.gfile.isdir(
      tf.io.gfile.join(split_dir, c))]
  unknown = sorted(set(present) - set(class_names))
  if unknown:
    raise DataError(f"{split_dir} has classes {', '.join(unknown)} that {root}/train has not: "
                    "every class needs training images")
  paths, labels = [], []
  for label, name in enumerate(class_names):
    class_dir = tf.io.gfile.join(split_dir, name)
    if name not in present:
      continue
    for file in _list(class_dir):
      if file.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(tf.io.gfile.join(class_dir, file))
        labels.append(label)
  return paths, labels


def _scan(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """Decodes every file in parallel: (ok mask, [N, 3] shapes; 0 where broken)."""
  def shape(i):
    image = tf.io.decode_image(tf.io.read_file(tf.gather(table, i)), expand_animations=False)
    return i, tf.shape(image, out_type=tf.int64)
  with tf.device("/cpu:0"):
    table = tf.constant(paths)
  ds = (tf.data.Dataset.range(len(paths))
        .map(shape, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        .ignore_errors().batch(1024))
  shapes = np.zeros((len(paths), 3), np.int64)
  ok = np.zeros(len(paths), bool)
  for index, found in ds.as_numpy_iterator():
    shapes[index], ok[index] = found, True
  return ok, shapes


def load(root: str, image_size: tuple[int, int] | None, skip_bad_images: bool
         ) -> tuple[dict[str, StreamSplit], tuple[str, ...]]:
  """The splits as streams (image files decoded as read), and the class names."""
  root = root.rstrip("/")
  train_dir = tf.io.gfile.join(root, "train")
  if not tf.io.gfile.isdir(train_dir):
    raise DataError(f"folder:{root} needs {train_dir}/<class>/ with the training images "
                    "(and optionally test/ and validation/ alike)")
  class_names = [c.rstrip("/") for c in _list(train_dir)
                 if tf.io.gfile.isdir(tf.io.gfile.join(train_dir, c))]
  if len(class_names) < 2:
    raise DataError(f"{train_dir} has {len(class_names)} class folder(s): a classifier "
                    "needs at least 2 (one folder of images per class)")
  listed = {s: _files(root, s, class_names) for s in _SPLITS
            if tf.io.gfile.isdir(tf.io.gfile.join(root, s))}
  paths = [p for s in listed.values() for p in s[0]]
  if not listed["train"][0]:
    raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders "
                    f"of {train_dir}")
  start = time.perf_counter()
  ok, shapes = _scan(paths)
  bad = [p for p, good in zip(paths, ok) if not good]
  if bad and not skip_bad_images:
    raise DataError(f"{bad[0]} is not a readable image ({len(bad)} such file(s) under "
                    f"{root}): remove it, or pass --skip_bad_images")
  logging.info("checked %d images under %s in %.1f s%s", len(paths), root,
               time.perf_counter() - start,
               f": skipping {len(bad)} unreadable (--skip_bad_images), e.g. {bad[0]}"
               if bad else "")
  good_shapes = shapes[ok]
  channels = 1 if (good_shapes[:, 2] == 1).all() else 3
  sizes = {tuple(s) for s in good_shapes[:, :2].tolist()}
  if image_size is None and len(sizes) > 1:
    small, large = min(sizes), max(sizes)
    raise DataError(f"the images under {root} vary in size ({small[0]}x{small[1]} to "
                    f"{large[0]}x{large[1]}): pass --image_size=HxW to resize them")
  size = image_size or next(iter(sizes))
  splits, at = {}, 0
  for split, (split_paths, labels) in listed.items():
    keep = ok[at:at + len(split_paths)]
    at += len(split_paths)
    if not keep.any():
      raise DataError(f"{tf.io.gfile.join(root, split)} has no readable images")
    records = FileRecords(np.asarray(split_paths, object)[keep], np.asarray(labels)[keep],
                          channels)
    splits[split] = StreamSplit(records, (*size, channels), labeled=True,
                                resize=image_size is not None)
  return splits, tuple(class_names)
