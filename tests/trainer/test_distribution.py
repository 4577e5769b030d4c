"""Correctness under tf.distribute on logical CPU devices: the loss over the global batch,
regularization scaled, clipping after the all-reduce, fp16 finiteness agreed, checkpoints
across replica counts.

N replicas must train exactly like one device on the same global batch.
"""

import ast
import glob
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.run import distribute
from batches import train_on
from flag_helpers import build_trainer, parse

DATA = "synthetic:shape=12x12x1,classes=5,train=512,test=50"  # 50: not a multiple of 32
MODELS = {
    "mlp": ["--model=mlp", "--hidden_units=16,16"],
    "cnn": ["--model=cnn", "--filters=4,4", "--kernel_sizes=3,3", "--dense_units=8"],
}
VARIANTS = {
    "plain": [],
    "l2": ["--l2=0.01"],
    "weight_decay": ["--optimizer=adamw", "--weight_decay=0.5"],
    "clip": ["--clip_norm=0.05"],
    # Each replica draws its part of the global batch's masks: N replicas drop what one
    # device drops (the same mask on every replica would not).
    "dropout": ["--dropout=0.3"],
}
DEVICES = {1: ["--strategy=default"],
           2: ["--strategy=mirrored", "--devices=/cpu:0,/cpu:1"],
           4: ["--strategy=mirrored", "--devices=/cpu:0,/cpu:1,/cpu:2,/cpu:3"]}


def build(replicas, model_dir, *args):
  cfg = parse(f"--dataset={DATA}", "--batch_size=32", f"--model_dir={model_dir}",
              *DEVICES[replicas], *args)
  strategy = distribute.create_strategy(cfg)
  assert strategy.num_replicas_in_sync == replicas
  keras.utils.set_random_seed(cfg.seed)  # the same initial weights for every build
  return build_trainer(cfg, strategy)  # as train.py builds it: --pipeline and the others count


def weights(trainer):
  return [w.numpy() for w in trainer.state.model.weights]


def trajectory(trainer):
  """Metrics and weights after 1 step, then after 2 more (one tf.function call each)."""
  it = trainer.train_iterator()
  out = []
  for steps in (1, 2):
    out.append((trainer.run_steps(it, steps), weights(trainer)))
  return out


_reference = {}


def reference(tmp_path_factory, model, variant):
  if (model, variant) not in _reference:
    trainer = build(1, tmp_path_factory.mktemp("ref"), *MODELS[model], *VARIANTS[variant])
    _reference[(model, variant)] = trajectory(trainer)
  return _reference[(model, variant)]


def assert_same(a, b, rtol=1e-5, atol=1e-5):
  for (metrics_a, weights_a), (metrics_b, weights_b) in zip(a, b):
    assert metrics_a["loss"] == pytest.approx(metrics_b["loss"], rel=rtol, abs=1e-6)
    assert metrics_a["accuracy"] == pytest.approx(metrics_b["accuracy"], abs=1e-6)
    for wa, wb in zip(weights_a, weights_b):
      np.testing.assert_allclose(wa, wb, rtol=rtol, atol=atol)


@pytest.mark.parametrize("replicas", [2, 4])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("model", list(MODELS))
def test_replicas_train_like_one_device(tmp_path, tmp_path_factory, model, variant, replicas):
  trainer = build(replicas, tmp_path, *MODELS[model], *VARIANTS[variant])
  assert_same(trajectory(trainer), reference(tmp_path_factory, model, variant))


RESNET = ["--model=resnet", "--widths=4,8", "--blocks_per_stage=1"]


@pytest.mark.parametrize("replicas", [4])
def test_resnet_with_synchronized_batch_norm_trains_like_one_device(tmp_path, replicas):
  one = trajectory(build(1, tmp_path / "one", *RESNET))
  trainer = build(replicas, tmp_path / "many", *RESNET)
  many = trajectory(trainer)
  # Global statistics are all-reduced sums: equal to one device's up to rounding.
  assert_same(many, one, rtol=1e-4, atol=1e-5)
  moving = [w for w in trainer.state.model.weights if "moving" in w.path]
  assert len(moving) == 2 * 6  # mean and variance of: stem, 2 + 3 in the two blocks
  for weight in moving:
    replicas_values = [v.numpy() for v in
                       trainer.strategy.experimental_local_results(weight.value)]
    for value in replicas_values[1:]:
      np.testing.assert_array_equal(value, replicas_values[0])


def test_per_replica_batch_norm_is_what_differs(tmp_path):
  # Without synchronization the moving statistics differ per replica: the test above
  # would see it.
  trainer = build(2, tmp_path, *RESNET, "--nosync_batch_norm")
  trajectory(trainer)
  weight = next(w for w in trainer.state.model.weights if "moving_mean" in w.path)
  first, second = (v.numpy() for v in trainer.strategy.experimental_local_results(weight.value))
  assert np.abs(first - second).max() > 1e-6


