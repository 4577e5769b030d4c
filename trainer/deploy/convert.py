"""A run's model into LiteRT and ONNX bytes: the SavedModel's serving_default computation
(uint8 images in, probabilities and classes out, with the run's test-time views), its
variables frozen into constants."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
# pylint: disable-next=g-direct-tensorflow-import
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from trainer.deploy import formats
from trainer.process import tf_env
from trainer.process.errors import UsageError
from trainer.run import export


def frozen_function(model, image_shape, tta=()):
  """serving_default's computation as a function of constants: the LiteRT converter left
  Keras's variables as resources (a file without its weights, and int8 calibration fails:
  "READ_VARIABLE failed to invoke"). Freezing loses the output names, so the frozen graph
  is called from a function that names them again."""
  function = export.uint8_function(model, image_shape, tta)
  concrete = function.get_concrete_function()
  frozen = convert_variables_to_constants_v2(concrete)

  @tf.function(input_signature=function.input_signature)
  def named(images):
    return tf.nest.pack_sequence_as(concrete.structured_outputs, frozen(images))

  return named


def calibration_images(split, count: int, seed: int) -> np.ndarray:
  """int8's calibration: `count` training images (all when fewer), drawn without
  replacement by the seed."""
  n = min(count, len(split))
  positions = np.sort(np.random.default_rng(seed).choice(len(split), n, replace=False))
  return split.images_at(positions)


def litert(function, quantize: str, calibration: Iterator[np.ndarray] | None = None) -> bytes:
  """A .tflite file's bytes. quantize: none, float16 (weights), dynamic (int8 weights) or
  int8 (every operation on integers, calibrated on `calibration`'s uint8 images; the
  input stays uint8 and the probabilities float32, as the SavedModel's)."""
  # A trackable object, even an empty one, takes the converter's current path (without
  # one it warns and takes a deprecated one); the function holds no variables.
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [function.get_concrete_function()], tf.Module())
  if quantize != "none":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == "float16":
    converter.target_spec.supported_types = [tf.float16]
  elif quantize == "int8":
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  try:
    with tf_env.native_stderr(formats.litert_noise):
      return converter.convert()
  except Exception as e:  # pylint: disable=broad-except
    # The converter raises ConverterError, RuntimeError or ValueError for a model it cannot
    # express (an operation without a LiteRT or integer kernel).
    raise UsageError(f"--quantize={quantize} is not offered for this model: LiteRT's "
                     f"converter failed ({formats.first_line(e)})"
                     + ("; try --quantize=dynamic" if quantize == "int8" else "")) from None


def onnx(function, opset: int, metadata: dict[str, str]) -> bytes:
  """An .onnx file's bytes (tf2onnx at `opset`), with `metadata` in its model properties."""
  # pylint: disable-next=g-import-not-at-top
  import onnx as onnx_lib
  import tf2onnx  # pylint: disable=g-import-not-at-top
  # tf2onnx logs a graph optimizer's failure with its traceback and goes on without that
  # optimization (MobileNetV3's transposes): the file is checked whole after, not them.
  logging.getLogger("tf2onnx").setLevel(logging.ERROR)
  try:
    proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                             opset=opset)
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(f"--opset={opset}: tf2onnx cannot convert this model "
                     f"({formats.first_line(e)}); try another --opset") from None
  onnx_lib.helper.set_model_props(proto, metadata)
  return proto.SerializeToString()


def class_metadata(class_names) -> dict[str, str]:
  return {"class_names": json.dumps(list(class_names))}
