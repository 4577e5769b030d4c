import numpy as np
import pytest

import input_pipeline
from input_pipeline import DataError
from datafiles import write_kaggle_csv


def _arrays(n=6, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, n)


def test_train_csv_is_the_labeled_train_split(tmp_path):
  images, labels = _arrays()
  write_kaggle_csv(tmp_path / "train.csv", images, labels)
  data = input_pipeline.load(f"csv:{tmp_path / 'train.csv'}")
  assert data.info.image_shape == (28, 28, 1) and list(data.splits) == ["train"]
  np.testing.assert_array_equal(data.splits["train"].images, images)
  np.testing.assert_array_equal(data.splits["train"].labels, labels)


def test_test_csv_is_unlabeled_and_a_directory_gives_both(tmp_path):
  images, labels = _arrays()
  write_kaggle_csv(tmp_path / "train.csv", images, labels)
  write_kaggle_csv(tmp_path / "test.csv", images[:4])
  test = input_pipeline.load(f"csv:{tmp_path / 'test.csv'}").splits["test"]
  assert test.labels is None and len(test) == 4
  both = input_pipeline.load(f"csv:{tmp_path}")
  assert dict(both.info.split_sizes) == {"train": 6, "test": 4}


def test_single_row_file(tmp_path):
  images, labels = _arrays(n=1)
  write_kaggle_csv(tmp_path / "one.csv", images, labels)
  assert len(input_pipeline.load(f"csv:{tmp_path / 'one.csv'}").splits["train"]) == 1


HEADER = "label," + ",".join(f"pixel{i}" for i in range(4)) + "\n"


@pytest.mark.parametrize("text,message", [
    ("", "is empty"),
    ("a,b,c\n1,2,3\n", "the header must be"),
    ("label," + ",".join(f"pixel{i}" for i in range(5)) + "\n1,0,0,0,0,0\n", "not a square"),
    (HEADER, "no rows"),
    (HEADER + "1,0,0,0,0\n2,0,0,0\n", "line 3 has 4 columns, the header has 5"),
    (HEADER + "1,0,0,0,0\n2,0,x,0,0\n", "line 3 column 3: 'x' is not an integer"),
    (HEADER + "1,0,0,0,1.5\n", "line 2 column 5: '1.5'"),
    (HEADER + "1,0,0,0,0\n1,0,256,0,0\n", "line 3 pixel1: pixel value 256"),
    (HEADER + "1,0,0,0,-1\n", "pixel3: pixel value -1"),
    (HEADER + "1,0,0,0,0\n10,0,0,0,0\n", r"label 10 at line 3 .* outside \[0, 10\)"),
    (HEADER + "-1,0,0,0,0\n", "label -1"),
    (HEADER + "1,0,0,0,99999999999999999999999\n", "column 5: .* is out of range"),
])
def test_bad_csv_names_the_file_and_line(tmp_path, text, message):
  path = tmp_path / "train.csv"
  path.write_text(text)
  with pytest.raises(DataError, match=message) as e:
    input_pipeline.load(f"csv:{path}")
  assert str(path) in str(e.value)


def test_binary_and_missing_files(tmp_path):
  (tmp_path / "x.csv").write_bytes(b"\xff\xfe\x00garbage")
  with pytest.raises(DataError, match="not a text CSV"):
    input_pipeline.load(f"csv:{tmp_path / 'x.csv'}")
  with pytest.raises(DataError, match="no such file"):
    input_pipeline.load(f"csv:{tmp_path / 'missing.csv'}")
  # A path in a message can be pasted into a shell: quoted.
  (tmp_path / "a b.csv").write_bytes(b"\xff\xfe\x00garbage")
  with pytest.raises(DataError) as error:
    input_pipeline.load(f"csv:{tmp_path / 'a b.csv'}")
  assert str(error.value).startswith(f"'{tmp_path}/a b.csv' is not a text CSV file")
  with pytest.raises(DataError, match="no train.csv"):
    input_pipeline.load(f"csv:{tmp_path}")
