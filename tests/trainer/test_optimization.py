import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.optim import fused_optimizers, optimization
from trainer.process.errors import ConfigError
from flag_helpers import parse


def _rates(cfg, total, steps, factor=None):
  step = tf.Variable(0, dtype=tf.int64)
  fn = optimization.Schedule.of(cfg, total).rate_fn(step, factor)
  out = []
  for s in steps:
    step.assign(s)
    out.append(float(fn()))
  return np.array(out)


@pytest.mark.parametrize("flags", [
    [], ["--lr_schedule=cosine"], ["--lr_schedule=cosine", "--final_learning_rate=0.01"],
    ["--lr_schedule=one_cycle", "--final_learning_rate=0.001"],
    ["--lr_schedule=exponential", "--lr_decay_rate=0.5"],
    ["--lr_schedule=step", "--lr_boundaries=20,40", "--lr_decay_rate=0.3"],
    ["--lr_schedule=cosine", "--warmup_steps=10"]])
def test_the_final_rate_is_the_rate_past_the_horizon(flags):
  # What the extension warning states (run_record.py) is what the run trains with.
  cfg = parse("--learning_rate=0.1", *flags)
  final = optimization.Schedule.of(cfg, 100).final_rate()
  np.testing.assert_allclose(_rates(cfg, 100, [100, 130]), [final, final], rtol=1e-5,
                             atol=1e-9)


def test_plateau_has_no_final_rate():
  assert optimization.Schedule.of(parse("--lr_schedule=plateau"), 100).final_rate() is None


@pytest.mark.parametrize("schedule", ["constant", "cosine", "one_cycle", "plateau"])
def test_a_warmup_as_long_as_the_run_is_refused(schedule):
  cfg = parse(f"--lr_schedule={schedule}", "--warmup_steps=100")
  with pytest.raises(ConfigError, match="--warmup_steps=100 is not below the schedule's 100 "
                     "steps .*: the rate would never finish warming up"):
    optimization.Schedule.of(cfg, 100).check_warmup()
  optimization.Schedule.of(cfg, 101).check_warmup()


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


def test_cosine_ends_at_its_floor():
  cfg = parse("--learning_rate=0.2", "--lr_schedule=cosine", "--final_learning_rate=0.02")
  steps = np.array([0, 25, 50, 100, 150])
  expected = 0.02 + 0.18 * 0.5 * (1 + np.cos(np.pi * np.minimum(steps, 100) / 100))
  np.testing.assert_allclose(_rates(cfg, 100, steps), expected, rtol=1e-5)
  assert _rates(cfg, 100, [100])[0] == pytest.approx(0.02)


