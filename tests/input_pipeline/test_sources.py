import numpy as np
import pytest
import tensorflow_datasets as tfds

import input_pipeline
from input_pipeline import DataError, sources, specs
from input_pipeline.readers import tfds_source


@pytest.mark.parametrize("spec,expected", [
    ("mnist", ("tfds", "mnist")),
    ("tfds:fashion_mnist", ("tfds", "fashion_mnist")),
    ("idx:/data/mnist", ("idx", "/data/mnist")),
    ("csv:C:/x/train.csv", ("csv", "C:/x/train.csv")),
    ("synthetic", ("synthetic", "")),
    ("synthetic:classes=3", ("synthetic", "classes=3")),
])
def test_parse_spec(spec, expected):
  assert specs.parse_spec(spec) == expected


@pytest.mark.parametrize("spec,message", [
    ("ftp:x", "unknown data source prefix 'ftp:'"),
    ("idx:", "names no directory"),
    ("Fashion MNIST", "not a TFDS dataset name"),
    ("synthetic:colours=3", "unknown option 'colours'"),
    ("synthetic:shape=28x28", "shape HxWxC"),
    ("synthetic:train=many", "must be integers"),
])
def test_bad_specs(spec, message):
  with pytest.raises(DataError, match=message):
    input_pipeline.load(spec)


def test_synthetic_shape_classes_sizes_and_seed():
  spec = "synthetic:shape=8x6x3,classes=4,train=50,test=7"
  a, b = input_pipeline.load(spec), input_pipeline.load(spec)
  assert a.info.image_shape == (8, 6, 3) and a.info.num_classes == 4
  assert dict(a.info.split_sizes) == {"train": 50, "test": 7}
  assert a.splits["train"].images.dtype == np.uint8
  assert set(np.unique(a.splits["train"].labels)) <= {0, 1, 2, 3}
  np.testing.assert_array_equal(a.splits["train"].images, b.splits["train"].images)
  c = input_pipeline.load(spec + ",seed=1")
  assert not np.array_equal(a.splits["train"].images, c.splits["train"].images)


def test_validation_split_is_seeded_disjoint_and_complete():
  spec = "synthetic:shape=2x2x1,train=100,test=5"
  full = input_pipeline.load(spec).splits["train"]
  a = input_pipeline.load(spec, validation_split=0.2, seed=3)
  b = input_pipeline.load(spec, validation_split=0.2, seed=3)
  c = input_pipeline.load(spec, validation_split=0.2, seed=4)
  assert dict(a.info.split_sizes) == {"train": 80, "validation": 20, "test": 5}
  np.testing.assert_array_equal(a.splits["validation"].images, b.splits["validation"].images)
  assert not np.array_equal(a.splits["validation"].images, c.splits["validation"].images)
  # Together the two parts are exactly the original examples (as multisets of rows).
  rows = lambda s: sorted(map(bytes, np.concatenate(
      [s.images.reshape(len(s), -1), s.labels[:, None].astype(np.uint8)], 1)))
  joined = input_pipeline.Split(
      np.concatenate([a.splits["train"].images, a.splits["validation"].images]),
      np.concatenate([a.splits["train"].labels, a.splits["validation"].labels]))
  assert rows(joined) == rows(full)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 0.001])
def test_bad_validation_split(fraction):
  with pytest.raises(DataError, match="--validation_split"):
    input_pipeline.load("synthetic:train=10,test=2", validation_split=fraction)


@pytest.fixture
def offline_ok(monkeypatch):
  # mock_data replaces the download; the fast no-network check must not refuse first.
  monkeypatch.setattr(tfds_source, "_host_resolves", lambda url: True)


@pytest.mark.parametrize("spec", ["mnist", "tfds:fashion_mnist"])
def test_tfds_through_mock_data(tmp_path, offline_ok, spec):
  with tfds.testing.mock_data(num_examples=9):
    data = input_pipeline.load(spec, data_dir=str(tmp_path), validation_split=1 / 3)
  assert data.info.image_shape == (28, 28, 1) and data.info.num_classes == 10
  assert dict(data.info.split_sizes) == {"train": 6, "validation": 3, "test": 9}
  assert data.splits["test"].images.dtype == np.uint8
  assert data.splits["test"].labels.dtype == np.int64


def test_tfds_other_image_dataset(tmp_path, offline_ok):
  with tfds.testing.mock_data(num_examples=4):
    data = input_pipeline.load("cifar10", data_dir=str(tmp_path))
  assert data.info.image_shape == (32, 32, 3)


def test_tfds_errors(tmp_path):
  with pytest.raises(DataError, match="unknown TFDS dataset 'mnits'.*did you mean.*mnist"):
    input_pipeline.load("mnits", data_dir=str(tmp_path))
  with pytest.raises(DataError, match="not an image-classification dataset"):
    input_pipeline.load("imdb_reviews", data_dir=str(tmp_path))
  with pytest.raises(DataError, match="has 10 classes"):
    input_pipeline.load("mnist", data_dir=str(tmp_path), num_classes=26)


def test_tfds_without_network_fails_fast_naming_the_files(tmp_path):
  # conftest's no_network fixture makes the host lookup fail, as on an air-gapped VM.
  with pytest.raises(DataError, match="no network to download it: .*put .*train-images-idx3-ubyte.gz") as e:
    input_pipeline.load("fashion_mnist", data_dir=str(tmp_path))
  assert "python -m trainer.prepare" in str(e.value) and f"`make data DATA_DIR={tmp_path}`" in str(e.value)


def test_each_dataset_has_its_own_manual_files(tmp_path):
  # Fashion-MNIST's files, under the names MNIST registers too, as input_pipeline.readers.prepare
  # places them: MNIST must not take them for its own.
  fashion = tmp_path / "downloads" / "manual" / "fashion_mnist"
  fashion.mkdir(parents=True)
  for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    (fashion / name).write_bytes(b"fashion")
  with pytest.raises(DataError, match=r"no network to download it: .*put .* in .*downloads/manual/mnist, or use idx") as e:
    input_pipeline.load("mnist", data_dir=str(tmp_path))
  assert "remove" not in str(e.value) and "delete" not in str(e.value)
  # A file shown to be wrong is named, with what it is not.
  mnist = tmp_path / "downloads" / "manual" / "mnist"
  mnist.mkdir()
  (mnist / "train-images-idx3-ubyte.gz").write_bytes(b"fashion")
  with pytest.raises(DataError, match=r"mnist/train-images-idx3-ubyte.gz is not mnist's "
                     r"train-images-idx3-ubyte.gz \(its sha256 differs"):
    input_pipeline.load("mnist", data_dir=str(tmp_path))
