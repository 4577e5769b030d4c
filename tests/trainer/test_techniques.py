"""EMA, label smoothing, Mixup/CutMix and gradient accumulation inside the trainer,
against references computed apart from it, on 1 and 2 logical devices."""

import types

import keras

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline.in_memory import IndexStream
from input_pipeline.mixing import Mix, mix_batch
from input_pipeline.preprocess import augment_seed, normalize
from trainer.inner import feeds
from trainer.run import distribute
from batches import train_on
from flag_helpers import build_trainer, parse

DATA = "synthetic:shape=12x12x1,classes=5,train=512,test=50"
MLP = ["--model=mlp", "--hidden_units=16,16"]
SGD = ["--optimizer=sgd", "--learning_rate=0.5"]
DEVICES = {1: ["--strategy=default"], 2: ["--strategy=mirrored", "--devices=/cpu:0,/cpu:1"]}


def build(replicas, model_dir, *args):
  model = [] if any(a.startswith("--model=") for a in args) else MLP
  cfg = parse(f"--dataset={DATA}", "--batch_size=32", f"--model_dir={model_dir}",
              *DEVICES[replicas], *model, *args)
  strategy = distribute.create_strategy(cfg)
  keras.utils.set_random_seed(cfg.seed)  # the same initial weights for every build
  return build_trainer(cfg, strategy)


def replica_values(trainer, variables):
  """[variable][replica] values."""
  return [[v.numpy() for v in trainer.strategy.experimental_local_results(w.value)]
          for w in variables]


# --- EMA ------------------------------------------------------------------------------


def test_ema_after_k_steps_is_the_closed_form_on_every_replica(tmp_path, replicas=2):
  decay = 0.35  # reached from the 4th update on (the warm-up: 2/11, 3/12, 4/13)
  trainer = build(replicas, tmp_path, *SGD, f"--ema_decay={decay}")
  history = [[w.numpy() for w in trainer.state.model.weights]]  # w_0: where the average starts
  it = trainer.train_iterator()
  for _ in range(6):
    trainer.run_steps(it, 1)
    history.append([w.numpy() for w in trainer.state.model.weights])
  for j, average in enumerate(replica_values(trainer, trainer.state.ema.model.weights)):
    # ema_n = d_n ema_(n-1) + (1 - d_n) w_n, d_n = min(decay, (1 + n) / (10 + n)), ema_0 = w_0:
    # written out, ema_k = prod(d) w_0 + sum_i (1 - d_i) prod_(m > i)(d_m) w_i.
    d = [min(decay, (1 + n) / (10 + n)) for n in range(1, len(history))]
    expected = np.prod(d) * history[0][j] + sum(
        (1 - d[i - 1]) * np.prod(d[i:]) * history[i][j] for i in range(1, len(history)))
    for value in average:  # each replica's copy
      np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
  # The average is not the weights (the test would pass trivially if it were).
  assert np.abs(trainer.state.ema.model.weights[0].numpy() - history[-1][0]).max() > 1e-4


def test_ema_is_what_evals_and_the_eval_raw_are_what_the_model_gives(tmp_path):
  trainer = build(2, tmp_path, *SGD, "--ema_decay=0.5")
  trainer.run_steps(trainer.train_iterator(), 5)
  test = trainer.data.splits["test"]
  images = normalize(test.images).numpy()
  for raw, model in ((False, trainer.state.ema.model), (True, trainer.state.model)):
    expected = np.mean(np.argmax(model(images).numpy(), -1) == test.labels)
    result = trainer.evaluate("test", raw=raw)
    assert result.accuracy == pytest.approx(expected, abs=1e-6)
    np.testing.assert_array_equal(result.predictions, np.argmax(model(images).numpy(), -1))
  assert trainer.state.eval_model is trainer.state.ema.model
  assert trainer.evaluate("test").loss != trainer.evaluate("test", raw=True).loss
  # One report writes both: the EMA's figures to the run, the raw weights' beside.
  written = []
  trainer.evaluator.writer = types.SimpleNamespace(
      enabled=True, scalars=lambda run, step, values: written.append((run, step, values)))
  trainer.evaluator.pictures = False
  trainer.evaluator.report("test", run="eval")
  assert written == [("eval_raw", 5, trainer.evaluate("test", raw=True).metrics()),
                     ("eval", 5, trainer.evaluate("test").metrics())]


