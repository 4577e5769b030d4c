"""The README's Python example runs as written (on generated files and TFDS mock data)."""

import os
import re

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import tfds_source
from datafiles import write_kaggle_csv, write_mnist_dir

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
  blocks = re.findall(r"```python\n(.*?)```", open(README).read(), re.S)
  assert blocks
  os.makedirs(tmp_path / "data" / "mnist")
  os.makedirs(tmp_path / "data" / "digit-recognizer")
  write_mnist_dir(tmp_path / "data" / "mnist", n_train=300, n_test=50)
  rng = np.random.default_rng(0)
  write_kaggle_csv(tmp_path / "data" / "digit-recognizer" / "train.csv",
                   rng.integers(0, 256, (300, 28, 28, 1)), rng.integers(0, 10, 300))
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(tfds_source, "_host_resolves", lambda url: True)
  with tfds.testing.mock_data(num_examples=300):
    for block in blocks:
      exec(compile(block, "README.md", "exec"), {})
  out = capsys.readouterr().out
  for word in ("synthetic", "idx:data/mnist", "csv:data/digit-recognizer", "fashion_mnist",
               "mlp", "cnn", "resnet"):
    assert word in out
