"""Streams read from files: folders of images and TFDS record shards, order, resume,
per-worker parts, eval coverage, and the in-memory/stream choice."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

import input_pipeline
from datafiles import tiny_tfds_builder, write_image_folder, write_tiny_tfds
from input_pipeline import sources, specs
from input_pipeline.data import DataError
from input_pipeline.in_memory import IndexStream
from input_pipeline.records import ShardRecords, fit
from input_pipeline.stream import (StreamSplit, eval_stream, examples_at, materialize,
                                   train_stream)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  root = tmp_path_factory.mktemp("photos")
  return str(root), write_image_folder(root)


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  return write_tiny_tfds(data_dir), str(data_dir)


def batches(ds, n):
  return [tuple(t.numpy() for t in b) for b in ds.take(n)]


def test_folder_classes_labels_and_sizes(photos):
  root, written = photos
  data = input_pipeline.load(f"folder:{root}", image_size=(16, 16), pipeline="stream")
  assert data.pipeline == "stream"
  assert data.info.class_names == ("cat", "dog", "fox") and data.info.num_classes == 3
  assert data.info.image_shape == (16, 16, 3) and data.info.split_sizes == {"train": 24,
                                                                            "test": 9}
  records = data.splits["train"].records
  assert [(p, int(l)) for p, l in zip(records.paths, records.labels())] == written["train"]


def test_folder_of_varying_sizes_needs_image_size(photos):
  with pytest.raises(DataError, match=r"vary in size \(20x24 to 40x28\): pass --image_size"):
    input_pipeline.load(f"folder:{photos[0]}")


def test_folder_one_size_keeps_it(tmp_path):
  write_image_folder(tmp_path, sizes=((10, 14),), channels=1)
  data = input_pipeline.load(f"folder:{tmp_path}")
  assert data.info.image_shape == (10, 14, 1) and data.pipeline == "in_memory"


def test_stream_order_is_the_in_memory_order_and_resumes(photos):
  """The stream's batch k is the in-memory pipeline's batch k, across epochs; starting at
  step k gives batches k, k+1, ..."""
  data = input_pipeline.load(f"folder:{photos[0]}", image_size=(16, 16), pipeline="stream")
  split = data.splits["train"]
  memory = materialize(split, "train")
  indices = IndexStream(len(split), 5, seed=3).take(12)  # 60 examples: 2.5 epochs
  streamed = batches(train_stream(split, global_batch_size=5, seed=3), 12)
  for k, (images, labels) in enumerate(streamed):
    np.testing.assert_array_equal(images, memory.images[indices[k]])
    np.testing.assert_array_equal(labels, memory.labels[indices[k]])
  resumed = batches(train_stream(split, global_batch_size=5, seed=3, start_step=7), 5)
  for k, (images, labels) in enumerate(resumed):
    np.testing.assert_array_equal(images, streamed[7 + k][0])
    np.testing.assert_array_equal(labels, streamed[7 + k][1])
  other_seed = batches(train_stream(split, global_batch_size=5, seed=4), 1)
  assert not np.array_equal(other_seed[0][1], streamed[0][1]) or not np.array_equal(
      other_seed[0][0], streamed[0][0])


def test_each_input_pipeline_reads_its_part_of_the_global_batch(photos):
  data = input_pipeline.load(f"folder:{photos[0]}", image_size=(8, 8), pipeline="stream")
  split = data.splits["train"]
  whole = batches(train_stream(split, global_batch_size=8, seed=0, start_step=2), 3)
  # Two workers with 2 replicas each: per-replica batches of 2; worker p holds examples
  # [4p, 4p + 4) of each global batch, in its replicas' order.
  parts = [batches(train_stream(split, global_batch_size=8, seed=0, start_step=2,
                                pipeline=p, pipelines=2, batch_size=2), 6) for p in (0, 1)]
  for k in range(3):
    rebuilt = np.concatenate([parts[0][2 * k][1], parts[0][2 * k + 1][1],
                              parts[1][2 * k][1], parts[1][2 * k + 1][1]])
    np.testing.assert_array_equal(rebuilt, whole[k][1])


def test_eval_stream_covers_each_example_once(photos):
  data = input_pipeline.load(f"folder:{photos[0]}", image_size=(8, 8), pipeline="stream")
  split = data.splits["test"]  # 9 examples, batches of 4: 3 padding
  out = batches(eval_stream(split, global_batch_size=4), 10)
  images, labels, weights, index = (np.concatenate(t) for t in zip(*out))
  assert len(out) == 3 and images.dtype == np.uint8
  np.testing.assert_array_equal(index, list(range(9)) + [-1] * 3)
  np.testing.assert_array_equal(weights, [1] * 9 + [0] * 3)
  np.testing.assert_array_equal(labels[:9], split.records.labels())
  memory = materialize(split, "test")
  np.testing.assert_array_equal(images[:9], memory.images)
  np.testing.assert_array_equal(examples_at(split, np.array([7, 2])), memory.images[[7, 2]])


def test_validation_split_holds_out_the_same_examples_in_memory_and_streamed(photos):
  kwargs = dict(image_size=(8, 8), validation_split=0.25, seed=5)
  streamed = input_pipeline.load(f"folder:{photos[0]}", pipeline="stream", **kwargs)
  memory = input_pipeline.load(f"folder:{photos[0]}", pipeline="in_memory", **kwargs)
  assert streamed.info.split_sizes == memory.info.split_sizes == {
      "train": 18, "validation": 6, "test": 9}
  for name in ("train", "validation"):
    np.testing.assert_array_equal(materialize(streamed.splits[name], name).images,
                                  memory.splits[name].images)


def test_broken_file_is_named_or_skipped_and_counted(tmp_path, caplog):
  write_image_folder(tmp_path, sizes=((12, 12),))
  bad = os.path.join(str(tmp_path), "train", "dog", "zz_broken.png")
  with open(bad, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + b"not a png" * 20)
  with open(os.path.join(str(tmp_path), "train", "dog", "notes.txt"), "w") as f:
    f.write("not an image: ignored by extension")
  with pytest.raises(DataError, match=rf"{bad} is not a readable image .*--skip_bad_images"):
    input_pipeline.load(f"folder:{tmp_path}")
  with caplog.at_level(logging.INFO, logger="absl"):
    data = input_pipeline.load(f"folder:{tmp_path}", skip_bad_images=True, pipeline="stream")
  assert data.info.split_sizes["train"] == 24
  assert "skipping 1 unreadable image(s) (--skip_bad_images)" in caplog.text and bad in caplog.text
  assert bad not in set(data.splits["train"].records.paths)


@pytest.mark.parametrize("layout, message", [
    # The root has a space: each path is quoted, so that it can be pasted into a shell.
    ("no_train", "^'folder:.*/my images' needs '.*/my images/train'/<class>/"),
    ("one_class", "^'.*/my images/train' has 1 class folder"),
    ("stray_test_class", "^'.*/my images/test' has classes owl that '.*/my images/train' has "
     "not"),
    ("empty_class", r"^'.*/my images/train/owl' has no image files \(.jpg"),
    ("own_validation", r"has its own validation split \(9 examples\): drop --validation_split"),
])
def test_folder_layout_errors(tmp_path, layout, message):
  tmp_path = tmp_path / "my images"
  write_image_folder(tmp_path, sizes=((12, 12),))
  if layout == "no_train":
    os.rename(tmp_path / "train", tmp_path / "training")
  elif layout == "one_class":
    for name in ("dog", "fox"):
      os.rename(tmp_path / "train" / name, tmp_path / name)
  elif layout == "stray_test_class":
    os.rename(tmp_path / "test" / "fox", tmp_path / "test" / "owl")
  elif layout == "empty_class":
    os.makedirs(tmp_path / "train" / "owl")
  else:
    os.rename(tmp_path / "test", tmp_path / "validation")
  with pytest.raises(DataError, match=message):
    input_pipeline.load(f"folder:{tmp_path}", validation_split=0.25)


def test_hidden_entries_are_neither_classes_nor_images(tmp_path):
  write_image_folder(tmp_path, per_split=(("train", 2),), sizes=((12, 12),))
  os.makedirs(tmp_path / "train" / ".ipynb_checkpoints")
  (tmp_path / "train" / "cat" / "._000.png").write_bytes(b"macOS resource fork, not a PNG")
  data = input_pipeline.load(f"folder:{tmp_path}")
  assert data.info.class_names == ("cat", "dog", "fox") and data.info.split_sizes == {
      "train": 6}


def test_auto_streams_what_exceeds_the_memory_budget(photos, caplog):
  spec = f"folder:{photos[0]}"
  with caplog.at_level(logging.INFO, logger="absl"):
    small = input_pipeline.load(spec, image_size=(8, 8), pipeline="auto")
    large = input_pipeline.load(spec, image_size=(8, 8), pipeline="auto",
                                memory_budget_gb=1e-6)  # 1 kB < 33 * 192 bytes
  assert small.pipeline == "in_memory" and large.pipeline == "stream"
  assert "fits the memory budget" in small.reason
  assert "more than the memory budget of 0.0 GB (--memory_budget_gb): streamed" in large.reason
  assert f"input pipeline: stream, {large.reason}" in caplog.text
  with pytest.raises(DataError, match="--pipeline=stream reads TFDS or folder"):
    input_pipeline.load("synthetic:train=8,test=4", pipeline="stream")


def test_auto_decides_on_the_size_of_a_tfds_dataset_prepared_by_this_load(tmp_path):
  # Not prepared yet: its size was unknown, and unknown was taken for "fits in memory".
  name = tiny_tfds_builder(fixed_size=True).name
  data = input_pipeline.load(name, data_dir=str(tmp_path), pipeline="auto",
                             memory_budget_gb=1e-6)  # 1 kB < 61 x 196 bytes
  assert data.pipeline == "stream" and "more than the memory budget" in data.reason


def test_fit_resizes_to_cover_and_crops_the_centre():
  # 4x8, left half 0, right half 200: fitted to 4x4, the centre (columns 2..5) of the
  # resized image keeps two columns of each half.
  image = np.zeros((4, 8, 1), np.uint8)
  image[:, 4:] = 200
  out = fit(tf.constant(image), (4, 4)).numpy()
  assert out.shape == (4, 4, 1)
  np.testing.assert_array_equal(out[:, :2, 0], 0)
  np.testing.assert_array_equal(out[:, 2:, 0], 200)
  assert fit(tf.zeros((30, 10, 3), tf.uint8), (8, 6)).shape == (8, 6, 3)


def test_tfds_shards_stream_seeded_and_complete(tiny_tfds, tmp_path):
  name, data_dir = tiny_tfds
  data = input_pipeline.load(name, data_dir=data_dir, image_size=(10, 10), pipeline="stream")
  split = data.splits["train"]
  assert isinstance(split, StreamSplit) and len(split) == 48
  assert data.info.class_names == ("red", "green", "blue")
  # Three shards of the same records: every epoch is a permutation of all 48 indices,
  # a function of (seed, epoch), and epochs differ.
  records = split.records
  shard_files = [str(tmp_path / f"shard-{i}") for i in range(3)]
  serialized = [r.numpy() for _, r in records.in_order()]
  for i, path in enumerate(shard_files):
    with tf.io.TFRecordWriter(path) as w:
      for r in serialized[16 * i:16 * (i + 1)]:
        w.write(r)
  sharded = ShardRecords(shard_files, [16] * 3, records.features, records.image_key,
                         records.label_key, 3, shuffle_window=10)

  def order(r, seed, epoch):
    return [int(i) for i, _ in r.epoch(tf.constant(seed, tf.int64), tf.constant(epoch, tf.int64))]
  first = order(sharded, 1, 0)
  assert sorted(first) == list(range(48)) and first != list(range(48))
  assert order(sharded, 1, 0) == first and order(sharded, 1, 1) != first
  assert order(sharded, 2, 0) != first
  # The stream over shards resumes at a step: the batches from there on, without change.
  stream = StreamSplit(sharded, (10, 10, 3), labeled=True, resize=True)
  whole = batches(train_stream(stream, global_batch_size=7, seed=1), 16)  # 2.3 epochs
  resumed = batches(train_stream(stream, global_batch_size=7, seed=1, start_step=9), 7)
  for a, b in zip(resumed, whole[9:]):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
  held = sharded.subset(np.array([3, 20, 40]))
  assert sorted(order(held, 1, 0)) == [3, 20, 40]
  assert [int(i) for i, _ in held.in_order()] == [3, 20, 40]
  # Decoded records are the dataset's images, fitted.
  memory = input_pipeline.load(name, data_dir=data_dir, image_size=(10, 10),
                               pipeline="in_memory")
  np.testing.assert_array_equal(materialize(split, "train").images,
                                memory.splits["train"].images)
  np.testing.assert_array_equal(materialize(split, "train").labels,
                                memory.splits["train"].labels)


def test_tfds_of_varying_size_needs_image_size(tiny_tfds):
  name, data_dir = tiny_tfds
  with pytest.raises(DataError, match="varying size .*: pass --image_size=HxW"):
    input_pipeline.load(name, data_dir=data_dir)


def test_choose_pipeline():
  assert sources.choose_pipeline("auto", 10, 100)[0] == "in_memory"
  assert sources.choose_pipeline("auto", 101, 100)[0] == "stream"
  assert sources.choose_pipeline("auto", None, 100)[0] == "in_memory"
  assert sources.choose_pipeline("stream", 1, 100) == ("stream", "--pipeline=stream (0.00 GB "
                                                       "decoded)")
  assert specs.parse_image_size("64") == (64, 64)
  assert specs.parse_image_size("64x48") == (64, 48)
  with pytest.raises(DataError, match="--image_size=64x: give H or HxW"):
    specs.parse_image_size("64x")
