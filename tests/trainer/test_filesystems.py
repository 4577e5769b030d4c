"""A model_dir on a non-local TensorFlow filesystem (gs://, s3://) works like a local path:
tested on TensorFlow's in-process ram:// filesystem, which Python's open/glob cannot see."""

import os
import re
import uuid

import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging

from trainer import predict
from trainer.process import files
from trainer.process.errors import ConfigError
from trainer.run import train
from flag_helpers import parse

RUN = ["--model=mlp", "--hidden_units=16", "--dataset=synthetic:shape=8x8x1,classes=3,"
       "train=256,test=64", "--batch_size=32", "--steps_per_loop=4", "--checkpoint_every=4",
       "--keep_checkpoints=2", "--deterministic", "--eval_images=false"]


def _listing(root):
  return sorted(os.path.join(top, name)[len(root) + 1:]
                for top, _, names in tf.io.gfile.walk(root) for name in names)


def _train(*args):
  """train_and_evaluate with INFO logged, as trainer.main logs (parsing resets it)."""
  cfg = parse(*args)
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  try:
    return train.train_and_evaluate(cfg)
  finally:
    absl_logging.set_verbosity(level)


def test_train_resume_export_results_and_predict_on_ram_filesystem(tmp_path):
  model_dir = f"ram://bucket-{uuid.uuid4().hex[:6]}/run"
  first = _train(*RUN, "--train_steps=8", f"--model_dir={model_dir}")
  assert not os.path.exists("ram:") and not (tmp_path / "ram:").exists()
  names = _listing(model_dir)
  for name in ("flags.json", "results.json", "checkpoints/ckpt-8.index", "export/saved_model.pb",
               "export/variables/variables.index"):
    assert name in names, names
  assert not [n for n in names if ".tmp-" in n or ".old-" in n or ".export-" in n]
  assert files.read_json(f"{model_dir}/results.json")["global_step"] == 8

  # The rerun finds the checkpoints (a local glob would find none and start at step 0,
  # while max_to_keep deleted the old ones) and continues to step 16.
  second = _train(*RUN, "--train_steps=16", f"--model_dir={model_dir}")
  straight = _train(*RUN, "--train_steps=16", f"--model_dir={tmp_path}/straight")
  assert second["global_step"] == 16 and second["weights_digest"] == straight["weights_digest"]
  assert second["weights_digest"] != first["weights_digest"]
  assert sorted(n for n in _listing(model_dir) if n.startswith("checkpoints/ckpt-")) == [
      f"checkpoints/ckpt-{s}.{ext}" for s in (12, 16)
      for ext in ("data-00000-of-00001", "index")]

  # The run's log in full (absl's prefix on each line): each start appended to it, in a
  # bucket (rewritten whole: no appending there) as in a local directory.
  for log, starts in ((f"{model_dir}/tapeloop.log", ["0 to 8", "8 to 16"]),
                      (f"{tmp_path}/straight/tapeloop.log", ["0 to 16"])):
    with tf.io.gfile.GFile(log) as f:
      text = f.read()
    assert re.findall(r"\] training mlp on \S+ from step (\d+ to \d+)", text) == starts, text
    assert re.match(r"I\d{4} [\d:.]+ +\d+ \w+\.py:\d+\] ", text), text[:200]

  # The export was replaced in place and serves in this process.
  serve, shape, classes = predict.load_serving(f"{model_dir}/export")
  assert shape == (8, 8, 1) and classes == 3
  images = np.zeros((5, 8, 8, 1), np.uint8)
  assert predict.predict_classes(serve, images, batch_size=2).shape == (5,)
  local = tf.saved_model.load(f"{tmp_path}/straight/export").signatures["serving_default"]
  np.testing.assert_allclose(serve(images=tf.constant(images))["probabilities"],
                             local(images=tf.constant(images))["probabilities"], rtol=1e-6)


def test_a_scheme_without_a_filesystem_is_one_line_and_nothing_runs():
  with pytest.raises(ConfigError, match=r"no TensorFlow filesystem is registered for nofs://"):
    train.train_and_evaluate(parse(*RUN, "--train_steps=4", "--model_dir=nofs://bucket/run"))


def test_writes_leave_no_temporary_files_and_read_back(tmp_path):
  root = f"ram://writes-{uuid.uuid4().hex[:6]}"
  files.write_json(f"{root}/a/results.json", {"a": 1})
  files.write_json(f"{root}/a/results.json", {"a": 2})
  assert files.read_json(f"{root}/a/results.json") == {"a": 2}
  assert files.read_json(f"{root}/a/missing.json") is None
  assert _listing(root) == ["a/results.json"]
