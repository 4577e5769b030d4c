import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import DataError, Split, eval_dataset, train_dataset


def _split(n=40, shape=(4, 4, 1), seed=0):
  # Each image holds its own index, so batches reveal exactly which examples they contain.
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n,) + shape)
  return Split(images=np.ascontiguousarray(images), labels=np.arange(n) % 10)


def _ids(x):
  x = x.numpy()
  return (np.rint(x * 255) if x.dtype == np.float32 else x)[:, 0, 0, 0].astype(int)


def _stream(split, steps, **kwargs):
  return [_ids(x) for x, _ in train_dataset(split, **kwargs).take(steps)]


def test_train_batches_shape_and_dtype():
  # uint8: normalized and augmented on each replica's device (trainer/inner/feeds.py).
  x, y = next(iter(train_dataset(_split(), global_batch_size=8, seed=0)))
  assert x.shape == (8, 4, 4, 1) and x.dtype == tf.uint8 and y.dtype == tf.int32
  np.testing.assert_array_equal(y.numpy(), _ids(x) % 10)  # labels travel with their images


def test_each_epoch_is_a_permutation_and_epochs_differ():
  batches = _stream(_split(40), 10, global_batch_size=8, seed=1)  # 2 epochs of 5 batches
  first, second = np.concatenate(batches[:5]), np.concatenate(batches[5:])
  assert sorted(first) == list(range(40)) and sorted(second) == list(range(40))
  assert not np.array_equal(first, second)
  assert not np.array_equal(first, np.arange(40))  # shuffled at all


def test_same_seed_same_order_other_seed_other_order():
  a = _stream(_split(), 12, global_batch_size=6, seed=7)
  b = _stream(_split(), 12, global_batch_size=6, seed=7)
  c = _stream(_split(), 12, global_batch_size=6, seed=8)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_start_step_resumes_the_exact_stream_across_epoch_boundaries():
  # 40 examples, batch 6: batches straddle epochs; step 9 starts mid-epoch.
  full = _stream(_split(40), 20, global_batch_size=6, seed=3)
  resumed = _stream(_split(40), 11, global_batch_size=6, seed=3, start_step=9)
  np.testing.assert_array_equal(full[9:], resumed)


def test_batch_larger_than_train_split_and_bad_batch():
  with pytest.raises(DataError, match="larger than the 40 training"):
    train_dataset(_split(40), global_batch_size=41, seed=0)
  with pytest.raises(DataError, match="--batch_size=0 must be positive"):
    eval_dataset(_split(40), global_batch_size=0)
  with pytest.raises(DataError, match="no labels"):
    train_dataset(Split(_split().images, None), global_batch_size=4, seed=0)


@pytest.mark.parametrize("n,batch", [(23, 8), (24, 8), (3, 8), (1, 1)])
def test_eval_pass_counts_every_example_exactly_once(n, batch):
  split = _split(n)
  ids, labels, weights, index = [], [], [], []
  for x, y, w, i in eval_dataset(split, global_batch_size=batch):
    assert x.shape[0] == batch  # the padded last batch keeps the full shape
    ids.append(_ids(x)), labels.append(y.numpy()), weights.append(w.numpy())
    index.append(i.numpy())
  ids, labels, weights, index = map(np.concatenate, (ids, labels, weights, index))
  real = weights == 1
  assert sorted(ids[real]) == list(range(n)) and weights.sum() == n
  np.testing.assert_array_equal(index[real], ids[real])  # index: the example's position
  assert (index[~real] == -1).all()
  np.testing.assert_array_equal(labels[real], split.labels)
  assert set(weights) <= {0.0, 1.0}


def _two_replicas():
  return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def test_train_dataset_distributes_global_batches_over_2_replicas():
  strategy = _two_replicas()
  split = _split(40)
  local = _stream(split, 3, global_batch_size=8, seed=5)
  dist = strategy.experimental_distribute_dataset(
      train_dataset(split, global_batch_size=8, seed=5))
  for step, (x, _) in zip(range(3), dist):
    parts = strategy.experimental_local_results(x)
    assert [p.shape[0] for p in parts] == [4, 4]
    np.testing.assert_array_equal(np.concatenate([_ids(p) for p in parts]), local[step])


def test_eval_dataset_under_2_replicas_counts_each_example_once():
  strategy = _two_replicas()
  split = _split(21)
  dist = strategy.experimental_distribute_dataset(eval_dataset(split, global_batch_size=8))
  seen = []
  for x, _, w, _ in dist:
    for xp, wp in zip(strategy.experimental_local_results(x),
                      strategy.experimental_local_results(w)):
      assert xp.shape[0] == 4
      seen.extend(_ids(xp)[wp.numpy() == 1])
  assert sorted(seen) == list(range(21))
