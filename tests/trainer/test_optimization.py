import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import optimization
from flag_helpers import parse


def _rates(cfg, total, steps):
  step = tf.Variable(0, dtype=tf.int64)
  fn = optimization.learning_rate_fn(cfg, total, step)
  out = []
  for s in steps:
    step.assign(s)
    out.append(float(fn()))
  return np.array(out)


def test_constant_with_warmup():
  cfg = parse("--learning_rate=0.1", "--warmup_steps=4")
  np.testing.assert_allclose(_rates(cfg, 100, [0, 1, 3, 4, 99]), [0.025, 0.05, 0.1, 0.1, 0.1],
                             rtol=1e-6)


def test_cosine_goes_from_peak_to_zero_after_warmup():
  cfg = parse("--learning_rate=0.2", "--lr_schedule=cosine", "--warmup_steps=10")
  r = _rates(cfg, 110, [10, 60, 110])
  np.testing.assert_allclose(r, [0.2, 0.1, 0.0], atol=1e-7)


def test_exponential_decays_by_the_rate_over_the_run():
  cfg = parse("--learning_rate=1.0", "--lr_schedule=exponential", "--lr_decay_rate=0.01")
  np.testing.assert_allclose(_rates(cfg, 100, [0, 50, 100]), [1.0, 0.1, 0.01], rtol=1e-5)


@pytest.mark.parametrize("name,cls", [("sgd", keras.optimizers.SGD),
                                      ("momentum", keras.optimizers.SGD),
                                      ("adam", keras.optimizers.Adam),
                                      ("adamw", keras.optimizers.AdamW),
                                      ("rmsprop", keras.optimizers.RMSprop)])
def test_optimizers(name, cls):
  opt = optimization.create_optimizer(parse(f"--optimizer={name}"), 0.1)
  assert type(opt) is cls
  if name == "momentum":
    assert opt.momentum == 0.9


def test_fp16_wraps_in_loss_scaling_and_weight_decay_spares_biases():
  opt = optimization.create_optimizer(
      parse("--mixed_precision=mixed_float16", "--weight_decay=0.1", "--optimizer=sgd"), 1.0)
  assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
  kernel = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
  bias = keras.Variable(np.ones(2, np.float32), name="bias")
  inner = opt.inner_optimizer
  inner.build([kernel, bias])
  inner.apply([tf.zeros((2, 2)), tf.zeros(2)], [kernel, bias])  # zero gradients: decay only
  assert float(kernel[0, 0]) < 1.0 and float(bias[0]) == 1.0