@pytest.mark.parametrize("replicas", [2, 4])
def test_tf_data_pipeline_replicas_train_like_one_device(tmp_path, replicas):
  one = trajectory(build(1, tmp_path / "one", *MODELS["mlp"], "--pipeline=tf_data"))
  many = trajectory(build(replicas, tmp_path / "many", *MODELS["mlp"], "--pipeline=tf_data"))
  assert_same(many, one)


def test_tf_data_and_in_memory_augment_alike_on_2_replicas(tmp_path):
  # A rerun may switch between the two (run_record.py): the same batches, augmented per
  # replica with the same seeds (tf_data once augmented the global batch with replica 0's).
  augment = ("--augment=crop=2,flip,erase", *MODELS["mlp"])
  tf_data = trajectory(build(2, tmp_path / "a", *augment, "--pipeline=tf_data"))
  in_memory = trajectory(build(2, tmp_path / "b", *augment, "--pipeline=in_memory"))
  assert_same(tf_data, in_memory)


@pytest.mark.parametrize("variant", ["l2", "weight_decay", "clip", "dropout"])
def test_each_variant_changes_training(tmp_path_factory, variant):
  # Otherwise the equivalence above would not show that the variant is handled correctly.
  plain = reference(tmp_path_factory, "mlp", "plain")[-1][1]
  other = reference(tmp_path_factory, "mlp", variant)[-1][1]
  assert max(np.abs(a - b).max() for a, b in zip(plain, other)) > 1e-4


@pytest.mark.parametrize("replicas", [2, 4])
def test_eval_accuracy_under_replicas_matches_numpy(tmp_path, replicas):
  trainer = build(replicas, tmp_path, *MODELS["cnn"])
  trainer.run_steps(trainer.train_iterator(), 5)
  test = trainer.data.splits["test"]
  logits = trainer.state.model(test.images.astype(np.float32) / 255.0).numpy()
  expected_accuracy = np.mean(np.argmax(logits, -1) == test.labels)
  log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                              keepdims=True)) - logits.max(1, keepdims=True)
  expected_loss = -np.mean(log_probs[np.arange(len(test)), test.labels])
  result = trainer.evaluate("test")
  assert result.accuracy == pytest.approx(expected_accuracy, abs=1e-6)
  assert result.loss == pytest.approx(expected_loss, rel=1e-5)
  # Per example, gathered from every replica and put back in the split's order.
  np.testing.assert_array_equal(result.predictions, np.argmax(logits, -1))
  np.testing.assert_allclose(result.losses, -log_probs[np.arange(len(test)), test.labels],
                             rtol=1e-4, atol=1e-6)
  assert trainer.evaluate("test") is result  # cached until the weights change
  trainer.run_steps(trainer.train_iterator(), 1)
  assert trainer.evaluate("test") is not result



def test_fp16_overflow_on_one_replica_skips_the_step_on_every_replica(tmp_path):
  trainer = build(2, tmp_path, *MODELS["mlp"], "--mixed_precision=mixed_float16")
  strategy, opt = trainer.strategy, trainer.state.optimizer
  trainer.run_steps(trainer.train_iterator(), 2)  # a normal start
  local = lambda v: [x.numpy() for x in strategy.experimental_local_results(v._value)]
  before = [local(w) for w in trainer.state.model.trainable_weights]
  scale, iterations = float(local(opt.dynamic_scale)[0]), int(opt.iterations.numpy())
  step = int(trainer.state.global_step.numpy())
  # One global batch whose last example, which goes to replica 1 only, holds an inf pixel.
  images = np.random.default_rng(0).random((32, 12, 12, 1), np.float32)
  images[-1, 0, 0, 0] = np.inf
  train_on(trainer, images, np.zeros(32, np.int32))
  for weight, old in zip(trainer.state.model.trainable_weights, before):
    for replica_now, replica_before in zip(local(weight), old):
      np.testing.assert_array_equal(replica_now, replica_before)  # skipped everywhere
      assert np.isfinite(replica_now).all()
  assert [float(s) for s in local(opt.dynamic_scale)] == [scale / 2] * 2
  assert int(opt.iterations.numpy()) == iterations  # Keras does not count a skipped step...
  assert int(trainer.state.global_step.numpy()) == step + 1  # ...tapeloop's global step does


def test_bf16_under_replicas_trains_with_float32_variables(tmp_path):
  trainer = build(2, tmp_path, *MODELS["cnn"], "--mixed_precision=mixed_bfloat16",
                  "--learning_rate=0.01")
  it = trainer.train_iterator()
  losses = [trainer.run_steps(it, 8)["loss"] for _ in range(4)]
  assert losses[-1] < losses[0] * 0.9, losses
  assert {w.dtype for w in trainer.state.model.weights} == {"float32"}
  assert trainer.state.model.features[0].compute_dtype == "bfloat16"


