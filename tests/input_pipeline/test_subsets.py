"""--classes and --examples_per_class (input_pipeline/subsets.py): some classes, relabelled
in the order given, and a seeded few per class of train, on in-memory data, a streamed
folder and streamed TFDS shards."""

import numpy as np
import pytest

import input_pipeline
from datafiles import write_image_folder, write_tiny_tfds
from input_pipeline import DataError
from input_pipeline.stream import StreamSplit, materialize

SYNTHETIC = "synthetic:shape=4x4x1,classes=5,train=300,test=100"


def test_kept_classes_are_relabelled_in_the_order_given():
  whole = input_pipeline.load(SYNTHETIC)
  cut = input_pipeline.load(SYNTHETIC, classes=(3, 1))
  assert cut.info.num_classes == 2
  for name in ("train", "test"):
    old, new = whole.splits[name], cut.splits[name]
    kept = np.isin(old.labels, (3, 1))
    np.testing.assert_array_equal(new.images, old.images[kept])
    np.testing.assert_array_equal(new.labels, np.where(old.labels[kept] == 3, 0, 1))


def test_a_seeded_few_per_class_of_train_after_validation_is_held_out():
  def load(seed):
    return input_pipeline.load(SYNTHETIC, classes=(3, 1), examples_per_class=5,
                               validation_split=0.2, seed=seed)
  data, again, other = load(1), load(1), load(2)
  train = data.splits["train"]
  assert np.bincount(train.labels).tolist() == [5, 5]
  np.testing.assert_array_equal(train.images, again.splits["train"].images)
  assert not np.array_equal(train.images, other.splits["train"].images)
  # The validation split is the --validation_split of the kept classes, not cut to N.
  kept = int(np.isin(input_pipeline.load(SYNTHETIC).splits["train"].labels, (3, 1)).sum())
  assert len(data.splits["validation"]) == round(0.2 * kept)
  assert len(data.splits["test"]) == len(again.splits["test"]) > 10


def test_a_streamed_folder_is_cut_before_any_image_is_read(tmp_path):
  write_image_folder(tmp_path, per_split=(("train", 4), ("test", 2)),
                     classes=("cat", "dog", "fox"))
  data = input_pipeline.load(f"folder:{tmp_path}", image_size=(8, 8), pipeline="stream",
                             classes=(2, 0), examples_per_class=3)
  assert data.info.class_names == ("fox", "cat") and data.info.num_classes == 2
  train = data.splits["train"]
  assert isinstance(train, StreamSplit) and len(train) == 6
  records = train.records
  assert sorted(records.labels()[records.indices].tolist()) == [0, 0, 0, 1, 1, 1]
  # Each kept file keeps its class, under its new id: fox files are 0, cat files 1.
  for i in records.indices:
    assert records.labels()[i] == (0 if "/fox/" in str(records.paths[i]) else 1)
  assert len(data.splits["test"]) == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(classes=(1, 7)), "has classes 0 to 4; 7 is not one of them"),
    (dict(examples_per_class=500), "class 0 of synthetic:shape=4x4x1,classes=5,train=300,"
                                   "test=100's train split has"),
])
def test_what_the_data_cannot_give_is_one_line_with_the_fix(kwargs, message):
  with pytest.raises(DataError, match=".*") as e:
    input_pipeline.load(SYNTHETIC, **kwargs)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_a_streamed_tfds_dataset_is_cut_as_its_in_memory_twin(tmp_path):
  # Its shards are read once for their labels; the kept examples decode as in memory.
  name = write_tiny_tfds(tmp_path)
  def load(pipeline):
    return input_pipeline.load(name, data_dir=str(tmp_path), image_size=(6, 6),
                               pipeline=pipeline, classes=(2, 0), examples_per_class=4)
  streamed, in_memory = load("stream"), load("in_memory")
  assert streamed.info.class_names == in_memory.info.class_names == ("blue", "red")
  for name_ in ("train", "test"):
    split = streamed.splits[name_]
    assert isinstance(split, StreamSplit)
    decoded = materialize(split, name_)
    np.testing.assert_array_equal(decoded.labels, in_memory.splits[name_].labels)
    np.testing.assert_array_equal(decoded.images, in_memory.splits[name_].images)
  assert np.bincount(in_memory.splits["train"].labels).tolist() == [4, 4]
