"""The export formats, their quantizations and files, and the optional packages (the
`export` extra) that convert and run them."""

from __future__ import annotations

import importlib
import os
import re

from trainer.process.errors import UsageError

# format -> (file suffix, the quantizations offered, the packages converting and running it)
FORMATS = {
    "litert": (".tflite", ("none", "float16", "dynamic", "int8"), ("ai_edge_litert",)),
    "onnx": (".onnx", ("none",), ("tf2onnx", "onnx", "onnxruntime")),
}
QUANTIZE_HELP = {"none": "float32", "float16": "float16 weights",
                 "dynamic": "int8 weights, float activations",
                 "int8": "full integer, calibrated on training images"}
# The extra that installs them (setup.cfg), named in the error when one is missing.
INSTALL = "pip install -e '.[export]'"
# Beside an exported file FILE: its classes (one name per line) and its check's report.
CLASSES_SUFFIX, REPORT_SUFFIX, REJECTED_SUFFIX = ".classes.txt", ".report.json", ".rejected.json"


# LiteRT's C++ lines at each interpreter's first run and at int8 calibration (which also
# calls a uint8 input FLOAT32): not news to the person exporting or predicting.
_LITERT_NOISE = re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate|^fully_quantize: ")


def litert_noise(line: str) -> bool:
  return bool(_LITERT_NOISE.search(line))


def label(fmt: str, quantize: str) -> str:
  """How a table names an export: LiteRT int8, ONNX float32."""
  return f"{'LiteRT' if fmt == 'litert' else 'ONNX'} {'float32' if quantize == 'none' else quantize}"


def of_path(path: str) -> str | None:
  """The format of an exported file by its suffix, None for any other path."""
  return next((f for f, (suffix, _, _) in FORMATS.items() if path.endswith(suffix)), None)


def default_file(model_dir: str, fmt: str, quantize: str, checkpoint: str,
                 opset: int | None = None, tta: bool = True) -> str:
  """model_dir/exports/NAME: model, best or the checkpoint's name (best_ckpt-N for one of
  best/), then the quantization, an --opset given and _notta for --tta=none: one export
  does not replace another."""
  stem = {"final": "model", "best": "best"}.get(checkpoint)
  if stem is None:
    parent = os.path.basename(os.path.dirname(checkpoint))
    stem = ("best_" if parent == "best" else "") + os.path.basename(checkpoint)
  suffix = "" if quantize == "none" else f"_{quantize}"
  suffix += (f"_opset{opset}" if opset else "") + ("" if tta else "_notta")
  return os.path.join(model_dir, "exports", f"{stem}{suffix}{FORMATS[fmt][0]}")


def require(fmt: str) -> None:
  """Imports the format's packages; one line naming the extra when one is missing."""
  for module in FORMATS[fmt][2]:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise UsageError(f"{fmt} files need the package {module.replace('_', '-')}, which is not "
                       f"installed ({e.name or module}): install the export extra with "
                       f"{INSTALL}") from None


def check(fmt: str, quantize: str) -> None:
  """A format and quantization tapeloop offers, else one line listing what it does."""
  if fmt not in FORMATS:
    raise UsageError(f"--format={fmt} is not offered: give --format=litert (LiteRT, "
                     "formerly TensorFlow Lite) or --format=onnx")
  offered = FORMATS[fmt][1]
  if quantize in offered:
    return
  if quantize in FORMATS["litert"][1]:
    raise UsageError(f"--quantize={quantize} is not offered for --format={fmt}: its files are "
                     "float32; drop --quantize, or give --format=litert for a quantized file")
  raise UsageError(f"--quantize={quantize} is not offered for --format={fmt}: give one of "
                   f"{', '.join(offered)}")


def first_line(error: Exception, limit: int = 200) -> str:
  """A converter's or runtime's error as a message quotes it: its first line."""
  text = str(error).strip()
  return (text.splitlines()[0] if text else type(error).__name__)[:limit]
