"""--classes and --examples_per_class: a dataset cut down to some of its classes,
relabelled 0..K-1 in the order given (their names kept), and a seeded few examples per
class of its train split; the experiments of transfer learning need both.

In-memory splits and image folders (their labels are known before any image is read)
take both; a TFDS dataset streamed from its shards keeps its labels inside the records,
so it takes neither (DataError naming --pipeline=in_memory). An unlabeled split (a
Kaggle test file) is kept whole: nothing tells its classes."""

from __future__ import annotations

import numpy as np

from input_pipeline.data import DataError, Split
from input_pipeline.records import FileRecords
from input_pipeline.stream import StreamSplit


def _labels(split, spec: str, flag: str) -> np.ndarray | None:
  """The split's labels, one per example (None: unlabeled)."""
  if isinstance(split, StreamSplit):
    records = split.records
    if not isinstance(records, FileRecords):
      raise DataError(f"{flag} needs each example's label before it is read; {spec} streamed "
                      "from its TFDS shards keeps them inside the records: use "
                      "--pipeline=in_memory")
    return None if records.labels is None else records.labels[records.indices]
  return split.labels


def _take(split, positions: np.ndarray, remap: np.ndarray | None = None):
  """The examples at these positions, their labels through remap when given."""
  if isinstance(split, StreamSplit):
    records = split.records.subset(positions)
    if remap is not None:
      labels = records.labels.copy()
      labels[records.indices] = remap[labels[records.indices]]
      records = FileRecords(records.paths, labels, records.channels, records.indices)
    return StreamSplit(records=records, image_shape=split.image_shape,
                       labeled=split.labeled, resize=split.resize)
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
    labels = _labels(split, spec, "--classes")
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
  labels = _labels(split, spec, "--examples_per_class")
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
