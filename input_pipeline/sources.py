"""One string names a data source: tfds:NAME (or a bare TFDS name), folder:DIR, idx:DIR,
csv:PATH, synthetic.

    load("mnist") / load("folder:/data/photos", image_size=(64, 64)) / load("csv:train.csv")
    load("synthetic:shape=28x28x1,classes=10,train=1024,test=256")

TFDS and folder data are decoded into memory when the decoded splits fit the memory
budget (--pipeline=auto), else streamed from their files while training (stream.py).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging

from input_pipeline import subsets
from input_pipeline.data import Data, DataError, Split, make_data
from input_pipeline.readers import folder, idx, kaggle_csv, tfds_source
from input_pipeline.records import fit
from input_pipeline.specs import parse_spec
from input_pipeline.stream import StreamSplit, materialize

# IDX and CSV files carry no class count; the formats' datasets are 10-class.
_DEFAULT_NUM_CLASSES = 10
_SYNTHETIC_DEFAULTS = {"shape": "28x28x1", "classes": "10", "train": "60000",
                       "test": "10000", "seed": "0"}


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


def memory_budget(gigabytes: float | None) -> int:
  """Bytes that decoded data may take in memory: the given GB, else a quarter of RAM."""
  if gigabytes:
    return int(gigabytes * 1e9)
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def choose_pipeline(requested: str, nbytes: int | None, budget: int) -> tuple[str, str]:
  """(in_memory | tf_data | stream, why) for data whose decoded splits take nbytes."""
  size = "unknown size" if nbytes is None else f"{nbytes / 1e9:.2f} GB decoded"
  if requested != "auto":
    return requested, f"--pipeline={requested} ({size})"
  if nbytes is not None and nbytes > budget:
    return "stream", (f"{size} is more than the memory budget of {budget / 1e9:.1f} GB "
                      "(--memory_budget_gb): streamed from its files")
  return "in_memory", (f"{size} fits the memory budget of {budget / 1e9:.1f} GB "
                       "(--memory_budget_gb): decoded into memory")


def _resized(split: Split, size) -> Split:
  """An in-memory split with every image fitted to size (--image_size)."""
  if split.image_shape[:2] == tuple(size):
    return split
  ds = tf.data.Dataset.from_tensor_slices(split.images).map(lambda x: fit(x, size)).batch(4096)
  images = np.concatenate(list(ds.as_numpy_iterator()))
  return Split(images=images, labels=split.labels)


def carve_validation(train, fraction: float, seed: int):
  """Splits off a seeded, deterministic validation set; both keep the original order.
  The same examples are held out whether the split is in memory or streamed."""
  n_val = int(round(len(train) * fraction))
  if not 0 < n_val < len(train):
    raise DataError(f"--validation_split={fraction} leaves no validation or no training "
                    f"examples out of {len(train)}")
  perm = np.random.default_rng(seed).permutation(len(train))
  val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
  if isinstance(train, StreamSplit):
    return train.subset(train_idx), train.subset(val_idx)

  def take(ix):
    return Split(images=train.images[ix],
                 labels=None if train.labels is None else train.labels[ix])

  return take(train_idx), take(val_idx)


def load(spec: str, *, data_dir: str | None = None, manual_dir: str | None = None,
         num_classes: int | None = None, validation_split: float = 0.0,
         seed: int = 0, image_size: tuple[int, int] | None = None,
         pipeline: str = "in_memory", memory_budget_gb: float | None = None,
         skip_bad_images: bool = False, folder_check: dict | None = None,
         classes: tuple[int, ...] | None = None,
         examples_per_class: int | None = None) -> Data:
  """Loads a data source: into memory, or as streams when `pipeline` (auto: by the
  decoded size) says so. folder_check: a folder's earlier check (Data.folder_check),
  reused when the files are the same. classes: only these, relabelled in order;
  examples_per_class: a seeded few of each in train, after validation is held out
  (subsets.py). Raises DataError with a one-line fix on bad data; the
  options' own values are checked where they are declared (trainer/options/declared.py)."""
  kind, arg = parse_spec(spec)
  budget = memory_budget(memory_budget_gb)
  class_names, checked = (), None
  if kind == "tfds":
    # Prepared first: before that its decoded size is unknown, and auto would hold a
    # dataset of any size in memory on its first run, then stream it on the next.
    tfds_source.prepare(arg, data_dir, manual_dir, num_classes, image_size)
    nbytes = tfds_source.decoded_bytes(arg, data_dir, image_size)
    pipeline, reason = choose_pipeline(pipeline, nbytes, budget)
    read = tfds_source.streams if pipeline == "stream" else tfds_source.load
    splits, num_classes = read(arg, data_dir, manual_dir, num_classes, image_size)
    class_names = tfds_source.class_names(arg, data_dir)
  elif kind == "folder":
    if num_classes is not None:
      raise DataError("--num_classes does not apply to folder: data: its classes are the "
                      "train folder's subfolders")
    splits, class_names, checked = folder.load(arg, image_size, skip_bad_images,
                                               folder_check)
    num_classes = len(class_names)
    pipeline, reason = choose_pipeline(pipeline, sum(s.nbytes for s in splits.values()),
                                       budget)
  else:
    if pipeline == "stream":
      raise DataError(f"--pipeline=stream reads TFDS or folder: data; {kind} data is read "
                      "whole into memory: use --pipeline=auto")
    pipeline = "tf_data" if pipeline == "tf_data" else "in_memory"
    reason = f"{kind} data is read whole into memory"
    if kind == "synthetic":
      splits, num_classes = _synthetic(arg, num_classes)
    else:
      num_classes = num_classes or _DEFAULT_NUM_CLASSES
      reader = idx.load if kind == "idx" else kaggle_csv.load
      splits = reader(arg, num_classes)
    if image_size:
      splits = {k: _resized(v, image_size) for k, v in splits.items()}
  if classes:
    splits, num_classes, class_names = subsets.keep_classes(splits, classes, num_classes,
                                                            class_names, spec)
  if validation_split:
    if "train" not in splits:
      raise DataError(f"{spec}: --validation_split needs a train split")
    if "validation" in splits:  # carving would silently replace it
      raise DataError(f"{spec} has its own validation split ({len(splits['validation'])} "
                      "examples): drop --validation_split")
    splits["train"], splits["validation"] = carve_validation(
        splits["train"], validation_split, seed)
  if examples_per_class:
    if "train" not in splits:
      raise DataError(f"{spec}: --examples_per_class needs a train split")
    splits["train"] = subsets.few_per_class(splits["train"], examples_per_class, num_classes,
                                            seed, spec)
  if pipeline != "stream":
    splits = {k: materialize(v, k) if isinstance(v, StreamSplit) else v
              for k, v in splits.items()}
  logging.info("input pipeline: %s, %s", pipeline, reason)
  data = make_data(spec if kind != "tfds" else arg, splits, num_classes, class_names,
                   pipeline, reason)
  return dataclasses.replace(data, folder_check=checked)
