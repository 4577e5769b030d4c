"""The IDX format that MNIST, Fashion-MNIST, KMNIST and EMNIST ship in, gzipped or raw."""

from __future__ import annotations

import gzip
import os
import shlex
import zlib

import numpy as np
import tensorflow as tf

from input_pipeline.data import DataError, Split, check_labels, read_file

_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
# (split, kind) -> the name stem every MNIST-format distribution uses.
_STEMS = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def read_bytes(path: str) -> bytes:
  """Reads a file, transparently gunzipping it (detected by magic, not by name)."""
  return gunzip(read_file(path), path)


def gunzip(raw: bytes, path: str) -> bytes:
  """raw itself, or its gunzipped content when it starts with the gzip magic."""
  if raw[:2] != b"\x1f\x8b":
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"{shlex.quote(path)} is not a valid gzip file ({e}); download it "
                    f"again") from None


def parse_idx(data: bytes, expected_magic: int, path: str) -> np.ndarray:
  """Parses IDX bytes into a uint8 array, checking the magic number and the length."""
  if len(data) < 4:
    raise DataError(f"{shlex.quote(path)} is truncated: {len(data)} bytes, no IDX header")
  magic = int.from_bytes(data[:4], "big")
  if magic != expected_magic:
    kind = "images" if expected_magic == _IMAGES_MAGIC else "labels"
    raise DataError(f"{shlex.quote(path)} has IDX magic number {magic:#010x}, expected "
                    f"{expected_magic:#010x} for {kind}: is it the right file?")
  ndim = expected_magic & 0xFF
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f"{shlex.quote(path)} is truncated: the IDX header needs {header} bytes, "
                    f"the file has {len(data)}")
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  expected = int(np.prod(dims, dtype=object))
  found = len(data) - header
  if found < expected:
    raise DataError(f"{shlex.quote(path)} is truncated: shape {dims} needs {expected} bytes of "
                    f"data, the file has {found}; download it again")
  if found > expected:
    raise DataError(f"{shlex.quote(path)} has {found - expected} bytes after the data of shape "
                    f"{dims}: not a valid IDX file")
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: str, stem: str) -> str:
  """Finds the file for stem, raw or .gz, also as 'train-images.idx3-ubyte' or prefixed
  ('emnist-digits-train-images-idx3-ubyte')."""
  alt = stem.replace("-idx", ".idx")
  names = sorted(n for n in tf.io.gfile.listdir(directory)
                 if n.removesuffix(".gz").endswith((stem, alt)))
  if not names:
    raise DataError(f"no {stem}[.gz] in {shlex.quote(directory)}: idx:DIR needs the four "
                    f"MNIST-format "
                    f"files ({', '.join(_STEMS.values())})")
  if len(names) > 1:
    raise DataError(f"several files match {stem} in {shlex.quote(directory)} "
                    f"({', '.join(map(shlex.quote, names))}): "
                    "point idx: at a directory holding one dataset")
  return os.path.join(directory, names[0])


def read_split(directory: str, split: str, num_classes: int) -> Split:
  images_path = _find(directory, _STEMS[(split, "images")])
  labels_path = _find(directory, _STEMS[(split, "labels")])
  images = parse_idx(read_bytes(images_path), _IMAGES_MAGIC, images_path)
  labels = parse_idx(read_bytes(labels_path), _LABELS_MAGIC, labels_path)
  if len(images) != len(labels):
    raise DataError(f"{shlex.quote(images_path)} has {len(images)} images but "
                    f"{shlex.quote(labels_path)} has "
                    f"{len(labels)} labels")
  labels = check_labels(labels, num_classes, lambda i: f"item {i} of {shlex.quote(labels_path)}")
  return Split(images=images[..., np.newaxis], labels=labels)


def load(directory: str, num_classes: int) -> dict[str, Split]:
  if not tf.io.gfile.isdir(directory):
    raise DataError(f"{shlex.quote('idx:' + directory)}: no such directory")
  return {split: read_split(directory, split, num_classes) for split in ("train", "test")}
