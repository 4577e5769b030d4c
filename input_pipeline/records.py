"""Examples as they are stored (image files, TFDS record shards), read as a stream.

A `Records` knows how many examples a split holds, the examples of one epoch in a seeded
order, all of them in stored order, and how to decode one. Every element carries the
example's index in the split, so a subset (a held-out validation split) is a sorted index
array and an example's results can be put back in place.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of one epoch, a function of (seed, epoch) only: the in-memory
  pipeline and the streams draw it from here, so they see examples in the same order."""
  return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def epoch_order(n: int, seed, epoch) -> tf.Tensor:
  """epoch_permutation as a tensor, for tf.data pipelines (seed and epoch may be tensors)."""
  order = tf.numpy_function(lambda s, e: epoch_permutation(n, int(s), int(e)),
                            [tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)], tf.int64,
                            stateful=False)
  order.set_shape([n])
  return order


def decode_image(contents: tf.Tensor, channels: int) -> tf.Tensor:
  """PNG, JPEG, GIF or BMP bytes -> uint8 [H, W, channels] (a GIF's first frame)."""
  image = tf.io.decode_image(contents, channels=channels, expand_animations=False)
  image.set_shape([None, None, channels])
  return image


def fit(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  """Resizes (keeping the aspect) until the image covers size, then crops the centre:
  uint8 [H, W, C] -> uint8 [size[0], size[1], C]. Eval images, and stored images that
  random-resized crops are drawn from on the device. An image of that size stays as is."""
  static = tuple(image.shape[:2])
  if None not in static:
    # Decided in Python: tf.cond traces both branches, and ensure_shape in the branch that
    # does not run fails at graph construction when the shape is static.
    return image if static == tuple(size) else _cover_and_crop(image, size)
  same = tf.reduce_all(tf.shape(image)[:2] == tf.constant(size, tf.int32))
  return tf.cond(same, lambda: tf.ensure_shape(image, [*size, None]),
                 lambda: _cover_and_crop(image, size))


def _cover_and_crop(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  target = tf.constant(size, tf.float32)
  scale = tf.reduce_max(target / shape)
  covered = tf.cast(tf.math.ceil(shape * scale), tf.int32)
  covered = tf.maximum(covered, tf.constant(size, tf.int32))
  resized = tf.image.resize(image, covered, method="area", antialias=True)
  top = (covered[0] - size[0]) // 2
  left = (covered[1] - size[1]) // 2
  cropped = resized[top:top + size[0], left:left + size[1]]
  return tf.cast(tf.clip_by_value(tf.round(cropped), 0, 255), tf.uint8)


class Records:
  """Base: `indices` (sorted, int64) are the examples of the split this object reads."""

  def __init__(self, indices: np.ndarray, channels: int):
    self.indices = np.asarray(indices, np.int64)
    self.channels = channels

  def __len__(self) -> int:
    return len(self.indices)

  def subset(self, positions: np.ndarray) -> Records:
    """The records at these positions of this split (e.g. a held-out validation part)."""
    raise NotImplementedError

  def epoch(self, seed: tf.Tensor, epoch: tf.Tensor) -> tf.data.Dataset:
    """(index, record) of one epoch, in an order that depends only on (seed, epoch)."""
    raise NotImplementedError

  def in_order(self) -> tf.data.Dataset:
    """(index, record) of every example once, in stored order."""
    raise NotImplementedError

  def decode(self, index: tf.Tensor, record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(uint8 image [H, W, C] at its stored size, int32 label; -1 when unlabeled)."""
    raise NotImplementedError

  def labels(self) -> np.ndarray | None:
    """Every stored example's label, by index (None: unlabeled): what --classes and
    --examples_per_class choose by, before any image is decoded."""
    raise NotImplementedError

  def relabelled(self, remap: np.ndarray) -> Records:
    """These records with each label l read as remap[l] (--classes)."""
    raise NotImplementedError


class FileRecords(Records):
  """One image file per example (a folder of images): random access by index."""

  def __init__(self, paths, labels, channels: int, indices=None):
    super().__init__(np.arange(len(paths)) if indices is None else indices, channels)
    self.paths = np.asarray(paths, dtype=object)
    self._labels = None if labels is None else np.asarray(labels, np.int32)

  def subset(self, positions):
    return FileRecords(self.paths, self._labels, self.channels, self.indices[positions])

  def labels(self):
    return self._labels

  def relabelled(self, remap):
    return FileRecords(self.paths, remap[self._labels], self.channels, self.indices)

  def _table(self):
    if not hasattr(self, "_tables"):
      # Eager tensors (init_scope), kept for every tf.data function that captures them: a
      # tensor made while one function traces belongs to that graph only.
      with tf.init_scope(), tf.device("/cpu:0"):
        labels = self._labels if self._labels is not None else np.full(len(self.paths), -1)
        self._tables = (tf.constant(self.paths.astype(str)), tf.constant(labels, tf.int32))
    return self._tables

  def epoch(self, seed, epoch):
    picked = tf.gather(tf.constant(self.indices), epoch_order(len(self.indices), seed, epoch))
    return tf.data.Dataset.from_tensor_slices((picked, tf.zeros_like(picked, tf.string)))

  def in_order(self):
    return tf.data.Dataset.from_tensor_slices(
        (self.indices, np.full(len(self.indices), b"", dtype=object)))

  def decode(self, index, record):
    paths, labels = self._table()
    image = decode_image(tf.io.read_file(tf.gather(paths, index)), self.channels)
    return image, tf.gather(labels, index)


class ShardRecords(Records):
  """TFDS record shards (TFRecord files of serialized tf.train.Examples): read in a seeded
  shard order, interleaved, shuffled a seeded window at a time; never held whole."""

  def __init__(self, files, shard_lengths, features, image_key, label_key, channels,
               shuffle_window=10_000, indices=None, cycle_length=16, label_map=None):
    total = int(sum(shard_lengths))
    super().__init__(np.arange(total) if indices is None else indices, channels)
    self.files = [str(f) for f in files]
    self.shard_lengths = [int(n) for n in shard_lengths]
    self.features, self.image_key, self.label_key = features, image_key, label_key
    self.shuffle_window, self.cycle_length = shuffle_window, cycle_length
    self.label_map = label_map  # each stored label's id in this split (--classes)
    self._total = total
    self._stored = None  # every stored label, once read (labels)

  def _with(self, **changed) -> ShardRecords:
    kept = dict(indices=self.indices, label_map=self.label_map)
    other = ShardRecords(self.files, self.shard_lengths, self.features, self.image_key,
                         self.label_key, self.channels, self.shuffle_window,
                         cycle_length=self.cycle_length, **{**kept, **changed})
    other._stored = self._stored  # the same shards: their labels are read once
    return other

  def subset(self, positions):
    return self._with(indices=self.indices[positions])

  def relabelled(self, remap):
    return self._with(label_map=remap if self.label_map is None else remap[self.label_map])

  def labels(self):
    """One pass over every shard, each example's label parsed and its image left as bytes."""
    if self._stored is None:
      every = self._with(indices=np.arange(self._total), label_map=None)
      ds = every.in_order().map(lambda i, r: self._parse(r)[self.label_key],
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      self._stored = np.concatenate(list(ds.batch(4096).as_numpy_iterator())).astype(np.int32)
    if self.label_map is None:
      return self._stored
    return self.label_map[self._stored].astype(np.int32)

  def _shard(self, shard: tf.Tensor) -> tf.data.Dataset:
    """(index, record) of one shard; its first index is the sum of the earlier shards'."""
    offsets = tf.constant(np.cumsum([0] + self.shard_lengths[:-1]), tf.int64)
    files = tf.constant(self.files)
    ds = tf.data.TFRecordDataset(tf.gather(files, shard)).enumerate(tf.gather(offsets, shard))
    if len(self.indices) < self._total:  # a subset: drop the others before any decoding
      keep = np.zeros(self._total, bool)
      keep[self.indices] = True
      keep = tf.constant(keep)
      ds = ds.filter(lambda i, _: tf.gather(keep, i))
    return ds

  def epoch(self, seed, epoch):
    n_files = len(self.files)
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    shards = tf.argsort(tf.random.stateless_uniform([n_files], key))
    ds = tf.data.Dataset.from_tensor_slices(tf.cast(shards, tf.int64)).interleave(
        lambda shard: self._shard(shard), cycle_length=min(self.cycle_length, n_files), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Shuffled a window at a time, each window by a stateless permutation of (seed, epoch,
    # window): the same (seed, epoch) gives the same order, so a position in the stream is
    # enough to resume it (tf.data's shuffle takes no seed computed in the graph).
    def shuffle(window, examples):
      window_key = tf.random.experimental.stateless_fold_in(key, window)
      order = tf.argsort(tf.random.stateless_uniform(tf.shape(examples[0]), window_key))
      return tf.gather(examples[0], order), tf.gather(examples[1], order)
    return ds.batch(self.shuffle_window).enumerate().map(shuffle).unbatch()

  def in_order(self):
    return tf.data.Dataset.range(len(self.files)).flat_map(lambda shard: self._shard(shard))

  def _parse(self, record):
    """A serialized example's features, its image left as encoded bytes."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return self.features.deserialize_example(
        record, decoders={self.image_key: tfds.decode.SkipDecoding()})

  def decode(self, index, record):
    example = self._parse(record)
    image = decode_image(example[self.image_key], self.channels)
    label = tf.cast(example[self.label_key], tf.int32)
    if self.label_map is not None:
      label = tf.gather(tf.constant(self.label_map, tf.int32), label)
    return image, label
