import numpy as np
import pytest
import tensorflow as tf

from models.common import Dropout, batch_shard

N = 1_000_001  # odd: the last element comes from half of a random word


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 0.9])
def test_drops_at_the_rate_and_keeps_the_expected_value(rate):
  y = Dropout(rate, seed=1)(tf.ones([N]), training=True).numpy()
  dropped = y == 0
  # 6 standard deviations of a binomial fraction over N draws.
  assert abs(dropped.mean() - rate) < 6 * np.sqrt(rate * (1 - rate) / N)
  np.testing.assert_allclose(y[~dropped], 1 / (1 - rate), rtol=1e-4)
  assert abs(y.mean() - 1.0) < 6 * np.sqrt(rate / (1 - rate) / N)


def test_neighbours_are_independent():
  # Two elements share one random word: each must use its own half.
  dropped = Dropout(0.5, seed=2)(tf.ones([N - 1]), training=True).numpy() == 0
  pairs = dropped.reshape(-1, 2)
  both = (pairs[:, 0] & pairs[:, 1]).mean()
  assert abs(both - 0.25) < 6 * np.sqrt(0.25 * 0.75 / len(pairs))


def test_masks_differ_per_call_and_repeat_per_seed():
  x = tf.ones([64, 33])
  a, b = Dropout(0.3, seed=5), Dropout(0.3, seed=5)
  first = a(x, training=True).numpy()
  np.testing.assert_array_equal(first, b(x, training=True).numpy())
  assert not np.array_equal(first, a(x, training=True).numpy())


def test_identity_at_inference_and_at_rate_zero():
  x = tf.random.normal([8, 5, 3])
  np.testing.assert_array_equal(Dropout(0.5)(x, training=False), x)
  np.testing.assert_array_equal(Dropout(0.0)(x, training=True), x)


def test_gradient_is_the_mask_times_the_scale():
  x = tf.ones([7, 9])
  layer = Dropout(0.25, seed=3)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=True)
    total = tf.reduce_sum(y)
  grad = tape.gradient(total, x).numpy()
  np.testing.assert_allclose(grad, y.numpy(), rtol=1e-6)  # x is all ones
  assert set(np.unique(grad)) <= {0.0, np.float32(1 / 0.75)}


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_keeps_the_compute_dtype(dtype):
  y = Dropout(0.5, seed=4, dtype=f"mixed_{dtype.name}")(tf.ones([4, 6], dtype), training=True)
  assert y.dtype == dtype
  assert set(np.unique(tf.cast(y, tf.float32).numpy())) <= {0.0, 2.0}


@pytest.mark.parametrize("replicas", [2, 4])
def test_each_replica_draws_its_part_of_the_global_mask(replicas):
  strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
  global_batch, width, rate = 64, 33, 0.3  # 33: shards that do not start on a Philox block

  def masks():
    with strategy.scope():
      layer = Dropout(rate, seed=7)

    @tf.function
    def step():
      def replica_fn():
        ctx = tf.distribute.get_replica_context()
        with batch_shard(ctx.replica_id_in_sync_group):
          return layer(tf.ones([global_batch // replicas, width]), training=True)
      return strategy.run(replica_fn)
    return [v.numpy() != 0 for v in strategy.experimental_local_results(step())]

  kept = masks()
  for a, b in zip(kept, kept[1:]):
    assert (a != b).mean() > 0.2  # independent masks disagree on 2 * 0.3 * 0.7 = 42%
  joined = np.concatenate(kept)
  assert abs(1 - joined.mean() - rate) < 6 * np.sqrt(rate * (1 - rate) / joined.size)
  np.testing.assert_array_equal(masks(), kept)  # reproducible from the seed
  # Together: exactly the mask one device draws for the whole batch.
  whole = Dropout(rate, seed=7)(tf.ones([global_batch, width]), training=True).numpy() != 0
  np.testing.assert_array_equal(joined, whole)


def test_a_noise_shape_drops_whole_examples_and_shards_draw_their_part():
  """EfficientNet's stochastic depth: noise_shape (None, 1, 1, 1), one draw per example."""
  x = tf.ones([64, 3, 5, 2])
  layer = lambda: Dropout(0.5, noise_shape=(None, 1, 1, 1), seed=9)
  whole = layer()(x, training=True).numpy().reshape(64, -1)
  assert set(np.unique(whole)) == {0.0, 2.0}
  assert (whole == whole[:, :1]).all()  # each example kept or dropped whole
  assert 16 < (whole[:, 0] == 0).sum() < 48
  shards = []
  for index in range(2):  # each replica's layer holds the same seed state
    with batch_shard(index):
      shards.append(layer()(x[32 * index:32 * (index + 1)], training=True).numpy())
  np.testing.assert_array_equal(np.concatenate(shards).reshape(64, -1), whole)
