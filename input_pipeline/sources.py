"""One string names a data source: tfds:NAME (or a bare TFDS name), idx:DIR, csv:PATH, synthetic.

    load("mnist") / load("idx:/data/mnist") / load("csv:train.csv")
    load("synthetic:shape=28x28x1,classes=10,train=1024,test=256")
"""

from __future__ import annotations

import re

import numpy as np

from input_pipeline import idx, kaggle_csv, tfds_source
from input_pipeline.data import Data, DataError, Split, make_data

# IDX and CSV files carry no class count; the formats' datasets are 10-class.
_DEFAULT_NUM_CLASSES = 10
_SYNTHETIC_DEFAULTS = {"shape": "28x28x1", "classes": "10", "train": "60000",
                       "test": "10000", "seed": "0"}
_PREFIXES = ("tfds", "idx", "csv", "synthetic")


def parse_spec(spec: str) -> tuple[str, str]:
  """Splits '--dataset' into (kind, argument); a bare name is a TFDS name."""
  spec = spec.strip()
  kind, sep, arg = spec.partition(":")
  if not sep:
    if spec == "synthetic":
      return "synthetic", ""
    kind, arg = "tfds", spec
  if kind not in _PREFIXES:
    raise DataError(f"unknown data source prefix {kind + ':'!r} in {spec!r}; use tfds:NAME "
                    "(or a TFDS name), idx:DIR, csv:PATH or synthetic")
  if kind != "synthetic" and not arg:
    raise DataError(f"{spec!r} names no {'directory' if kind == 'idx' else 'path' if kind == 'csv' else 'dataset'}")
  if kind == "tfds" and not re.fullmatch(r"[a-z0-9_]+(/[\w.-]+)?(:[\d.*]+)?", arg):
    raise DataError(f"{arg!r} is not a TFDS dataset name (lower-case, like mnist or "
                    "fashion_mnist)")
  return kind, arg


def _synthetic(arg: str, num_classes: int | None) -> tuple[dict[str, Split], int]:
  """Random images with a per-class template mixed in, so models can learn them."""
  options = dict(_SYNTHETIC_DEFAULTS)
  if num_classes is not None:
    options["classes"] = str(num_classes)
  for item in filter(None, arg.split(",")):
    key, _, value = item.partition("=")
    if key not in _SYNTHETIC_DEFAULTS:
      raise DataError(f"synthetic: unknown option {key!r}; known: "
                      f"{', '.join(_SYNTHETIC_DEFAULTS)}")
    options[key] = value
  try:
    shape = tuple(int(d) for d in options["shape"].lower().split("x"))
    classes, n_train, n_test, seed = (int(options[k]) for k in ("classes", "train", "test", "seed"))
  except ValueError:
    raise DataError(f"synthetic:{arg}: options must be integers and shape HxWxC") from None
  if len(shape) != 3 or min(shape) < 1 or classes < 2 or n_train < 1 or n_test < 1:
    raise DataError(f"synthetic:{arg}: need shape HxWxC, classes >= 2, train and test >= 1")
  rng = np.random.default_rng(seed)
  templates = rng.integers(0, 256, size=(classes,) + shape)

  def make(n):
    labels = rng.integers(0, classes, size=n)
    noise = rng.integers(0, 256, size=(n,) + shape)
    return Split(images=((templates[labels] + noise) // 2).astype(np.uint8), labels=labels)

  return {"train": make(n_train), "test": make(n_test)}, classes


def carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
  """Splits off a seeded, deterministic validation set; both keep the original order."""
  n_val = int(round(len(train) * fraction))
  if not 0 < n_val < len(train):
    raise DataError(f"--validation_split={fraction} leaves no validation or no training "
                    f"examples out of {len(train)}")
  perm = np.random.default_rng(seed).permutation(len(train))
  val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])

  def take(ix):
    return Split(images=train.images[ix],
                 labels=None if train.labels is None else train.labels[ix])

  return take(train_idx), take(val_idx)


def load(spec: str, *, data_dir: str | None = None, manual_dir: str | None = None,
         num_classes: int | None = None, validation_split: float = 0.0,
         seed: int = 0) -> Data:
  """Loads a data source into memory. Raises DataError with a one-line fix on bad input."""
  if not 0.0 <= validation_split < 1.0:
    raise DataError(f"--validation_split={validation_split} must be in [0, 1)")
  if num_classes is not None and num_classes < 2:
    raise DataError(f"--num_classes={num_classes} must be at least 2")
  kind, arg = parse_spec(spec)
  class_names = ()
  if kind == "tfds":
    splits, num_classes = tfds_source.load(arg, data_dir, manual_dir, num_classes)
    class_names = tfds_source.class_names(arg, data_dir)
  elif kind == "synthetic":
    splits, num_classes = _synthetic(arg, num_classes)
  else:
    num_classes = num_classes or _DEFAULT_NUM_CLASSES
    reader = idx.load if kind == "idx" else kaggle_csv.load
    splits = reader(arg, num_classes)
  if validation_split:
    if "train" not in splits:
      raise DataError(f"{spec}: --validation_split needs a train split")
    splits["train"], splits["validation"] = carve_validation(
        splits["train"], validation_split, seed)
  return make_data(spec if kind != "tfds" else arg, splits, num_classes, class_names)