def test_a_skipped_fp16_step_leaves_the_ema_on_every_replica(tmp_path):
  trainer = build(2, tmp_path, "--ema_decay=0.5", "--mixed_precision=mixed_float16")
  trainer.run_steps(trainer.train_iterator(), 2)
  before = replica_values(trainer, trainer.state.ema.model.weights)
  images = np.random.default_rng(0).random((32, 12, 12, 1), np.float32)
  images[-1, 0, 0, 0] = np.inf  # replica 1's batch only
  train_on(trainer, images, np.zeros(32, np.int32))
  assert trainer.state.step == 3 and trainer.state.loss_scale < 2.0 ** 15
  for now, old in zip(replica_values(trainer, trainer.state.ema.model.weights), before):
    for a, b in zip(now, old):
      np.testing.assert_array_equal(a, b)
  images[-1, 0, 0, 0] = 0.5  # a good step moves it again
  train_on(trainer, images, np.zeros(32, np.int32))
  moved = replica_values(trainer, trainer.state.ema.model.weights)
  assert any(np.abs(a[0] - b[0]).max() > 0 for a, b in zip(moved, before))


def test_a_run_with_ema_resumes_to_the_same_weights_and_average(tmp_path):
  args = ("--ema_decay=0.7", "--mixup=0.2", "--label_smoothing=0.1", "--augment=crop=2")
  straight = build(2, tmp_path / "straight", *args)
  it = straight.train_iterator()
  straight.run_steps(it, 3)
  straight.run_steps(it, 3)
  first = build(2, tmp_path / "resumed", *args)
  first.run_steps(first.train_iterator(), 3)
  first.state.checkpoints.save(3)
  resumed = build(2, tmp_path / "resumed", *args)  # restores model, EMA, optimizer, step
  assert resumed.state.step == 3
  resumed.run_steps(resumed.train_iterator(), 3)
  assert resumed.state.weights_digest() == straight.state.weights_digest()
  for a, b in zip(resumed.state.ema.model.weights, straight.state.ema.model.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_ema_turned_on_for_a_run_without_it_starts_from_the_restored_weights(tmp_path):
  # What a rerun with --ema_decay --allow_changed_flags=ema_decay restores: no average in
  # the checkpoint (it was refused as "does not match this model").
  first = build(2, tmp_path, *SGD)
  first.run_steps(first.train_iterator(), 3)
  first.state.checkpoints.save(3)
  resumed = build(2, tmp_path, *SGD, "--ema_decay=0.9")
  assert resumed.state.step == 3
  for average, weights in zip(replica_values(resumed, resumed.state.ema.model.weights),
                              replica_values(resumed, resumed.state.model.weights)):
    for a, w in zip(average, weights):
      np.testing.assert_array_equal(a, w)
  np.testing.assert_array_equal(resumed.state.model.weights[0].numpy(),
                                first.state.model.weights[0].numpy())
  resumed.run_steps(resumed.train_iterator(), 2)
  assert np.abs(resumed.state.ema.model.weights[0].numpy()
                - resumed.state.model.weights[0].numpy()).max() > 0


# --- label smoothing and mixing -------------------------------------------------------


@pytest.mark.parametrize("replicas,extra", [
    (2, ["--label_smoothing=0.2"]),
    (1, ["--mixup=0.4", "--cutmix=1.0", "--label_smoothing=0.1"]),
    (2, ["--mixup=0.4", "--cutmix=1.0", "--label_smoothing=0.1"])])
def test_one_step_matches_a_reference_of_per_replica_targets(tmp_path, replicas, extra):
  """The step's SGD update against one computed here: each replica's half of the global
  batch mixed with its own seed, smoothed targets, cross-entropy averaged over the batch."""
  trainer = build(replicas, tmp_path, *SGD, *extra)
  cfg = trainer.config
  weights = [w.numpy() for w in trainer.state.model.trainable_weights]
  indices = IndexStream(512, 32, cfg.seed).take(1)[0]
  train = trainer.data.splits["train"]
  per_replica = 32 // replicas
  with tf.GradientTape() as tape:
    loss = 0.0
    for r in range(replicas):
      part = indices[r * per_replica:(r + 1) * per_replica]
      images = normalize(train.images[part])
      targets = np.eye(5, dtype=np.float32)[train.labels[part]]
      targets = targets * (1 - cfg.label_smoothing) + cfg.label_smoothing / 5  # numpy
      if cfg.mixing:
        seed = tf.random.experimental.stateless_fold_in(augment_seed(cfg.seed, r, 0), 4)
        images, targets = mix_batch(images, tf.constant(targets),
                                    Mix(cfg.mixup, cfg.cutmix, cfg.mix_probability), seed)
      logits = trainer.state.model(images, training=True)
      log_probs = tf.nn.log_softmax(logits)
      loss += -tf.reduce_sum(targets * log_probs) / 32
  grads = tape.gradient(loss, trainer.state.model.trainable_weights)
  logs = trainer.run_steps(trainer.train_iterator(), 1)
  assert logs["loss"] == pytest.approx(float(loss), rel=1e-5)  # the smoothed/mixed loss
  for w, w0, g in zip(trainer.state.model.trainable_weights, weights, grads):
    np.testing.assert_allclose(w.numpy(), w0 - 0.5 * g.numpy(), rtol=1e-4, atol=1e-6)


def test_label_smoothing_is_on_the_training_loss_only(tmp_path):
  trainer = build(1, tmp_path, "--label_smoothing=0.3")
  trainer.run_steps(trainer.train_iterator(), 3)
  test = trainer.data.splits["test"]
  logits = trainer.state.model(normalize(test.images)).numpy()
  log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  expected = -np.mean(log_probs[np.arange(len(test)), test.labels])  # the label's alone
  assert trainer.evaluate("test").loss == pytest.approx(expected, rel=1e-5)


def test_replicas_mix_with_their_own_draws(tmp_path):
  cfg = parse(f"--dataset={DATA}", "--mixup=1.0", "--cutmix=1.0")
  seeds = [tf.random.experimental.stateless_fold_in(augment_seed(cfg.seed, r, 0), 4)
           for r in (0, 1)]
  images = tf.random.stateless_uniform([16, 12, 12, 1], [1, 2])
  targets = tf.one_hot(tf.range(16) % 5, 5)
  mix = Mix(cfg.mixup, cfg.cutmix)
  a, b = (mix_batch(images, targets, mix, s)[1].numpy() for s in seeds)
  assert not np.allclose(a, b)


@pytest.mark.parametrize("replicas", [1, 2])
def test_every_feed_hands_the_step_the_same_ready_batch(tmp_path, replicas):
  """Augmented, mixed and smoothed in the feed: the step gets the same images, labels and
  targets from the in-memory tables as from tf.data, on every replica, from any position."""
  trainer = build(replicas, tmp_path, "--augment=translate=2,flip,erase=0.5", "--mixup=0.4",
                  "--cutmix=1.0", "--label_smoothing=0.1", "--steps_per_loop=2")
  memory = trainer.feed
  data = feeds.TfDataFeed(trainer.strategy, memory.split, batch=32, seed=memory.seed,
                          augment=memory.augment, targets=memory.targets)
  assert memory.targets.soft and isinstance(memory, feeds.InMemoryFeed)

  def ready(feed, position=5, steps=3):
    batches = []
    for window, n in feed.windows(feed.iterator(position), steps):
      for i in range(n):
        at = tf.constant(position + len(batches), tf.int64)
        batch = trainer.strategy.run(feed.prepare, (at, feed.batch_at(window, i)))
        batches.append([[t.numpy() for t in trainer.strategy.experimental_local_results(x)]
                        for x in batch])
    return batches
  for a, b in zip(ready(memory), ready(data), strict=True):
    for x, y in zip(a, b):  # images, labels, targets of each replica
      for r in range(replicas):
        np.testing.assert_allclose(x[r], y[r], rtol=1e-6, atol=1e-7)
  assert 0 < a[2][0].min() and a[2][0].max() < 1  # soft targets: smoothed and mixed


# --- gradient accumulation ------------------------------------------------------------


def trajectory(trainer):
  it = trainer.train_iterator()
  out = []
  for steps in (1, 2):
    logs = trainer.run_steps(it, steps)
    out.append((logs, [w.numpy() for w in trainer.state.model.weights]))
  return out


_one_big_step = {}


def big_step_reference(tmp_path_factory, extra):
  key = tuple(extra)
  if key not in _one_big_step:
    _one_big_step[key] = trajectory(build(1, tmp_path_factory.mktemp("big"), "--batch_size=64",
                                          *extra))
  return _one_big_step[key]


ACCUMULATION_VARIANTS = {
    "plain": [],
    "l2_clip_momentum": ["--l2=0.01", "--clip_norm=0.05", "--optimizer=momentum",
                         "--nesterov"],
    # Augmentation and mixing draw for the replica's whole batch, before it is split.
    "augment_mix_smooth": ["--augment=crop=2,erase=0.5", "--mixup=0.4",
                           "--label_smoothing=0.1"],
}


# On 2 replicas mixing draws per replica, unlike one device: that case is the next test.
@pytest.mark.parametrize("variant,replicas", [("plain", 1), ("plain", 2),
                                              ("l2_clip_momentum", 2),
                                              ("augment_mix_smooth", 1)])
def test_k_micro_batches_update_like_one_step_on_k_times_the_batch(tmp_path, tmp_path_factory,
                                                                   replicas, variant):
  extra = ACCUMULATION_VARIANTS[variant]
  trainer = build(replicas, tmp_path, "--batch_size=16", "--accumulation_steps=4", *extra)
  assert trainer.config.step_batch == 64 and trainer.plan.steps_per_epoch == 512 // 64
  reference = big_step_reference(tmp_path_factory, extra)
  for (logs, weights), (ref_logs, ref_weights) in zip(trajectory(trainer), reference):
    assert logs["loss"] == pytest.approx(ref_logs["loss"], rel=1e-5)
    assert logs["accuracy"] == pytest.approx(ref_logs["accuracy"], abs=1e-6)
    for a, b in zip(weights, ref_weights):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert int(trainer.state.optimizer.iterations.numpy()) == 3  # one update per step


def test_accumulation_with_mixing_on_two_replicas_is_two_replicas_without_it(tmp_path):
  extra = ACCUMULATION_VARIANTS["augment_mix_smooth"]
  accumulated = build(2, tmp_path / "k", "--batch_size=16", "--accumulation_steps=4", *extra)
  whole = build(2, tmp_path / "one", "--batch_size=64", *extra)
  for (logs, weights), (ref_logs, ref_weights) in zip(trajectory(accumulated),
                                                      trajectory(whole)):
    assert logs["loss"] == pytest.approx(ref_logs["loss"], rel=1e-5)
    for a, b in zip(weights, ref_weights):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_an_fp16_overflow_in_one_micro_batch_skips_the_update_on_every_replica(tmp_path):
  trainer = build(2, tmp_path, "--batch_size=16", "--accumulation_steps=2",
                  "--mixed_precision=mixed_float16")
  trainer.run_steps(trainer.train_iterator(), 2)
  before = replica_values(trainer, trainer.state.model.trainable_weights)
  scale, iterations = trainer.state.loss_scale, int(trainer.state.optimizer.iterations.numpy())
  # A step's global batch is 32: replica 1 gets the last 16, its second micro-batch the
  # last 8. One inf pixel there.
  images = np.random.default_rng(0).random((32, 12, 12, 1), np.float32)
  images[-1, 0, 0, 0] = np.inf
  train_on(trainer, images, np.zeros(32, np.int32))
  for now, old in zip(replica_values(trainer, trainer.state.model.trainable_weights), before):
    for a, b in zip(now, old):
      np.testing.assert_array_equal(a, b)
  assert trainer.state.loss_scale == scale / 2
  assert int(trainer.state.optimizer.iterations.numpy()) == iterations
  assert trainer.state.step == 3


def test_batch_norm_and_dropout_act_per_micro_batch(tmp_path):
  # Documented: their batch statistics and masks are a micro-batch's, so a model with
  # batch norm does not train exactly like the big batch (the equality above is for
  # models without it).
  resnet = ["--model=resnet", "--widths=4", "--blocks_per_stage=1"]
  a = build(1, tmp_path / "a", "--batch_size=16", "--accumulation_steps=4", *resnet)
  b = build(1, tmp_path / "b", "--batch_size=64", *resnet)
  wa, wb = trajectory(a)[-1][1], trajectory(b)[-1][1]
  assert max(np.abs(x - y).max() for x, y in zip(wa, wb)) > 1e-5
