import gzip
import os

import numpy as np
import pytest

import input_pipeline
from input_pipeline import DataError
from datafiles import idx_bytes, write_mnist_dir


@pytest.mark.parametrize("gz", [True, False])
def test_reads_the_four_files_gzipped_or_raw(tmp_path, gz):
  arrays = write_mnist_dir(tmp_path, n_train=12, n_test=5, gz=gz)
  data = input_pipeline.load(f"idx:{tmp_path}")
  assert data.info.image_shape == (28, 28, 1)
  assert data.info.num_classes == 10
  assert dict(data.info.split_sizes) == {"train": 12, "test": 5}
  train = data.splits["train"]
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
  np.testing.assert_array_equal(train.images[..., 0], arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(data.splits["test"].labels, arrays["t10k-labels-idx1-ubyte"])


def test_accepts_dotted_and_prefixed_names(tmp_path):
  write_mnist_dir(tmp_path, gz=False)
  os.rename(tmp_path / "train-images-idx3-ubyte", tmp_path / "train-images.idx3-ubyte")
  os.rename(tmp_path / "t10k-labels-idx1-ubyte", tmp_path / "emnist-digits-t10k-labels-idx1-ubyte")
  assert input_pipeline.load(f"idx:{tmp_path}").info.split_sizes["train"] == 12


def _corrupt(tmp_path, name, data):
  write_mnist_dir(tmp_path, gz=False)
  with open(tmp_path / name, "wb") as f:
    f.write(data)
  return tmp_path / name


def _good_images(n=12):
  return idx_bytes(np.zeros((n, 28, 28), np.uint8))


@pytest.mark.parametrize("name,data,message", [
    ("train-images-idx3-ubyte", idx_bytes(np.zeros(12, np.uint8)), "magic number 0x00000801"),
    ("train-labels-idx1-ubyte", _good_images(), "magic number 0x00000803"),
    ("train-images-idx3-ubyte", _good_images()[:-10], "truncated"),
    ("train-images-idx3-ubyte", _good_images()[:9], "truncated"),
    ("train-images-idx3-ubyte", b"\0\0", "truncated"),
    ("train-images-idx3-ubyte", _good_images() + b"xx", "bytes after the data"),
    ("train-images-idx3-ubyte", _good_images(n=11), "11 images but"),
    ("train-images-idx3-ubyte", b"\x1f\x8b\x08\0garbage", "not a valid gzip"),
    ("train-labels-idx1-ubyte", gzip.compress(idx_bytes(np.full(12, 10, np.uint8)), mtime=0),
     "label 10 at item 0"),
])
def test_bad_files_name_the_file_and_problem(tmp_path, name, data, message):
  path = _corrupt(tmp_path, name, data)
  with pytest.raises(DataError, match=message) as e:
    input_pipeline.load(f"idx:{tmp_path}")
  assert str(path) in str(e.value)


def test_missing_file_and_directory(tmp_path):
  write_mnist_dir(tmp_path)
  os.remove(tmp_path / "t10k-images-idx3-ubyte.gz")
  with pytest.raises(DataError, match="no t10k-images-idx3-ubyte"):
    input_pipeline.load(f"idx:{tmp_path}")
  with pytest.raises(DataError, match="no such directory"):
    input_pipeline.load(f"idx:{tmp_path}/nowhere")
  # A path in a message can be pasted into a shell: quoted.
  with pytest.raises(DataError) as error:
    input_pipeline.load(f"idx:{tmp_path}/no where")
  assert str(error.value) == f"'idx:{tmp_path}/no where': no such directory"


def test_more_classes_with_num_classes(tmp_path):
  write_mnist_dir(tmp_path, classes=26)
  with pytest.raises(DataError, match=r"outside \[0, 10\).*--num_classes"):
    input_pipeline.load(f"idx:{tmp_path}")
  assert input_pipeline.load(f"idx:{tmp_path}", num_classes=26).info.num_classes == 26
