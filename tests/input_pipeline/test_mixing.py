"""Label smoothing, Mixup, CutMix and the padded crop against numpy references."""

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import mixing
from input_pipeline.data import DataError
from input_pipeline.mixing import Mix, mix_batch, mix_parameters, smooth
from input_pipeline.preprocess import Augment, augment_batch

SEED = tf.constant([3, 11], tf.int64)


def batch(n=16, h=8, w=6, classes=5):
  rng = np.random.default_rng(0)
  images = rng.random((n, h, w, 2), np.float32) + 0.1  # no zeros: pasted pixels are seen
  labels = rng.integers(0, classes, n)
  return images, np.eye(classes, dtype=np.float32)[labels]


def test_label_smoothing_matches_numpy():
  _, targets = batch()
  expected = targets * 0.9 + 0.1 / 5
  np.testing.assert_allclose(smooth(tf.constant(targets), 0.1).numpy(), expected, rtol=1e-6)
  np.testing.assert_allclose(expected.sum(1), 1.0, rtol=1e-6)
  assert smooth(tf.constant(targets), 0.0) is not None
  np.testing.assert_array_equal(smooth(tf.constant(targets), 0.0).numpy(), targets)


def test_mixup_blends_images_and_targets_by_one_weight():
  images, targets = batch()
  mix = Mix(mixup=0.4)
  weight, partner, use_cutmix, _ = (t.numpy() for t in mix_parameters(mix, 16, 8, 6, SEED))
  assert not use_cutmix and 0 < weight < 1
  assert sorted(partner) == list(range(16))  # a permutation of the batch
  out_images, out_targets = (t.numpy() for t in mix_batch(tf.constant(images),
                                                         tf.constant(targets), mix, SEED))
  np.testing.assert_allclose(out_images, weight * images + (1 - weight) * images[partner],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out_targets, weight * targets + (1 - weight) * targets[partner],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out_targets.sum(1), 1.0, rtol=1e-5)


def test_cutmix_pastes_one_box_and_weighs_targets_by_its_area():
  images, targets = batch()
  mix = Mix(cutmix=1.0)
  for s in range(20):
    seed = tf.constant([s, 5], tf.int64)
    weight, partner, use_cutmix, box = (t.numpy() for t in mix_parameters(mix, 16, 8, 6, seed))
    assert use_cutmix
    y0, y1, x0, x1 = box
    assert 0 <= y0 <= y1 <= 8 and 0 <= x0 <= x1 <= 6
    inside = np.zeros((8, 6), bool)
    inside[y0:y1, x0:x1] = True
    assert weight == pytest.approx(1 - inside.mean(), abs=1e-6)  # the area left uncovered
    out_images, out_targets = (t.numpy() for t in mix_batch(
        tf.constant(images), tf.constant(targets), mix, seed))
    expected = np.where(inside[None, :, :, None], images[partner], images)
    np.testing.assert_array_equal(out_images, expected)
    np.testing.assert_allclose(out_targets, weight * targets + (1 - weight) * targets[partner],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_beta_draws_match_numpys_beta(alpha):
  seeds = tf.stack([tf.range(1500, dtype=tf.int64), tf.fill([1500], tf.constant(7, tf.int64))],
                   axis=1)
  draws = tf.function(lambda s: tf.map_fn(lambda seed: mixing._beta(alpha, seed), s,
                                          fn_output_signature=tf.float32))(seeds).numpy()
  reference = np.random.default_rng(1).beta(alpha, alpha, 200_000)
  assert ((draws >= 0) & (draws <= 1)).all()
  quantiles = [0.1, 0.25, 0.5, 0.75, 0.9]
  np.testing.assert_allclose(np.quantile(draws, quantiles), np.quantile(reference, quantiles),
                             atol=0.03)
  assert draws.var() == pytest.approx(reference.var(), rel=0.08)


def test_mix_probability_leaves_the_other_batches_as_they_were():
  images, targets = batch()
  mix = Mix(mixup=1.0, cutmix=1.0, probability=0.5)
  kinds = []
  parameters = tf.function(lambda seed: mix_parameters(mix, 16, 8, 6, seed))
  mixed = tf.function(lambda seed: mix_batch(tf.constant(images), tf.constant(targets), mix,
                                             seed))
  for s in range(120):
    seed = tf.constant([s, 1], tf.int64)
    weight, _, use_cutmix, _ = (t.numpy() for t in parameters(seed))
    if weight == 1.0:
      out, out_targets = mixed(seed)
      np.testing.assert_array_equal(out.numpy(), images)
      np.testing.assert_array_equal(out_targets.numpy(), targets)
      kinds.append("none")
    else:
      kinds.append("cutmix" if use_cutmix else "mixup")
  counts = {k: kinds.count(k) for k in ("none", "mixup", "cutmix")}
  # Half unmixed; the mixed half split evenly between Mixup and CutMix.
  assert 40 <= counts["none"] <= 80 and 15 <= counts["mixup"] and 15 <= counts["cutmix"], counts


def test_mixing_is_a_function_of_the_seed_and_the_same_under_xla():
  images, targets = (tf.constant(a) for a in batch())
  mix = Mix(mixup=0.2, cutmix=1.0, probability=0.8)
  a = mix_batch(images, targets, mix, SEED)
  b = tf.function(lambda x, t, s: mix_batch(x, t, mix, s), jit_compile=True)(images, targets,
                                                                              SEED)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.numpy(), y.numpy())
  other = mix_batch(images, targets, mix, tf.constant([4, 11], tf.int64))
  assert not np.array_equal(a[1].numpy(), other[1].numpy())


def test_one_xla_program_for_every_seed():
  # An index XLA needed at compile time (the accepted Gamma candidate) made a training loop
  # compile again at every step, whose seed it is: ~3 s a loop.
  mixed = tf.function(lambda seed: mix_parameters(Mix(0.2, 1.0), 8, 12, 12, seed),
                      jit_compile=True)
  programs = {mixed.experimental_get_compiler_ir(tf.constant(seed, tf.int64))(stage="hlo")
              for seed in ([1, 2], [3, 4])}
  assert len(programs) == 1


def test_crop_pads_and_crops_within_its_bounds():
  augment = Augment.parse("crop=3")
  assert augment == Augment(translate=3) and Augment.parse("crop") == Augment(translate=4)
  rng = np.random.default_rng(2)
  images = rng.integers(1, 255, (64, 10, 9, 1)).astype(np.float32)  # no zero pixels
  out = augment_batch(tf.constant(images), augment, SEED).numpy()
  padded = np.pad(images, [(0, 0), (3, 3), (3, 3), (0, 0)])
  offsets = set()
  for i in range(64):
    # The output is the window of the zero-padded image at some offset in [0, 2 x pad].
    found = [(dy, dx) for dy in range(7) for dx in range(7)
             if np.array_equal(out[i], padded[i, dy:dy + 10, dx:dx + 9])]
    assert len(found) == 1, i
    offsets.add(found[0])
  assert len(offsets) > 20  # random offsets, not one
  assert {dy for dy, _ in offsets} >= {0, 6} or {dx for _, dx in offsets} >= {0, 6}


def test_crop_and_translate_together_are_refused():
  with pytest.raises(DataError, match="crop and translate are the same augmentation"):
    Augment.parse("crop=4,translate=2")
