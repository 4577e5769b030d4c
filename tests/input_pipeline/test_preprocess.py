import logging

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import Augment, DataError, preprocess
from input_pipeline.preprocess import normalize

SEED = tf.constant([1, 2], tf.int64)


def _batch(b=16, h=10, w=10):
  return tf.random.stateless_uniform([b, h, w, 1], [0, 0]) + 0.01  # no exact zeros


@pytest.mark.parametrize("text,expected", [
    ("none", Augment()),
    ("", Augment()),
    ("translate=3", Augment(translate=3)),
    ("translate,erase", Augment(translate=2, erase=0.5)),
    ("flip,erase=0.25", Augment(flip=True, erase=0.25)),
])
def test_parse(text, expected):
  assert Augment.parse(text, "fashion_mnist") == expected


@pytest.mark.parametrize("text,dataset,message", [
    ("flip", "mnist", "mirrored characters"),
    ("flip", "tfds:emnist/letters", "mirrored characters"),
    ("flip", "csv:/x/train.csv", "mirrored characters"),
    ("rotate=10", "mnist", "cannot read 'rotate=10'"),
    ("erase=2", "mnist", "erase in"),
    ("translate=-1", "mnist", "translate must be"),
    ("flip=yes", "cifar10", "cannot read"),
])
def test_parse_refuses(text, dataset, message):
  with pytest.raises(DataError, match=message):
    Augment.parse(text, dataset)


def test_flip_on_idx_files_warns_that_digits_must_not_be_flipped(caplog):
  # IDX holds MNIST's digits and Fashion-MNIST's clothes alike: warned, not refused.
  with caplog.at_level(logging.WARNING, logger="absl"):
    assert Augment.parse("flip", "idx:/data/mnist") == Augment(flip=True)
  assert "if these images are digits or letters" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="absl"):
    Augment.parse("flip", "folder:/photos")
  assert "digits" not in caplog.text


def test_normalize():
  x = preprocess.normalize(tf.constant([[0, 255, 51]], tf.uint8))
  assert x.dtype == tf.float32
  np.testing.assert_allclose(x.numpy(), [[0.0, 1.0, 0.2]])


def test_translate_shifts_each_image_by_at_most_max_shift():
  x = _batch()
  y = preprocess.translate(x, 2, SEED).numpy()
  shifts = set()
  for a, b in zip(x.numpy()[..., 0], y[..., 0]):
    found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
             if np.allclose(np.roll(np.pad(a, 2), (dy, dx), (0, 1))[2:-2, 2:-2], b)]
    assert found, "output is not a shift of the input"
    shifts.add(found[0])
  assert len(shifts) > 1  # independent per example


def test_flip_mirrors_some_images_only():
  x = _batch()
  y = preprocess.flip(x, SEED).numpy()
  flipped = [np.allclose(b, a[:, ::-1]) for a, b in zip(x.numpy(), y)]
  same = [np.allclose(b, a) for a, b in zip(x.numpy(), y)]
  assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)


def test_erase_zeroes_one_rectangle_in_chosen_images():
  x = _batch(b=64, h=20, w=20)
  y = preprocess.erase(x, 0.5, SEED).numpy()
  erased = 0
  for img in y[..., 0]:
    zero = img == 0
    if zero.any():
      erased += 1
      rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
      assert zero[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # a solid rectangle
      assert zero.sum() <= 0.25 * 400 + 2 * 20
  assert 16 < erased < 48  # about half of 64


def test_augment_batch_is_deterministic_per_seed():
  aug = Augment(translate=2, flip=True, erase=0.5)
  x = _batch()
  a = preprocess.augment_batch(x, aug, SEED)
  b = preprocess.augment_batch(x, aug, SEED)
  c = preprocess.augment_batch(x, aug, tf.constant([1, 3], tf.int64))
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert not np.array_equal(a.numpy(), c.numpy())


def test_normalize_gives_the_same_bits_eagerly_in_tf_function_and_in_tf_data():
  """Grappler rewrites a division by a constant inside tf.function only: the in-graph
  pipelines, tf.data's map and the export must not see pixels an ulp apart."""
  pixels = tf.constant(np.arange(256, dtype=np.uint8))
  eager = normalize(pixels).numpy()
  graph = tf.function(normalize)(pixels).numpy()
  mapped = next(iter(tf.data.Dataset.from_tensors(pixels).map(normalize))).numpy()
  np.testing.assert_array_equal(graph, eager)
  np.testing.assert_array_equal(mapped, eager)
  assert eager[0] == 0.0 and eager[255] == 1.0


def test_augmentation_is_the_same_bits_under_xla():
  # --jit_compile=loop compiles the augmentation with the step: the same draws as the graph
  # (tf.random.stateless_uniform's own floats differ between the two).
  images = tf.random.stateless_uniform([64, 12, 12, 1], [1, 2])
  augment = Augment.parse("translate=2,flip,erase=0.5")
  run = lambda x, seed: preprocess.augment_batch(x, augment, seed)
  for step in range(3):
    seed = preprocess.augment_seed(0, 0, step)
    graph = tf.function(run)(images, seed).numpy()
    np.testing.assert_array_equal(tf.function(run, jit_compile=True)(images, seed).numpy(), graph)
    assert (graph != images.numpy()).any()
