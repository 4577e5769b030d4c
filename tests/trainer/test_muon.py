import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from trainer.optim import muon, optimization
from flag_helpers import parse


def _newton_schulz(g, steps=5):
  """Keller Jordan's zeropower_via_newtonschulz5 (KellerJordan/Muon), in numpy."""
  a, b, c = 3.4445, -4.7750, 2.0315
  x = g / (np.linalg.norm(g) + 1e-7)
  tall = g.shape[0] > g.shape[1]
  if tall:
    x = x.T
  for _ in range(steps):
    m = x @ x.T
    x = a * x + (b * m + c * m @ m) @ x
  return x.T if tall else x


def test_orthogonalize_is_keras_muons_newton_schulz():
  rng = np.random.default_rng(0)
  for shape in ((6, 20), (20, 6)):
    g = rng.normal(size=shape).astype(np.float32)
    ours = muon.orthogonalize(tf.constant(g)).numpy()
    theirs = keras.optimizers.Muon().zeropower_via_newtonschulz5(tf.constant(g), 5)
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-4, atol=1e-5)
    singular = np.linalg.svd(ours, compute_uv=False)
    assert 0.6 < singular.min() and singular.max() < 1.3, singular


def test_conv_filters_take_airbenchs_muon_step_and_the_rest_momentum():
  # The published rule (airbench94_muon.py), in torch's (out, in, h, w) layout:
  # buf = m buf + g; g = g + m buf; w *= sqrt(out) / |w|; w -= lr NS(g.view(out, -1)).
  lr, ratio, m = 0.1, 2.5, 0.6
  opt = optimization.create_optimizer(parse(
      "--model=airbench", "--optimizer=momentum", "--nesterov", f"--momentum={m}",
      f"--learning_rate={lr}", f"--muon_learning_rate={lr * ratio}"), lr)
  assert isinstance(opt, muon.MuonSGD)
  rng = np.random.default_rng(1)
  conv0 = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
  dense0 = rng.normal(size=(5, 3)).astype(np.float32)
  conv, dense = keras.Variable(conv0), keras.Variable(dense0)
  opt.build([conv, dense])
  w = conv0.transpose(3, 2, 0, 1).astype(np.float64)  # (out, in, h, w)
  buf, d, accum = np.zeros_like(w), dense0.astype(np.float64), np.zeros_like(dense0)
  for _ in range(3):
    gc = rng.normal(size=conv0.shape).astype(np.float32)
    gd = rng.normal(size=dense0.shape).astype(np.float32)
    opt.apply([tf.constant(gc), tf.constant(gd)], [conv, dense])
    g = gc.transpose(3, 2, 0, 1)
    buf = m * buf + g
    update = _newton_schulz((g + m * buf).reshape(len(w), -1)).reshape(w.shape)
    w = w * np.sqrt(len(w)) / np.linalg.norm(w) - lr * ratio * update
    accum = m * accum - lr * gd  # Keras's Nesterov momentum for everything else
    d = d + m * accum - lr * gd
  np.testing.assert_allclose(conv.numpy(), w.transpose(2, 3, 1, 0), rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(dense.numpy(), d, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,hparams,expected", [
    ("airbench", dict(widths=(4, 8, 8)), 6),  # the frozen stem is not trainable
    ("airbench", dict(widths=(4, 8, 8), whiten=0), 6),  # its stem conv has a bias: not it
    ("resnet", dict(widths=(4, 8), blocks_per_stage=1), 6),  # stem, 2 + 2, the shortcut
    ("cnn", {}, 0)])
def test_muon_takes_the_filters_batch_norm_follows(name, hparams, expected):
  model = models.create(name, num_classes=10, image_shape=(28, 28, 1), **hparams)
  filters = muon.normalized_filters(model.trainable_variables)
  assert len(filters) == expected
  assert all(len(v.shape) == 4 and "bias" not in v.path for v in filters)