def test_checkpoint_from_2_replicas_resumes_identically_under_1_and_4(tmp_path):
  two = build(2, tmp_path / "a", *MODELS["mlp"], "--l2=0.001")
  it = two.train_iterator()
  two.run_steps(it, 3)
  two.state.checkpoints.save(3)
  for name in ("b", "c"):
    shutil.copytree(tmp_path / "a", tmp_path / name)
  two.run_steps(it, 3)
  one = build(1, tmp_path / "b", *MODELS["mlp"], "--l2=0.001")
  four = build(4, tmp_path / "c", *MODELS["mlp"], "--l2=0.001")
  for trainer in (one, four):
    assert int(trainer.state.global_step.numpy()) == 3  # restored, not from scratch
    trainer.run_steps(trainer.train_iterator(), 3)
    assert int(trainer.state.global_step.numpy()) == 6
    for wa, wb in zip(weights(two), weights(trainer)):
      np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gpus,expected", [(0, "default"), (1, "one_device"), (8, "mirrored")])
def test_auto_strategy(gpus, expected):
  assert distribute.resolve("auto", gpus) == expected
  assert distribute.resolve("mirrored", 0) == "mirrored"


def test_auto_on_cpu_logs_the_default_strategy(tmp_path, caplog):
  from absl import logging
  cfg = parse(f"--dataset={DATA}", f"--model_dir={tmp_path}")  # resets absl's verbosity
  old = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)  # absl drops INFO below its own verbosity
  caplog.set_level("INFO", logger="absl")
  try:
    assert distribute.create_strategy(cfg) is tf.distribute.get_strategy()
  finally:
    logging.set_verbosity(old)
  assert "strategy: _DefaultDistributionStrategy (--strategy=auto), 1 replica(s)" in caplog.text


def test_models_and_input_pipeline_know_nothing_of_strategies():
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for package in ("models", "input_pipeline"):
    for path in glob.glob(os.path.join(root, package, "*.py")):
      tree = ast.parse(open(path).read())
      for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
          names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
          assert not any(n.split(".")[0] == "trainer" for n in names), path
        if isinstance(node, ast.Attribute):
          assert node.attr not in ("distribute", "get_replica_context"), (path, node.attr)
        if isinstance(node, ast.Name):
          assert "strategy" not in node.id.lower(), (path, node.id)


def test_an_eval_that_takes_a_while_says_it_started(tmp_path, monkeypatch):
  from trainer.inner import evaluator
  monkeypatch.setattr(evaluator, "_EVAL_NOTICE_SECONDS", 0.0)  # every eval counts as long here
  said = []
  monkeypatch.setattr(evaluator.logging, "info", lambda message, *args: said.append(message % args))
  trainer = build(1, tmp_path, *MODELS["mlp"])
  trainer.evaluate("test")  # the first call also traces: well past a 0 s notice
  assert "evaluating 50 test examples at step 0 ..." in said
  monkeypatch.setattr(evaluator, "_EVAL_NOTICE_SECONDS", 60.0)
  said.clear()
  trainer.run_steps(trainer.train_iterator(), 1)
  trainer.evaluate("test")  # done long before its notice: nothing said
  assert not [s for s in said if s.startswith("evaluating")]


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_clipping_all_reduces_the_gradients_once(tmp_path, monkeypatch, precision):
  calls = []
  real = tf.distribute.ReplicaContext.all_reduce

  def counting(self, reduce_op, value, options=None):
    weights = trainer.state.model.trainable_weights
    if isinstance(value, (list, tuple)) and len(value) == len(weights):
      calls.append(len(value))
    return real(self, reduce_op, value, options)
  monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", counting)
  trainer = build(2, tmp_path, *MODELS["mlp"], "--clip_norm=0.05",
                  f"--mixed_precision={precision}")
  trainer.run_steps(trainer.train_iterator(), 1)  # traces the step once per replica
  assert len(calls) == 2  # one gradient all-reduce per replica, not two


def _gathers(trainer):
  """(params dtype, device) of every GatherV2 in the traced in-memory training loop."""
  concrete = trainer.loop.function.get_concrete_function()
  graph_def = concrete.graph.as_graph_def()
  nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
  return [(tf.dtypes.as_dtype(n.attr["Tparams"].type).name, n.device)
          for n in nodes if n.op == "GatherV2"]


@pytest.mark.parametrize("replicas", [2, 4])
def test_every_replica_gathers_its_batch_from_a_copy_on_its_own_device(tmp_path, replicas):
  trainer = build(replicas, tmp_path, *MODELS["mlp"])
  devices = list(trainer.strategy.extended.worker_devices)
  for table in trainer.feed.tables:  # resident on each device: no per-step copy of the data
    assert [t.device for t in trainer.strategy.experimental_local_results(table)] == devices
  assert trainer.feed.data.nbytes == 512 * (12 * 12 + 4)  # uint8 pixels, int32 labels
  gathers = _gathers(trainer)
  # Two gathers (images, labels) per replica, each on its replica's device, of float32
  # words (GPUs have no uint8 gather kernel: it would run on the host, then copy).
  assert sorted(gathers) == sorted(("float32", d) for d in devices for _ in range(2))
