"""--intra_op_threads: set when the strategy is created, before TensorFlow starts."""

import subprocess
import sys

import pytest
import tensorflow as tf

from paths import ROOT
from trainer.options.config import from_args
from trainer.process.errors import ConfigError
from trainer.run import distribute

PROBE = """
import tensorflow as tf
from trainer.options import config
from trainer.run import distribute
cfg = config.from_args(["--intra_op_threads=1", "--model_dir=/tmp/x"])
distribute.create_strategy(cfg)
print(float(tf.reduce_sum(tf.ones([3]))), tf.config.threading.get_intra_op_parallelism_threads())
distribute.create_strategy(cfg)  # started, but with the value asked for: fine
print("again")
"""


def test_the_flag_sets_tensorflows_intra_op_pool():
  out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                       text=True, check=True, timeout=120).stdout
  assert out.split() == ["3.0", "1", "again"]


def test_too_late_is_a_clear_error():
  tf.constant(1.0) + 1  # the runtime (and its thread pools) has started
  current = tf.config.threading.get_intra_op_parallelism_threads()
  late = from_args([f"--intra_op_threads={current + 3}", "--model_dir=/tmp/x"])
  with pytest.raises(ConfigError, match=f"--intra_op_threads={current + 3}: TensorFlow has "
                     "already started"):
    distribute.create_strategy(late)
