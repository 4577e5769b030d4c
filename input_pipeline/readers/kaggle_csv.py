"""The Kaggle Digit Recognizer CSV format: `label,pixel0..pixelN` (train) or `pixel0..` (test)."""

from __future__ import annotations

import io
import math
import os
import shlex

import numpy as np
import tensorflow as tf

from input_pipeline.data import DataError, Split, check_labels, read_file


def _first_bad_row(path: str, lines: list[str], ncols: int) -> DataError:
  """Finds the precise problem after numpy's fast parser refused the file."""
  for lineno, line in enumerate(lines, start=2):
    if not line.strip():
      continue
    fields = line.split(",")
    if len(fields) != ncols:
      return DataError(f"{shlex.quote(path)} line {lineno} has {len(fields)} columns, "
                       f"the header has {ncols}")
    for col, field in enumerate(fields):
      try:
        value = int(field)
      except ValueError:
        return DataError(f"{shlex.quote(path)} line {lineno} column {col + 1}: "
                         f"{field.strip()[:20]!r} "
                         "is not an integer")
      if not -2**63 <= value < 2**63:
        return DataError(f"{shlex.quote(path)} line {lineno} column {col + 1}: "
                         f"{field.strip()[:20]!r} "
                         "is out of range")
  return DataError(f"{shlex.quote(path)}: cannot parse as integer CSV")


def read(path: str, num_classes: int) -> Split:
  """Reads one CSV file; labels are None when the header has no `label` column."""
  return parse(read_file(path), path, num_classes)


def parse(raw: bytes, path: str, num_classes: int) -> Split:
  """Parses the bytes of one CSV file; `path` only names it in errors."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    raise DataError(f"{shlex.quote(path)} is not a text CSV file") from None
  lines = text.splitlines()
  if not lines:
    raise DataError(f"{shlex.quote(path)} is empty: expected a header 'label,pixel0,...' or "
                    f"'pixel0,...'")
  header = [h.strip() for h in lines[0].split(",")]
  labeled = header[0] == "label"
  pixels = header[1:] if labeled else header
  if not pixels or any(not h.startswith("pixel") for h in pixels):
    raise DataError(f"{shlex.quote(path)}: the header must be 'label,pixel0,pixel1,...' (train) or "
                    f"'pixel0,pixel1,...' (test); found {lines[0][:40]!r}")
  side = math.isqrt(len(pixels))
  if side * side != len(pixels):
    raise DataError(f"{shlex.quote(path)} has {len(pixels)} pixel columns, not a square image")
  body = lines[1:]
  if not any(line.strip() for line in body):
    raise DataError(f"{shlex.quote(path)} has a header but no rows")
  try:
    rows = np.loadtxt(io.StringIO("\n".join(body)), delimiter=",", dtype=np.int64,
                      comments=None, ndmin=2)
  except (ValueError, OverflowError):
    raise _first_bad_row(path, body, len(header)) from None
  if rows.shape[1] != len(header):
    raise _first_bad_row(path, body, len(header))
  values = rows[:, 1:] if labeled else rows
  bad = np.argwhere((values < 0) | (values > 255))
  if bad.size:
    r, c = bad[0]
    raise DataError(f"{shlex.quote(path)} line {r + 2} {pixels[c]}: pixel value {values[r, c]} "
                    f"is outside "
                    "[0, 255]")
  images = values.astype(np.uint8).reshape(-1, side, side, 1)
  labels = None
  if labeled:
    labels = check_labels(rows[:, 0], num_classes, lambda i: f"line {i + 2} of {shlex.quote(path)}")
  return Split(images=images, labels=labels)


def load(path: str, num_classes: int) -> dict[str, Split]:
  """A directory gives train.csv (and test.csv, unlabeled, when present); a labeled file
  gives the train split, an unlabeled one the test split (for prediction)."""
  # tf.io.gfile: the files may be in a bucket (Python's os.path sees local disks only).
  if tf.io.gfile.isdir(path):
    train = os.path.join(path, "train.csv")
    if not tf.io.gfile.exists(train):
      raise DataError(f"{shlex.quote('csv:' + path)}: no train.csv in this directory")
    splits = {"train": read(train, num_classes)}
    test = os.path.join(path, "test.csv")
    if tf.io.gfile.exists(test):
      splits["test"] = read(test, num_classes)
    return splits
  if not tf.io.gfile.exists(path):
    raise DataError(f"{shlex.quote('csv:' + path)}: no such file")
  split = read(path, num_classes)
  return {"train" if split.labels is not None else "test": split}
