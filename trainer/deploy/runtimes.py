"""An exported model run by what serves it: a SavedModel by TensorFlow, a .tflite file by
LiteRT's interpreter, an .onnx file by onnxruntime. Each takes a batch of uint8 images and
gives what serving_default gives: probabilities, classes and the classes' names."""

from __future__ import annotations

import shlex

import numpy as np
import tensorflow as tf

from trainer.deploy import formats
from trainer.process import files, tf_env
from trainer.process.errors import UsageError

gfile = tf.io.gfile


class Runner:
  """Call with images=uint8 [N, H, W, C]: {probabilities, classes, class_names (bytes)}.
  image_shape (H, W, C), num_classes and class_names (str) describe the model."""
  image_shape: tuple[int, int, int]
  num_classes: int
  _names = np.zeros(0, dtype=object)  # class_names as the outputs give them (bytes)

  @property
  def class_names(self) -> list[str]:
    return [n.decode() for n in self._names]

  @class_names.setter
  def class_names(self, names) -> None:
    # Encoded once, not on each call: a call's time is the file's latency.
    self._names = np.array([n.encode() for n in names], dtype=object)

  def __call__(self, images) -> dict[str, np.ndarray]:
    probabilities, classes = self._run(np.asarray(images, np.uint8))
    return {"probabilities": probabilities, "classes": classes,
            "class_names": self._names[classes]}

  def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError


class SavedModel(Runner):
  """A signature of a SavedModel (the run's export), whose outputs name the classes."""

  def __init__(self, signature):
    self._signature = signature
    self.image_shape = tuple(signature.structured_input_signature[1]["images"].shape[1:])
    self.num_classes = int(signature.structured_outputs["probabilities"].shape[-1])
    # Its class names are in the graph: each call's class_names output.

  def __call__(self, images):
    out = self._signature(images=tf.constant(np.asarray(images, np.uint8)))
    return {k: v.numpy() for k, v in out.items()}


class LiteRT(Runner):
  """A .tflite file in ai_edge_litert's interpreter (its serving_default signature)."""

  def __init__(self, content: bytes, class_names: list[str]):
    from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
    self._interpreter = interpreter.Interpreter(model_content=content)
    self._runner = self._interpreter.get_signature_runner("serving_default")
    details = self._runner.get_input_details()["images"]
    self.image_shape = tuple(int(d) for d in details["shape"][1:])
    self.num_classes = int(self._runner.get_output_details()["probabilities"]["shape"][-1])
    self.class_names = class_names
    # The first run applies the XNNPACK delegate, which says so on stderr: quietly here.
    with tf_env.native_stderr(formats.litert_noise):
      self._runner(images=np.zeros((1, *self.image_shape), np.uint8))

  def _run(self, images):
    # The runner resizes its input to each batch's size.
    out = self._runner(images=images)
    return out["probabilities"], out["classes"]


class Onnx(Runner):
  """An .onnx file in onnxruntime's CPU session."""

  def __init__(self, content: bytes, class_names: list[str]):
    import onnxruntime  # pylint: disable=g-import-not-at-top
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: not its warnings on the console
    self._session = onnxruntime.InferenceSession(content, options,
                                                 providers=["CPUExecutionProvider"])
    inputs = self._session.get_inputs()
    self._input = inputs[0].name
    self.image_shape = tuple(int(d) for d in inputs[0].shape[1:])
    shapes = {o.name: o.shape for o in self._session.get_outputs()}
    self.num_classes = int(shapes["probabilities"][-1])
    self.class_names = class_names

  def _run(self, images):
    probabilities, classes = self._session.run(["probabilities", "classes"],
                                               {self._input: images})
    return probabilities, classes


def classes_file(path: str) -> str:
  return path + formats.CLASSES_SUFFIX


def write_class_names(path: str, class_names) -> str:
  """The classes' names beside an exported file, one per line (the file's class k is on
  line k); returns the sidecar's path."""
  files.write_text(classes_file(path), "".join(f"{name}\n" for name in class_names))
  return classes_file(path)


def load(path: str) -> Runner:
  """An exported .tflite or .onnx file in its runtime, its class names from the file
  beside it (else the class ids). One line naming the file when it cannot be read."""
  fmt = formats.of_path(path)
  formats.require(fmt)
  q = shlex.quote
  if not gfile.exists(path) or gfile.isdir(path):
    raise UsageError(f"no exported file {q(path)}: export one with python -m trainer.export "
                     f"--model_dir=RUN --format={fmt}")
  with gfile.GFile(path, "rb") as f:
    content = f.read()
  try:
    runner = (LiteRT if fmt == "litert" else Onnx)(content, [])
  except Exception as e:  # pylint: disable=broad-except
    # Each runtime raises its own errors (ValueError, onnxruntime's Fail/InvalidProtobuf).
    raise UsageError(f"{q(path)} cannot be loaded as a {fmt} model ({formats.first_line(e)}): "
                     "export it anew with python -m trainer.export") from None
  names = [str(i) for i in range(runner.num_classes)]
  if gfile.exists(classes_file(path)):
    with gfile.GFile(classes_file(path)) as f:
      listed = f.read().splitlines()
    if len(listed) != runner.num_classes:
      raise UsageError(f"{q(classes_file(path))} names {len(listed)} classes but {q(path)} "
                       f"predicts {runner.num_classes}: export the model anew (the two are "
                       "written together)")
    names = listed
  runner.class_names = names
  return runner
