import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import Augment, DataError, Split
from input_pipeline.in_memory import InMemoryData, IndexStream


def test_each_epoch_is_a_seeded_permutation_and_batches_cross_epochs():
  stream = IndexStream(10, 4, seed=3)
  order = stream.take(5).ravel()  # 20 positions: two epochs
  assert sorted(order[:10]) == list(range(10)) and sorted(order[10:]) == list(range(10))
  assert not np.array_equal(order[:10], order[10:])
  np.testing.assert_array_equal(IndexStream(10, 4, seed=3).take(5).ravel(), order)
  assert not np.array_equal(IndexStream(10, 4, seed=4).take(5).ravel(), order)


def test_start_step_resumes_the_exact_stream():
  full = IndexStream(10, 4, seed=1).take(9)
  resumed = IndexStream(10, 4, seed=1, start_step=4)
  np.testing.assert_array_equal(np.concatenate([resumed.take(2), resumed.take(3)]), full[4:])


def test_batch_gathers_normalizes_and_augments():
  images = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
  data = InMemoryData(Split(images, np.arange(6) % 3))
  x, y = data.batch(tf.constant([5, 0, 2]), tf.constant([0, 0], tf.int64))
  assert x.dtype == tf.float32 and y.dtype == tf.int32
  np.testing.assert_allclose(x.numpy()[:, 0, 0, 0], np.array([5, 0, 2]) / 255.0)
  np.testing.assert_array_equal(y.numpy(), [2, 0, 2])
  erased = InMemoryData(Split(images + 1, np.zeros(6)), Augment(erase=1.0))
  x, _ = erased.batch(tf.range(6), tf.constant([1, 2], tf.int64))
  assert (x.numpy() == 0).any()


def test_errors():
  with pytest.raises(DataError, match="larger than the 10 training"):
    IndexStream(10, 11, seed=0)
  with pytest.raises(DataError, match="no labels"):
    InMemoryData(Split(np.zeros((2, 2, 2, 1), np.uint8), None))
