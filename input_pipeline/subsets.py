"""--classes and --examples_per_class: a dataset cut down to some of its classes,
relabelled 0..K-1 in the order given (their names kept), and a seeded few examples per
class of its train split; the experiments of transfer learning need both.

Every source takes both: in-memory splits by their label arrays, streamed ones by their
records' labels (a folder's are its file list; a TFDS dataset's shards are read once for
their labels, its images left encoded), before any image is decoded. An unlabeled split
(a Kaggle test file) is kept whole: nothing tells its classes."""

from __future__ import annotations

import dataclasses

import numpy as np

from input_pipeline.data import DataError, Split
from input_pipeline.stream import StreamSplit


def _labels(split) -> np.ndarray | None:
  """The split's labels, one per example (None: unlabeled)."""
  if isinstance(split, StreamSplit):
    labels = split.records.labels() if split.labeled else None
    return None if labels is None else labels[split.records.indices]
  return split.labels


def _take(split, positions: np.ndarray, remap: np.ndarray | None = None):
  """The examples at these positions, their labels through remap when given."""
  if isinstance(split, StreamSplit):
    records = split.records.subset(positions)
    return dataclasses.replace(
        split, records=records if remap is None else records.relabelled(remap))
  labels = split.labels[positions]
  return Split(images=split.images[positions],
               labels=labels if remap is None else remap[labels].astype(labels.dtype))


def keep_classes(splits: dict, classes: tuple[int, ...], num_classes: int,
                 class_names: tuple[str, ...], spec: str):
  """(splits, num_classes, class_names) of only `classes`, relabelled in their order."""
  unknown = [c for c in classes if not 0 <= c < num_classes]
  if unknown:
    raise DataError(f"--classes={','.join(map(str, classes))}: {spec} has classes 0 to "
                    f"{num_classes - 1}; {', '.join(map(str, unknown))} is not one of them")
  remap = np.full(num_classes, -1, np.int64)
  remap[list(classes)] = np.arange(len(classes))
  kept = {}
  for name, split in splits.items():
    labels = _labels(split)
    if labels is None:
      kept[name] = split
      continue
    positions = np.flatnonzero(np.isin(labels, classes))
    if not len(positions):
      raise DataError(f"--classes={','.join(map(str, classes))}: the {name} split of {spec} "
                      "has no example of them")
    kept[name] = _take(split, positions, remap)
  names = tuple(class_names[c] for c in classes) if class_names else ()
  return kept, len(classes), names


def few_per_class(split, n: int, num_classes: int, seed: int, spec: str):
  """`n` examples of each class of a train split, chosen by `seed`, in their order."""
  labels = _labels(split)
  if labels is None:
    raise DataError(f"--examples_per_class: the train split of {spec} is unlabeled")
  rng = np.random.default_rng([seed, 0xFE])
  chosen = []
  for c in range(num_classes):
    of_class = np.flatnonzero(labels == c)
    if len(of_class) < n:
      raise DataError(f"--examples_per_class={n}: class {c} of {spec}'s train split has "
                      f"{len(of_class)} examples; use --examples_per_class={len(of_class)} "
                      "or fewer")
    chosen.append(rng.choice(of_class, size=n, replace=False))
  return _take(split, np.sort(np.concatenate(chosen)))
