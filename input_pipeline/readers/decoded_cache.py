"""The decoded cache of a TFDS split: its uint8 arrays in one .npz beside the dataset,
keyed by what they were decoded from and checked by a digest, so that a later run skips
the JPEG/PNG decoding; written whole or not at all."""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import zipfile

import numpy as np
import tensorflow as tf
from absl import logging


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
  digest = hashlib.sha256(np.ascontiguousarray(images).data)
  digest.update(np.ascontiguousarray(labels).data)
  return digest.hexdigest()


def read(path: str, key: str):
  """(images, labels) from the cache when it holds this key and its digest checks; else None."""
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      stored = np.load(io.BytesIO(f.read()), allow_pickle=False)
      images, labels = stored["images"], stored["labels"]
      if str(stored["key"]) == key and str(stored["sha256"]) == _digest(images, labels):
        return images, labels
    logging.info("decoded cache %s is stale or damaged: decoding again", shlex.quote(path))
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, tf.errors.OpError) as e:
    logging.info("decoded cache %s unreadable (%s): decoding again", shlex.quote(path), e)
  return None


def write(path: str, key: str, images: np.ndarray, labels: np.ndarray) -> None:
  """Written whole under a temporary name, then renamed: never a partial cache."""
  buffer = io.BytesIO()
  np.savez(buffer, images=images, labels=labels, key=np.array(key),
           sha256=np.array(_digest(images, labels)))
  partial = f"{path}.partial-{os.getpid()}"
  try:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(partial, "wb") as f:
      f.write(buffer.getvalue())
    tf.io.gfile.rename(partial, path, overwrite=True)
  except (OSError, tf.errors.OpError) as e:  # a read-only data_dir: no cache, no harm
    logging.info("not caching the decoded split in %s: %s", shlex.quote(path), e)
    if tf.io.gfile.exists(partial):
      tf.io.gfile.remove(partial)
