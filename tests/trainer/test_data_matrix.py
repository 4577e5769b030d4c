"""Every flag that transforms data, over every source and input pipeline: defects hid where
a flag had been tried on one source only (--image_size crashed on every fixed-size source
held in memory)."""

import os

import numpy as np
import tensorflow as tf
import pytest

import input_pipeline
from datafiles import write_image_folder, write_kaggle_csv, write_mnist_dir, write_tiny_tfds
from flag_helpers import parse
from trainer.run import train

# (source, pipeline): every source with each way it can be loaded (tf_data loads as
# in_memory does; it differs in training, below).
ROUTES = [("synthetic", "in_memory"), ("idx", "in_memory"), ("csv", "in_memory"),
          ("tfds", "in_memory"), ("tfds", "stream"), ("folder", "in_memory"),
          ("folder", "stream")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """--dataset and --data_dir of each source; all fixed-size (the path that crashed) but
  the folder, whose images vary in size."""
  root = tmp_path_factory.mktemp("sources")
  write_mnist_dir(root / "idx", n_train=24, n_test=8, shape=(14, 14), classes=3)
  rng = np.random.default_rng(0)
  os.makedirs(root / "csv")
  write_kaggle_csv(root / "csv" / "train.csv", rng.integers(0, 256, (24, 28, 28)),
                   rng.integers(0, 3, 24))
  write_image_folder(root / "folder", per_split=(("train", 8), ("test", 3)))
  tfds_dir = root / "tfds"
  return {"synthetic": ("synthetic:shape=14x14x1,classes=3,train=24,test=8", None),
          "idx": (f"idx:{root / 'idx'}", None), "csv": (f"csv:{root / 'csv'}", None),
          "tfds": (write_tiny_tfds(tfds_dir, fixed_size=True), str(tfds_dir)),
          "folder": (f"folder:{root / 'folder'}", None)}


@pytest.mark.parametrize("source,pipeline", ROUTES)
def test_image_size_and_validation_split_on_every_source(sources, source, pipeline):
  spec, data_dir = sources[source]
  data = input_pipeline.load(spec, data_dir=data_dir, image_size=(10, 12),
                             validation_split=0.25, pipeline=pipeline,
                             num_classes=3 if source in ("idx", "csv") else None)
  assert data.pipeline == pipeline
  assert data.info.image_shape[:2] == (10, 12)
  sizes = dict(data.info.split_sizes)
  assert sizes["validation"] > 0 and sizes["train"] > sizes["validation"]
  for name, split in data.splits.items():
    images = input_pipeline.stream.materialize(split, name).images if hasattr(
        split, "records") else split.images
    assert images.shape[1:3] == (10, 12) and images.dtype == np.uint8, name


# Augmentation and mixing run after the input pipeline (in the training graph, or in
# tf.data's map for tf_data): one run per pipeline, over sources of fixed and varying size.
@pytest.mark.parametrize("source,pipeline", [("idx", "in_memory"), ("synthetic", "tf_data"),
                                             ("tfds", "stream"), ("folder", "in_memory")])
def test_training_with_every_data_flag_on_every_source(sources, tmp_path, source, pipeline):
  """Resize, augmentation, mixing and a held-out split together, two steps of a tiny MLP."""
  spec, data_dir = sources[source]
  args = ["--model=mlp", "--hidden_units=4", f"--dataset={spec}", "--image_size=10x12",
          "--augment=crop=2,erase", "--mixup=0.2", "--cutmix=1.0", "--validation_split=0.25",
          f"--pipeline={pipeline}", "--batch_size=4", "--train_steps=2", "--steps_per_loop=2",
          "--noeval_images", f"--model_dir={tmp_path}"]
  if data_dir:
    args.append(f"--data_dir={data_dir}")
  if source in ("idx", "csv"):
    args.append("--num_classes=3")
  results = train.train_and_evaluate(parse(*args))
  assert results["global_step"] == 2 and results["pipeline"] == pipeline
  assert np.isfinite(results["validation_loss"])


@pytest.mark.parametrize("source", ["idx", "csv", "folder"])
def test_files_in_a_bucket_read_as_local_ones(sources, source):
  """Paths go through tf.io.gfile: ram:// stands in for gs:// (os.path and open() would
  see no such directory)."""
  local = sources[source][0].split(":", 1)[1]
  bucket = f"ram://data_{source}"
  for top, _, names in tf.io.gfile.walk(local):
    for name in names:
      target = os.path.join(bucket, os.path.relpath(os.path.join(top, name), local))
      tf.io.gfile.makedirs(os.path.dirname(target))
      tf.io.gfile.copy(os.path.join(top, name), target, overwrite=True)
  num_classes = 3 if source != "folder" else None
  kwargs = dict(num_classes=num_classes, image_size=(10, 10) if source == "folder" else None)
  remote = input_pipeline.load(f"{source}:{bucket}", **kwargs)
  expected = input_pipeline.load(sources[source][0], **kwargs)
  for name, split in expected.splits.items():
    np.testing.assert_array_equal(remote.splits[name].images, split.images)
    np.testing.assert_array_equal(remote.splits[name].labels, split.labels)
