"""folder:DIR, a user's own images: DIR/train/<class>/*.jpg|png (and DIR/test,
DIR/validation when present); classes are the train folder's subfolders, sorted.

Every file is decoded once up front (in parallel): a broken file is named before
training starts, or skipped and counted with --skip_bad_images, never met mid-epoch.
What the check found is returned, and a rerun that passes it back with the same files
listed skips the decoding (a resumed run: trainer keeps it in model_dir). The paths may
be on any TensorFlow filesystem (a bucket).
"""

from __future__ import annotations

import glob as py_glob
import hashlib
import shlex
import time

import numpy as np
import tensorflow as tf
from absl import logging

from input_pipeline.data import DataError
from input_pipeline.records import FileRecords, fit
from input_pipeline.stream import StreamSplit

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
_SPLITS = ("train", "validation", "test")


def _list(directory: str) -> list[str]:
  """The entries of a directory, sorted, without hidden ones (.DS_Store,
  .ipynb_checkpoints: not images, and not classes)."""
  try:
    return sorted(e for e in tf.io.gfile.listdir(directory) if not e.startswith("."))
  except tf.errors.OpError as e:
    raise DataError(f"cannot list {shlex.quote(directory)}: {e.message}") from None


def _files(root: str, split: str, class_names: list[str]) -> tuple[list[str], list[int]]:
  """The split's image files, class by class (sorted), and their labels."""
  split_dir = tf.io.gfile.join(root, split)
  present = [c.rstrip("/") for c in _list(split_dir) if tf.io.gfile.isdir(
      tf.io.gfile.join(split_dir, c))]
  unknown = sorted(set(present) - set(class_names))
  if unknown:
    raise DataError(f"{shlex.quote(split_dir)} has classes "
                    f"{', '.join(map(shlex.quote, unknown))} that {shlex.quote(root + '/train')} "
                    "has not: every class needs training images")
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


def check(root: str, paths: list[str], previous: dict | None = None) -> dict:
  """Decodes every file once: the unreadable ones, the channels and the range of sizes
  (JSON-ready). `previous`: an earlier check, reused when it listed the same files."""
  listing = hashlib.sha256("\n".join(paths).encode()).hexdigest()
  if previous and previous.get("listing") == listing:
    logging.info("the %d images under %s were checked before (same files): not decoded "
                 "again", len(paths), root)
    return previous
  start = time.perf_counter()
  ok, shapes = _scan(paths)
  good = shapes[ok]
  sizes = sorted({tuple(s) for s in good[:, :2].tolist()}) or [(0, 0)]
  result = {"root": root, "files": len(paths), "listing": listing,
            "bad": [p for p, fine in zip(paths, ok) if not fine],
            "channels": 1 if (good[:, 2] == 1).all() else 3,
            "sizes": [list(sizes[0]), list(sizes[-1])],
            "seconds": round(time.perf_counter() - start, 1)}
  logging.info("checked %d images under %s in %.1f s", len(paths), root, result["seconds"])
  return result


def load(root: str, image_size: tuple[int, int] | None, skip_bad_images: bool,
         previous_check: dict | None = None
         ) -> tuple[dict[str, StreamSplit], tuple[str, ...], dict]:
  """The splits as streams (image files decoded as read), the class names, and the
  check of the files (see `check`)."""
  root = root.rstrip("/")
  train_dir = tf.io.gfile.join(root, "train")
  if not tf.io.gfile.isdir(train_dir):
    raise DataError(f"{shlex.quote('folder:' + root)} needs {shlex.quote(train_dir)}/<class>/ "
                    "with the training images (and optionally test/ and validation/ alike)")
  class_names = [c.rstrip("/") for c in _list(train_dir)
                 if tf.io.gfile.isdir(tf.io.gfile.join(train_dir, c))]
  if len(class_names) < 2:
    raise DataError(f"{shlex.quote(train_dir)} has {len(class_names)} class folder(s): a "
                    "classifier needs at least 2 (one folder of images per class)")
  listed = {s: _files(root, s, class_names) for s in _SPLITS
            if tf.io.gfile.isdir(tf.io.gfile.join(root, s))}
  if not listed["train"][0]:
    raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders "
                    f"of {shlex.quote(train_dir)}")
  empty = sorted(set(class_names) - {class_names[l] for l in listed["train"][1]})
  if empty:
    raise DataError(f"{shlex.quote(train_dir + '/' + empty[0])} has no image files "
                    f"({', '.join(IMAGE_EXTENSIONS)}): "
                    "a class needs training images; add some, or move that folder out of "
                    "train/")
  paths = [p for s in listed.values() for p in s[0]]
  found = check(root, paths, previous_check)
  bad = found["bad"]
  if bad and not skip_bad_images:
    raise DataError(f"{shlex.quote(bad[0])} is not a readable image ({len(bad)} such file(s) under "
                    f"{shlex.quote(root)}): pass --skip_bad_images to train without such files, or "
                    "replace it")
  if bad:
    logging.info("skipping %d unreadable image(s) (--skip_bad_images), e.g. %s", len(bad),
                 shlex.quote(bad[0]))
  small, large = found["sizes"]
  if image_size is None and small != large:
    raise DataError(f"the images under {shlex.quote(root)} vary in size ({small[0]}x{small[1]} to "
                    f"{large[0]}x{large[1]}): pass --image_size=HxW to resize them")
  size, channels = image_size or tuple(small), found["channels"]
  unreadable = set(bad)
  splits = {}
  for split, (split_paths, labels) in listed.items():
    keep = np.array([p not in unreadable for p in split_paths])
    if not keep.any():
      raise DataError(f"{tf.io.gfile.join(root, split)} has no readable images")
    records = FileRecords(np.asarray(split_paths, object)[keep], np.asarray(labels)[keep],
                          channels)
    splits[split] = StreamSplit(records, (*size, channels), labeled=True,
                                resize=image_size is not None)
  return splits, tuple(class_names), found


