"""The check of an export before it is published: the converted model in its runtime and
the SavedModel in TensorFlow on the same labelled images, side by side: accuracy,
agreement, the largest probability difference, file size and one image's latency."""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from input_pipeline import stream
from trainer.deploy import runtimes
from trainer.process.errors import UsageError
from trainer.run import export

# Images per call when classifying a split (each runtime resizes its input to it).
BATCH = 256


@dataclasses.dataclass
class Row:
  """One model's figures on the check's images (agreement and difference: against the
  SavedModel's; 1 and 0 for itself)."""
  name: str
  accuracy: float
  agreement: float
  max_probability_difference: float
  size_bytes: int
  latency_ms: float


def classify(runner, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(probabilities [N, classes] float32, classes [N]) of every image, in batches."""
  probabilities, classes = [], []
  for i in range(0, len(images), BATCH):
    out = runner(images=images[i:i + BATCH])
    probabilities.append(np.asarray(out["probabilities"], np.float32))
    classes.append(np.asarray(out["classes"]))
  return np.concatenate(probabilities), np.concatenate(classes)


def latency_ms(runner, image: np.ndarray, runs: int = 200, warmup: int = 10) -> float:
  """Median milliseconds of one image's prediction, outputs read (after `warmup` calls:
  the first ones allocate and trace)."""
  batch = image[None]
  for _ in range(warmup):
    runner(images=batch)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    runner(images=batch)
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def row(name: str, outputs, reference, labels: np.ndarray, size_bytes: int,
        latency: float) -> Row:
  """A model's figures from its (probabilities, classes) and the SavedModel's."""
  probabilities, classes = outputs
  return Row(name, accuracy=float(np.mean(classes == labels)),
             agreement=float(np.mean(classes == reference[1])),
             max_probability_difference=float(np.max(np.abs(probabilities - reference[0]))),
             size_bytes=int(size_bytes), latency_ms=float(latency))


def accuracy_drop(rows: list[Row], examples: int) -> float:
  """Points the export's accuracy (rows[1]) is below the SavedModel's (rows[0]), from the
  counts of images each got right: 2 fewer of 200 is 1.0 point, not 1.0000000000000009."""
  right = [round(r.accuracy * examples) for r in rows]
  return 100 * (right[0] - right[1]) / examples


def table(rows: list[Row], examples: int, split: str) -> str:
  """The rows as the console shows them."""
  header = ("model", f"{split} accuracy", "agreement", "max |Δp|", "size", "latency")
  lines = [header] + [
      (r.name, f"{100 * r.accuracy:.2f}%", f"{100 * r.agreement:.2f}%",
       f"{r.max_probability_difference:.2g}", _size(r.size_bytes), f"{r.latency_ms:.2f} ms")
      for r in rows]
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(line, widths))).rstrip() for line in lines]
  return (f"on the {examples:,} {split} images (agreement: the share of classes equal to "
          "the SavedModel's; latency: the median of one image's prediction)\n  "
          + "\n  ".join(text))


def _size(n: int) -> str:
  if n < 1000:
    return f"{n} B"
  return f"{n / 1e3:.1f} KB" if n < 1e6 else f"{n / 1e6:.1f} MB"


def check_split(data) -> str:
  """The labelled split an export is checked on: test, else validation (a Kaggle test
  CSV has no labels)."""
  for name in ("test", "validation"):
    if name in data.splits and data.splits[name].labeled:
      return name
  raise UsageError("the run's data has no labelled test or validation split to check the "
                   "export on (it has " + ", ".join(data.splits) + "): train the run with "
                   "--validation_split=0.1, or give --dataset with labelled test images")


def in_memory(split, name: str):
  """A split a streamed run left in its files, decoded (the check reads it whole)."""
  return stream.materialize(split, name) if isinstance(split, stream.StreamSplit) else split


def compare(model, image_shape, class_names, tta, split, candidate) -> list[Row]:
  """[the SavedModel's row, the candidate's]: `model` saved as the run's export saves it
  (into a temporary directory), loaded back by TensorFlow, and the candidate
  (name, runner, size in bytes) on the split's images."""
  name, runner, size = candidate
  with tempfile.TemporaryDirectory(prefix="tapeloop-export-") as tmp:
    saved = os.path.join(tmp, "saved_model")
    export.save_model(model, image_shape, saved, class_names, tta)
    reference = runtimes.SavedModel(tf.saved_model.load(saved).signatures["serving_default"])
    saved_size = sum(os.path.getsize(os.path.join(top, f))
                     for top, _, names in os.walk(saved) for f in names)
    expected = classify(reference, split.images)
    return [row("SavedModel", expected, expected, split.labels, saved_size,
                latency_ms(reference, split.images[0])),
            row(name, classify(runner, split.images), expected, split.labels, size,
                latency_ms(runner, split.images[0]))]


def verdict(drop: float, bound: float) -> tuple[bool, str]:
  """(published, what the console says) of an export `drop` points below the SavedModel.
  A drop of exactly the bound is within it, as --max_accuracy_drop's help says (the
  margin: a bound such as 0.29 is not exact in binary either)."""
  if drop <= bound + 1e-9:
    versus = ("the SavedModel's accuracy" if abs(drop) < 0.005 else
              f"{abs(drop):.2f} points {'below' if drop > 0 else 'above'} the SavedModel's "
              "accuracy")
    return True, f"published: {versus}, within --max_accuracy_drop={bound:g}"
  return False, (f"not published: its accuracy is {drop:.2f} points below the SavedModel's, "
                 f"more than --max_accuracy_drop={bound:g}")
