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


def write_image_folder(root, per_split=(("train", 8), ("test", 3)), classes=("cat", "dog", "fox"),
                       sizes=((20, 24), (32, 32), (40, 28)), channels=3, seed=0):
  """DIR/<split>/<class>/<i>.png|jpg: images of mixed sizes and formats whose brightness
  depends on the class (learnable); returns {split: [(path, label)]} in class, file order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  written = {}
  for split, n in per_split:
    for label, name in enumerate(classes):
      directory = os.path.join(str(root), split, name)
      os.makedirs(directory, exist_ok=True)
      for i in range(n):
        h, w = sizes[i % len(sizes)]
        image = (rng.integers(0, 60, (h, w, channels)) + 90 * label).astype(np.uint8)
        # PNG is lossless: tests compare its pixels; JPEG tests the other decoder.
        png = i % 2 == 0
        data = (tf.io.encode_png(image) if png else tf.io.encode_jpeg(image, quality=95)).numpy()
        path = os.path.join(directory, f"{i:03d}.{'png' if png else 'jpg'}")
        with open(path, "wb") as f:
          f.write(data)
        written.setdefault(split, []).append((path, label))
  return written


_TINY_TFDS = {}


def tiny_tfds_builder(fixed_size: bool = False):
  """A TFDS image-classification dataset built from generated data (no network): images
  of varying size and 3 channels, or (fixed_size) all 14x14x1 like MNIST's. Each class is
  defined once (TFDS registers its name)."""
  key = "fixed" if fixed_size else "varying"
  if key not in _TINY_TFDS:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    shape = (14, 14, 1) if fixed_size else (None, None, 3)

    class Base(tfds.core.GeneratorBasedBuilder, skip_registration=True):
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=shape),
            "label": tfds.features.ClassLabel(names=["red", "green", "blue"])}),
            supervised_keys=("image", "label"))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(48, 0), "test": self._generate_examples(13, 1)}

      def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
          label = int(rng.integers(0, 3))
          h, w = shape[:2] if fixed_size else (int(v) for v in rng.integers(12, 30, 2))
          image = rng.integers(0, 80, (h, w, shape[2])).astype(np.uint8)
          if fixed_size:
            image += np.uint8(60 * label)  # the class sets the brightness
          else:
            image[..., label] += 150  # the class is the dominant colour
          yield i, {"image": image, "label": label}

    if fixed_size:
      class TapeloopTinyFixed(Base):
        pass
      _TINY_TFDS[key] = TapeloopTinyFixed
    else:
      class TapeloopTinyImages(Base):
        pass
      _TINY_TFDS[key] = TapeloopTinyImages
  return _TINY_TFDS[key]


def write_tiny_tfds(data_dir, fixed_size: bool = False):
  """Prepares a tiny TFDS dataset in data_dir (tiny_tfds_builder); returns its name."""
  builder = tiny_tfds_builder(fixed_size)(data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder.name