# --- New images to classify (trainer.predict --images): no splits, no labels. -----------

_GLOB_CHARACTERS = ("*", "?", "[")


def _expand(entry: str) -> list[str]:
  """One --images entry: a directory's image files (sorted, not recursive), a file as
  named, or a pattern's matches (directories among them listed like a directory)."""
  if tf.io.gfile.isdir(entry):
    # By name only: a look at each file would cost a request per image on a bucket.
    return [tf.io.gfile.join(entry, name) for name in _list(entry)
            if name.lower().endswith(IMAGE_EXTENSIONS)]
  if tf.io.gfile.exists(entry):
    return [entry]  # named by the user: decoded whatever its extension
  if not any(c in entry for c in _GLOB_CHARACTERS):
    return []
  found = []
  # 'DIR/*/' means folders, as in a shell; tf.io.gfile.glob ignores the trailing '/'.
  folders_only = entry.endswith("/")
  for path in sorted(_glob(entry)):
    if path.lower().endswith(IMAGE_EXTENSIONS) and not folders_only:
      found.append(path)
    elif tf.io.gfile.isdir(path):  # asked of the others only: a request each on a bucket
      found += _expand(path)
  return found


def _glob(pattern: str) -> list[str]:
  """tf.io.gfile.glob, with the longest leading part that exists as a directory taken
  literally: a directory named 'photos [1]' holds brackets, not a character class
  (tf.io.gfile.glob reads [ ] * ? as a pattern, as Python's glob does). Only what follows
  it is a pattern."""
  head, rest = pattern.rstrip("/"), []
  while head and not tf.io.gfile.isdir(head):
    parent, name = head.rsplit("/", 1) if "/" in head else ("", head)
    if parent.endswith(":/"):  # gs://bucket: the bucket is not listed as a directory
      parent = ""
    head, rest = parent, [name] + rest
  if head:
    pattern = "/".join([py_glob.escape(head)] + rest)
  try:
    return tf.io.gfile.glob(pattern)
  except tf.errors.OpError as e:
    raise DataError(f"cannot list {pattern}: {e.message}") from None


def list_images(spec: str) -> list[str]:
  """The image files --images names: a directory, a glob pattern, a file, or a comma list
  of them, in the order given (a directory's and a pattern's files sorted), each once.
  Paths may be on any TensorFlow filesystem (gs://)."""
  # The whole value first: a path may itself hold a comma.
  entries = [spec] if tf.io.gfile.exists(spec) else [e for e in spec.split(",") if e.strip()]
  paths = []
  for entry in entries:
    if not tf.io.gfile.exists(entry) and tf.io.gfile.exists(entry.strip()):
      entry = entry.strip()  # 'a.png, b.png': the space after a comma is not a name
    found = _expand(entry)
    if not found:
      if tf.io.gfile.isdir(entry):
        problem = (f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {entry} (its "
                   "subfolders are not searched: give DIR/*/ for them)")
      elif any(c in entry for c in _GLOB_CHARACTERS):
        problem = f"{entry} matches no image file ({', '.join(IMAGE_EXTENSIONS)})"
      else:
        problem = f"{entry}: no such file or directory"
      raise DataError(f"--images: {problem}; give a folder, a pattern ('DIR/*.png') or "
                      "image files")
    paths += found
  return list(dict.fromkeys(paths))  # each file once, first place kept


def _to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
  """uint8 [H, W, any C] -> [H, W, channels]: grey (and grey+alpha) or colour (and
  RGBA), converted to what the model takes. Decoded as stored first: TensorFlow refuses
  channels=1 for GIF and BMP files."""
  stored = tf.shape(image)[-1]
  grey = lambda: image[..., :1]
  colour = lambda: image[..., :3]
  if channels == 1:
    converted = tf.cond(stored < 3, grey, lambda: tf.image.rgb_to_grayscale(colour()))
  else:
    converted = tf.cond(stored < 3, lambda: tf.image.grayscale_to_rgb(grey()), colour)
  converted.set_shape([None, None, channels])
  return converted


def read_images(paths: list[str], size: tuple[int, int], channels: int) -> tf.data.Dataset:
  """(position in paths, uint8 image [size, channels]) for each readable file, in order;
  an unreadable file's position is missing (its error is dropped, not raised). Each image
  is fitted to size as eval images are (records.fit: resized to cover, centre cropped)."""
  with tf.device("/cpu:0"):
    table = tf.constant(paths)

  def load_one(i):
    contents = tf.io.read_file(tf.gather(table, i))
    image = tf.io.decode_image(contents, expand_animations=False)  # uint8, as stored
    image = fit(_to_channels(image, channels), size)
    return i, tf.ensure_shape(image, (*size, channels))

  return (tf.data.Dataset.range(len(paths))
          .map(load_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .ignore_errors())
