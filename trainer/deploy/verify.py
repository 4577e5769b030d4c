"""The check of an export before it is published: the converted model in its runtime and
the SavedModel in TensorFlow on the same labelled images, side by side: accuracy,
agreement, the largest probability difference, file size and one image's latency."""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np

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