@pytest.mark.parametrize("warmup", [0, 10])
def test_one_cycle_rises_linearly_from_a_25th_then_anneals_to_its_floor(warmup):
  cfg = parse("--learning_rate=0.5", "--lr_schedule=one_cycle", "--final_learning_rate=0.001",
              f"--warmup_steps={warmup}")
  up = warmup or 30  # 30% of a 100-step run by default
  steps = np.array([0, up // 2, up, (up + 100) // 2, 100])
  start = 0.5 / 25
  expected = np.where(steps < up, start + (0.5 - start) * steps / up,
                      0.001 + 0.499 * 0.5 * (1 + np.cos(np.pi * (steps - up) / (100 - up))))
  np.testing.assert_allclose(_rates(cfg, 100, steps), expected, rtol=1e-5)


def test_step_schedule_cuts_at_each_boundary():
  cfg = parse("--learning_rate=0.4", "--lr_schedule=step", "--lr_boundaries=30,60",
              "--lr_decay_rate=0.5")
  np.testing.assert_allclose(_rates(cfg, 100, [0, 29, 30, 59, 60, 99]),
                             [0.4, 0.4, 0.2, 0.2, 0.1, 0.1], rtol=1e-6)


def test_plateau_is_the_peak_times_its_factor_above_the_floor():
  cfg = parse("--learning_rate=0.4", "--lr_schedule=plateau", "--final_learning_rate=0.01")
  factor = tf.Variable(0.5)
  assert _rates(cfg, 100, [50], factor)[0] == pytest.approx(0.2)
  factor.assign(0.001)
  assert _rates(cfg, 100, [50], factor)[0] == pytest.approx(0.01)


def test_nesterov_momentum_matches_its_formula():
  # accum = m * accum - lr * g; w += m * accum - lr * g (Keras's and TensorFlow's form),
  # on a variable large enough for the fused kernel and on a small one (Keras's ops).
  for shape in ((4,), (fused_optimizers.FUSE_MIN_ELEMENTS,)):
    opt = optimization.create_optimizer(parse("--optimizer=momentum", "--nesterov",
                                              "--momentum=0.8"), 0.1)
    assert opt.nesterov
    variable = keras.Variable(np.ones(shape, np.float32))
    opt.build([variable])
    w, accum = np.ones(shape), np.zeros(shape)
    rng = np.random.default_rng(0)
    for _ in range(3):
      g = rng.normal(size=shape).astype(np.float32)
      opt.apply([tf.constant(g)], [variable])
      accum = 0.8 * accum - 0.1 * g
      w = w + 0.8 * accum - 0.1 * g
    np.testing.assert_allclose(variable.numpy(), w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,cls", [("sgd", fused_optimizers.SGD),
                                      ("momentum", fused_optimizers.SGD),
                                      ("adam", fused_optimizers.Adam),
                                      ("adamw", fused_optimizers.AdamW),
                                      ("rmsprop", keras.optimizers.RMSprop)])
def test_optimizers(name, cls):
  decay = ["--weight_decay=0.01"] if name == "adamw" else []
  opt = optimization.create_optimizer(parse(f"--optimizer={name}", *decay), 0.1)
  assert type(opt) is cls
  if name == "momentum":
    assert opt.momentum == 0.9


def test_fp16_wraps_in_loss_scaling_and_weight_decay_spares_biases():
  opt = optimization.create_optimizer(
      parse("--weight_decay=0.1", "--optimizer=sgd"), 1.0, loss_scaling=True)
  assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
  kernel = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
  bias = keras.Variable(np.ones(2, np.float32), name="bias")
  inner = opt.inner_optimizer
  inner.build([kernel, bias])
  inner.apply([tf.zeros((2, 2)), tf.zeros(2)], [kernel, bias])  # zero gradients: decay only
  assert float(kernel[0, 0]) < 1.0 and float(bias[0]) == 1.0


# --- fused update kernels: the same arithmetic as Keras's element-wise updates ------------

FUSED = {  # flags -> the fused op each variable's update must become
    "adam": (["--optimizer=adam"], "ResourceApplyAdam"),
    "adamw": (["--optimizer=adamw", "--weight_decay=0.1"], "ResourceApplyAdam"),
    "sgd": (["--optimizer=sgd"], "ResourceApplyGradientDescent"),
    "momentum": (["--optimizer=momentum"], "ResourceApplyKerasMomentum"),
}


def _keras_twin(opt):
  """The plain Keras optimizer (the fused class's Keras base) with the same settings."""
  base = next(c for c in type(opt).__mro__ if c.__module__.startswith("keras"))
  twin = base.from_config(opt.get_config())
  if opt.weight_decay:
    twin.exclude_from_weight_decay(var_names=optimization._NO_DECAY)
  return twin


def _grads(steps, replicas=1):
  """Kernel gradients of order 1; bias gradients of order epsilon, where Adam's update
  depends on where epsilon sits (outside the square root in Keras)."""
  rng = np.random.default_rng(0)
  return [[[rng.normal(size=(3, 4)).astype(np.float32),
            (1e-7 * rng.normal(size=4)).astype(np.float32)]
           for _ in range(replicas)] for _ in range(steps)]


def _train(opt, grads):
  """Applies grads[step][0] for each step; returns the variables and every slot."""
  kernel = keras.Variable(np.full((3, 4), 0.5, np.float32), name="kernel")
  bias = keras.Variable(np.full(4, 0.5, np.float32), name="bias")
  opt.build([kernel, bias])
  apply = tf.function(lambda g: opt.apply(g, [kernel, bias]))
  for step in grads:
    apply([tf.constant(g) for g in step[0]])
  return [v.numpy() for v in [kernel, bias, *opt.variables]]


@pytest.fixture
def fuse_all(monkeypatch):
  """Fused kernels for the tests' small variables too (normally Keras's ops below the
  size where fusing pays, FUSE_MIN_ELEMENTS)."""
  monkeypatch.setattr(fused_optimizers, "FUSE_MIN_ELEMENTS", 1)


def _fused_ops(opt, shape, op):
  variable = keras.Variable(np.ones(shape, np.float32))
  opt.build([variable])
  graph = tf.function(lambda g: opt.apply([g], [variable])).get_concrete_function(
      tf.TensorSpec(shape)).graph
  return [o.type for o in graph.get_operations()].count(op)


@pytest.mark.parametrize("name", list(FUSED))
def test_fused_kernels_match_keras_updates(name, fuse_all):
  flags, op = FUSED[name]
  fused = optimization.create_optimizer(parse(*flags), 0.05)
  grads = _grads(6)
  got, want = _train(fused, grads), _train(_keras_twin(fused), grads)
  assert len(got) == len(want)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # The fused kernel really runs: one op per variable in the traced update.
  assert _fused_ops(optimization.create_optimizer(parse(*flags), 0.05), (3, 4), op) == 1


def test_only_variables_large_enough_to_gain_are_fused():
  opt = lambda: optimization.create_optimizer(parse("--optimizer=adam"), 0.05)
  small, large = (10, 10), (fused_optimizers.FUSE_MIN_ELEMENTS // 64, 64)
  assert _fused_ops(opt(), small, "ResourceApplyAdam") == 0
  assert _fused_ops(opt(), large, "ResourceApplyAdam") == 1


def test_fused_adam_updates_every_replica_of_mirrored_variables(fuse_all):
  """Under MirroredStrategy the kernel must get each device's own component of the
  variable and of its slots: every component ends equal to a one-device run on the
  summed gradients."""
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  grads = _grads(4, replicas=2)
  with strategy.scope():
    kernel = keras.Variable(np.full((3, 4), 0.5, np.float32), name="kernel")
    bias = keras.Variable(np.full(4, 0.5, np.float32), name="bias")
    opt = optimization.create_optimizer(parse("--optimizer=adam"), 0.05)
    opt.build([kernel, bias])

  @tf.function
  def apply(per_replica):
    strategy.run(lambda g: opt.apply_gradients(zip(g, [kernel, bias])), args=(per_replica,))

  for step in grads:
    apply(strategy.experimental_distribute_values_from_function(
        lambda ctx, step=step: [tf.constant(g) for g in step[ctx.replica_id_in_sync_group]]))
  summed = [[[a + b for a, b in zip(*step)]] for step in grads]
  want = _train(keras.optimizers.Adam(0.05), summed)
  got = [kernel, bias, *opt.variables]
  assert len(got) == len(want)
  for variable, expected in zip(got, want):
    components = getattr(variable.value, "values", None) or (variable.value,)
    if variable.trainable or "iteration" not in variable.path:
      assert len(components) == 2
    for component in components:
      np.testing.assert_allclose(component.numpy(), expected, rtol=1e-5, atol=1e-6)
