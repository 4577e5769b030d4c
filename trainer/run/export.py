"""Outputs: a SavedModel with serving signatures, results.json, prediction CSVs, written
through trainer/process/files.py so that a crash never leaves a half file, on any filesystem."""

from __future__ import annotations

import csv
import io
import os
import tempfile

import numpy as np
import tensorflow as tf

from input_pipeline.preprocess import normalize
from trainer.inner import tta_views
from trainer.process import files


class _Serving(tf.Module):
  """Images of the training size (HxWxC: --image_size where given) in; class
  probabilities, the class and its name out. tta: --tta's views, whose probabilities
  are averaged (tta_views.py); serving_plain then gives the plain images' (uint8)."""

  def __init__(self, model, image_shape, class_names=(), tta=()):
    super().__init__()
    self.model, self.tta = model, tuple(tta)
    self.class_names = tf.constant(
        list(class_names) or [str(i) for i in range(model.num_classes)])
    spec = lambda dtype: tf.TensorSpec((None,) + tuple(image_shape), dtype, name="images")
    self.serve_uint8 = tf.function(self._uint8, input_signature=[spec(tf.uint8)])
    self.serve_float = tf.function(self._float, input_signature=[spec(tf.float32)])
    if self.tta:
      self.serve_plain = tf.function(lambda images: self._predict(normalize(images), tta=()),
                                     input_signature=[spec(tf.uint8)])

  def _predict(self, images, tta=None):
    out = outputs(self.model, images, self.tta if tta is None else tta)
    return {**out, "class_names": tf.gather(self.class_names, out["classes"])}

  def _uint8(self, images):
    return self._predict(normalize(images))  # as training normalized them, to the bit

  def _float(self, images):
    return self._predict(images)


def outputs(model, images, tta=()) -> dict[str, tf.Tensor]:
  """The class probabilities (with tta, the views' average) and the class of float
  images in [0, 1]: what every export gives."""
  # No views: one view of weight 1, the plain softmax to the bit.
  _, probabilities = tta_views.predict(model, images, tuple(tta))
  return {"probabilities": probabilities,
          "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}


def uint8_function(model, image_shape, tta=()):
  """serving_default's computation without the class names (string tensors, which LiteRT
  and ONNX runtimes do not serve): uint8 images of image_shape in, outputs() out."""
  spec = tf.TensorSpec((None,) + tuple(image_shape), tf.uint8, name="images")
  return tf.function(lambda images: outputs(model, normalize(images), tta),
                     input_signature=[spec])


def save_model(model, image_shape, path: str, class_names=(), tta=()) -> None:
  """SavedModel: 'serving_default' takes uint8 pixels, 'serving_float' floats in [0, 1];
  with tta both average the views, and 'serving_plain' (uint8) does not.
  Written to a local temporary directory, then published whole (trainer/process/files.py)."""
  module = _Serving(model, image_shape, class_names, tta)
  signatures = {"serving_default": module.serve_uint8, "serving_float": module.serve_float}
  if module.tta:
    signatures["serving_plain"] = module.serve_plain
  # Beside the target when local (a rename within one filesystem), else the system's.
  parent = None
  if files.is_local(path):
    path = path.removeprefix("file://")
    parent = os.path.dirname(os.path.abspath(path))
  tmp = tempfile.mkdtemp(dir=parent, prefix=".export-")
  os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
  try:
    tf.saved_model.save(module, tmp, signatures=signatures)
    files.publish_dir(tmp, path)
  finally:
    files.rmtree(tmp)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_submission(path: str, classes: np.ndarray) -> None:
  """The Kaggle Digit Recognizer submission: ImageId (from 1),Label."""
  lines = ["ImageId,Label"] + [f"{i},{c}" for i, c in enumerate(classes, start=1)]
  files.write_text(path, "\n".join(lines) + "\n")


def write_predictions(path: str, image_paths, class_names, probabilities) -> None:
  """One row per image file: path, the predicted class's name, its probability. Quoted
  as CSV needs (paths may hold commas or quotes); whole or absent (trainer/process/files.py)."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["path", "class", "probability"])
  for image_path, name, probability in zip(image_paths, class_names, probabilities):
    writer.writerow([image_path, name, f"{probability:.6f}"])
  files.write_text(path, out.getvalue())
