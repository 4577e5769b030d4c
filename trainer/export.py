"""Outputs: a SavedModel with serving signatures, results.json, prediction CSVs. Each is
written to a temporary name first and renamed, so a crash never leaves a half file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf


class _Serving(tf.Module):
  """Images of the dataset's shape in, class probabilities and the class out."""

  def __init__(self, model, image_shape):
    super().__init__()
    self.model = model
    spec = lambda dtype: tf.TensorSpec((None,) + tuple(image_shape), dtype, name="images")
    self.serve_uint8 = tf.function(self._uint8, input_signature=[spec(tf.uint8)])
    self.serve_float = tf.function(self._float, input_signature=[spec(tf.float32)])

  def _predict(self, images):
    probabilities = tf.nn.softmax(tf.cast(self.model(images, training=False), tf.float32))
    return {"probabilities": probabilities,
            "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

  def _uint8(self, images):
    return self._predict(tf.cast(images, tf.float32) / 255.0)

  def _float(self, images):
    return self._predict(images)


def save_model(model, image_shape, path: str) -> None:
  """SavedModel: 'serving_default' takes uint8 pixels, 'serving_float' floats in [0, 1]."""
  module = _Serving(model, image_shape)
  parent = os.path.dirname(os.path.abspath(path))
  tmp = tempfile.mkdtemp(dir=parent, prefix=".export-")
  os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
  try:
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve_uint8,
                                                 "serving_float": module.serve_float})
    old = None
    if os.path.exists(path):
      old = tempfile.mkdtemp(dir=parent, prefix=".export-old-")
      os.rename(path, os.path.join(old, "export"))
    os.rename(tmp, path)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_atomic(path: str, text: str) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
  try:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json(path: str, value: dict) -> None:
  write_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def write_submission(path: str, classes: np.ndarray) -> None:
  """The Kaggle Digit Recognizer submission: ImageId (from 1),Label."""
  lines = ["ImageId,Label"] + [f"{i},{c}" for i, c in enumerate(classes, start=1)]
  write_atomic(path, "\n".join(lines) + "\n")
