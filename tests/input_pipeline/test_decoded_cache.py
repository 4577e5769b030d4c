"""TFDS splits decoded once, then read back from data_dir's decoded cache, checked."""

import os

import numpy as np
import pytest

from input_pipeline.readers import decoded_cache, tfds_source
from datafiles import write_tiny_tfds

SIZE = (14, 12)


@pytest.fixture
def tiny(tmp_path):
  return write_tiny_tfds(tmp_path / "tfds"), str(tmp_path / "tfds")


def load(name, data_dir, image_size=SIZE):
  splits, _ = tfds_source.load(name, data_dir, None, None, image_size)
  return {k: (v.images, v.labels) for k, v in splits.items()}


def cache_files(data_dir):
  return sorted(os.path.relpath(os.path.join(d, f), data_dir)
                for d, _, files in os.walk(data_dir) for f in files
                if tfds_source.CACHE_DIR in d)


def assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k][0], b[k][0])
    np.testing.assert_array_equal(a[k][1], b[k][1])


def never_decode(monkeypatch):
  def fail(*args):
    raise AssertionError("decoded again")
  monkeypatch.setattr(tfds_source, "_to_numpy", fail)


def test_a_second_load_reads_the_cache_not_the_shards(tiny, monkeypatch):
  name, data_dir = tiny
  first = load(name, data_dir)
  assert [os.path.basename(f) for f in cache_files(data_dir)] == ["test_14x12.npz",
                                                                  "train_14x12.npz"]
  never_decode(monkeypatch)
  assert_same(load(name, data_dir), first)
  assert first["train"][0].shape == (48, 14, 12, 3)


def test_another_image_size_is_another_cache_entry(tiny):
  name, data_dir = tiny
  small = load(name, data_dir, (8, 8))
  assert load(name, data_dir)["train"][0].shape[1:3] == SIZE
  assert_same(load(name, data_dir, (8, 8)), small)
  assert len(cache_files(data_dir)) == 4


@pytest.mark.parametrize("damage", ["flip_a_pixel", "truncate", "other_shards"])
def test_a_damaged_or_stale_cache_is_decoded_again_and_replaced(tiny, damage, monkeypatch):
  name, data_dir = tiny
  reference = load(name, data_dir)
  path = os.path.join(data_dir, [f for f in cache_files(data_dir) if "train" in f][0])
  if damage == "flip_a_pixel":  # the stored digest no longer matches the arrays
    with np.load(path) as stored:
      parts = {k: stored[k] for k in stored.files}
    parts["images"][3, 2, 1, 0] ^= 1
    with open(path, "wb") as f:
      np.savez(f, **parts)
  elif damage == "truncate":
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  else:  # the key names shards of another size: rebuilt data_dir
    with np.load(path) as stored:
      parts = {k: stored[k] for k in stored.files}
    parts["key"] = np.array(str(parts["key"]).replace('"train', '"old-train'))
    with open(path, "wb") as f:
      np.savez(f, **parts)
  assert_same(load(name, data_dir), reference)
  never_decode(monkeypatch)  # the cache was written again, whole
  assert_same(load(name, data_dir), reference)


def test_an_unwritable_cache_directory_loads_without_a_cache(tiny):
  name, data_dir = tiny
  cache_dir = os.path.dirname(tfds_source._cache_path(  # pylint: disable=protected-access
      tfds_source._builder(name, data_dir), "train", SIZE))  # pylint: disable=protected-access
  with open(cache_dir, "w") as f:  # a file where the directory would go: makedirs fails
    f.write("not a directory")
  assert load(name, data_dir)["train"][0].shape == (48, 14, 12, 3)
  assert os.listdir(os.path.dirname(cache_dir)).count(os.path.basename(cache_dir)) == 1
  assert not [f for f in os.listdir(os.path.dirname(cache_dir)) if "partial" in f]


def test_the_cache_on_a_non_local_filesystem(tmp_path, monkeypatch):
  name = write_tiny_tfds(tmp_path / "tfds")
  builder = tfds_source._builder(name, str(tmp_path / "tfds"))  # pylint: disable=protected-access
  key = tfds_source._cache_key(builder, "train", SIZE)  # pylint: disable=protected-access
  images = np.arange(2 * 14 * 12 * 3, dtype=np.uint8).reshape(2, 14, 12, 3)
  labels = np.array([1, 2], np.int64)
  path = "ram://tapeloop-cache-test/fashion/train.npz"
  decoded_cache.write(path, key, images, labels)
  got = decoded_cache.read(path, key)
  np.testing.assert_array_equal(got[0], images)
  np.testing.assert_array_equal(got[1], labels)
  assert decoded_cache.read(path, key.replace("train", "test")) is None
