"""Generated data files in the formats the sources read."""

import gzip
import os

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
  """Encodes a uint8 array in the IDX format (magic 0x0000 08 ndim, big-endian dims)."""
  header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def write_mnist_dir(directory, n_train=12, n_test=5, shape=(28, 28), classes=10, gz=True,
                    seed=0):
  """Writes the four MNIST-format files; returns the arrays written."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  arrays = {}
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, classes, n, dtype=np.uint8)
  for name, array in arrays.items():
    data = idx_bytes(array)
    path = os.path.join(directory, name + (".gz" if gz else ""))
    with open(path, "wb") as f:
      f.write(gzip.compress(data) if gz else data)
  return arrays


def write_kaggle_csv(path, images, labels=None):
  """Writes the Kaggle Digit Recognizer CSV: label,pixel0.. (or pixels only)."""
  flat = images.reshape(len(images), -1)
  header = ([] if labels is None else ["label"]) + [f"pixel{i}" for i in range(flat.shape[1])]
  rows = flat if labels is None else np.concatenate([np.asarray(labels)[:, None], flat], 1)
  with open(path, "w") as f:
    f.write(",".join(header) + "\n")
    for row in rows:
      f.write(",".join(str(v) for v in row) + "\n")


def tree_digest(path):
  """{relative path: sha256} of every file under path: compares a directory before/after."""
  import glob
  import hashlib
  out = {}
  for f in glob.glob(os.path.join(str(path), "**"), recursive=True):
    if os.path.isfile(f):
      with open(f, "rb") as fh:
        out[os.path.relpath(f, path)] = hashlib.sha256(fh.read()).hexdigest()
  return out
