"""The techniques that buy epochs (airbench's): the whitening stem, identity starts,
alternating flips, a learning-rate multiplier for batch norm, batch norm's momentum, an
average updated every k steps and lookahead; each against what it promises."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import input_pipeline
import models
from flag_helpers import build_trainer, parse
from input_pipeline.in_memory import InMemoryData, IndexStream
from models.airbench import ConvGroup, PatchWhitening
from trainer.inner import feeds
from trainer.optim import ema
from trainer.process.errors import ConfigError

DATA = "synthetic:shape=12x12x1,classes=5,train=256,test=50"
AIRBENCH = ["--model=airbench", "--widths=8,8,8"]


def build(model_dir, *args, replicas=1):
  devices = (["--strategy=mirrored", "--devices=/cpu:0,/cpu:1"] if replicas == 2
             else ["--strategy=default"])
  cfg = parse(f"--dataset={DATA}", "--batch_size=32", f"--model_dir={model_dir}", *devices,
              *args)
  keras.utils.set_random_seed(cfg.seed)
  return build_trainer(cfg)


def _covariance(layer, images):
  half = layer.filters // 2  # the other half are their negatives
  out = tf.nn.conv2d(images, layer.kernel.numpy(), 1, "VALID").numpy()
  return np.cov(out.reshape(-1, layer.filters)[:, :half].T)


@pytest.mark.parametrize("kernel,channels", [(2, 1), (3, 3)])
def test_the_whitening_stem_whitens_the_training_patches(kernel, channels):
  rng = np.random.default_rng(0)
  noise = rng.random((300, 14, 14, channels)).astype(np.float32)
  images = noise + 0.5 * np.roll(noise, 1, axis=2)  # correlated pixels, as images have
  layer = PatchWhitening(kernel)
  layer.build(images.shape)
  assert np.abs(_covariance(layer, images) - np.eye(layer.filters // 2)).max() > 0.5
  layer.fit(images)
  covariance = _covariance(layer, images)
  np.testing.assert_allclose(covariance, np.eye(layer.filters // 2), atol=0.02)
  # Exactly: each direction's variance l scaled to l / (l + eps).
  eigenvalues = np.linalg.eigvalsh(np.cov(layer.patches(images.astype(np.float64)).T))
  np.testing.assert_allclose(np.diag(covariance), eigenvalues / (eigenvalues + layer.eps),
                             atol=2e-3)


def test_a_run_fits_the_stem_once_and_checkpoints_it_frozen(tmp_path, monkeypatch):
  trainer = build(tmp_path, *AIRBENCH, "--ema_decay=0.9")
  stem = trainer.state.model.whiten
  fitted = stem.kernel.numpy()
  images = trainer.data.splits["train"].images[:2000].astype(np.float32) / 255.0
  np.testing.assert_allclose(_covariance(stem, images), np.eye(stem.filters // 2), atol=0.1)
  np.testing.assert_array_equal(trainer.state.ema.model.whiten.kernel.numpy(), fitted)
  bias = stem.bias.numpy()
  trainer.run_steps(trainer.train_iterator(), 3)
  np.testing.assert_array_equal(stem.kernel.numpy(), fitted)  # frozen
  assert np.abs(stem.bias.numpy() - bias).max() > 0  # its bias learns
  trainer.state.checkpoints.save(trainer.state.step)
  # A restored run takes the checkpoint's filters and fits nothing.
  def refit(self, images):
    raise AssertionError("a restored run fitted the stem again")
  monkeypatch.setattr(PatchWhitening, "fit", refit)
  again = build(tmp_path, *AIRBENCH, "--ema_decay=0.9")
  np.testing.assert_array_equal(again.state.model.whiten.kernel.numpy(), fitted)
  assert again.state.step == 3


@pytest.mark.parametrize("shape,whiten", [((8, 8, 1), 2), ((28, 28, 1), 30)])
def test_images_too_small_for_airbench_are_one_clear_error(tmp_path, shape, whiten):
  with pytest.raises(ConfigError, match="too small for airbench's 3 conv groups"):
    cfg = parse(f"--dataset=synthetic:shape={'x'.join(map(str, shape))},train=64,test=8",
                "--model=airbench", f"--whiten={whiten}", "--batch_size=32",
                f"--model_dir={tmp_path}")
    build_trainer(cfg, tf.distribute.get_strategy())


def test_conv_groups_start_as_identities():
  group = ConvGroup(6, momentum=0.4, l2=0.0, sync=False)
  x = np.random.default_rng(1).random((2, 8, 8, 4)).astype(np.float32)
  group.build(x.shape)
  np.testing.assert_allclose(group.conv1(x)[..., :4], x, atol=1e-6)  # 4 of 6 filters
  y = np.random.default_rng(2).random((2, 4, 4, 6)).astype(np.float32)
  np.testing.assert_allclose(group.conv2(y), y, atol=1e-6)
  assert np.abs(group.conv1(x)[..., 4:]).max() > 0  # the others are drawn
  # --noidentity_init reaches every group: all their filters drawn (Glorot).
  model = models.create("airbench", num_classes=3, image_shape=(12, 12, 1),
                        widths=(6, 6, 6), identity_init=False)
  for group in model.groups:
    assert not np.allclose(group.conv2(y), y, atol=0.1)


@pytest.mark.parametrize("name,kwargs,momentum", [
    ("airbench", {}, 0.4), ("airbench", {"bn_momentum": 0.7}, 0.7),
    ("resnet", {"widths": (4, 8), "blocks_per_stage": 1}, 0.99),
    ("resnet", {"widths": (4, 8), "blocks_per_stage": 1, "bn_momentum": 0.8}, 0.8)])
def test_bn_momentum_reaches_every_batch_norm(name, kwargs, momentum):
  model = models.create(name, num_classes=3, image_shape=(12, 12, 1), **kwargs)
  norms = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
  assert len(norms) >= 4 and {l.momentum for l in norms} == {momentum}


def test_alternating_flips_flip_each_image_every_other_epoch():
  split = input_pipeline.load(DATA).splits["train"]
  augment = input_pipeline.Augment.parse("flip=alternating")
  feed = feeds.InMemoryFeed(tf.distribute.get_strategy(), split, batch=64, seed=3,
                            augment=augment, steps_per_loop=12)
  stream = IndexStream(len(split), 64, seed=3)
  indices, flips = (t.numpy() for t in feed._window(stream, 12))  # 3 epochs of 4 steps
  flipped = np.zeros((3, len(split)), bool)
  for step in range(12):
    flipped[step // 4, indices[step]] = flips[step]
  assert 0.35 < flipped[0].mean() < 0.65  # a random half first
  np.testing.assert_array_equal(flipped[1], ~flipped[0])
  np.testing.assert_array_equal(flipped[2], flipped[0])
  # The batch holds exactly those examples mirrored, the others as they are.
  data = InMemoryData(split, augment)
  images, _ = data.batch(tf.constant(indices[0]), tf.constant([0, 0], tf.int64),
                         flips=tf.constant(flips[0]))
  plain = split.images[indices[0]].astype(np.float32) / 255.0
  expected = np.where(flips[0][:, None, None, None], plain[:, :, ::-1], plain)
  np.testing.assert_allclose(images.numpy(), expected, atol=1e-7)


def test_alternating_flips_need_the_in_memory_pipeline(tmp_path):
  with pytest.raises(ConfigError, match="only --pipeline=in_memory knows"):
    build(tmp_path, "--augment=flip=alternating", "--pipeline=tf_data")


def _weights(trainer):
  """[(batch norm's?, value)] of the trainable weights, in order."""
  norms = {id(v) for layer in trainer.state.model._flatten_layers()
           if isinstance(layer, keras.layers.BatchNormalization) for v in layer.trainable_weights}
  return [(id(v) in norms, v.numpy()) for v in trainer.state.model.trainable_variables]


@pytest.mark.parametrize("optimizer", ["--optimizer=sgd", "--optimizer=momentum"])
def test_bn_lr_multiplier_multiplies_batch_norms_steps_only(tmp_path, optimizer):
  moves = []
  for k, multiplier in enumerate((1, 8)):
    trainer = build(tmp_path / str(k), *AIRBENCH, optimizer, "--learning_rate=0.01",
                    f"--bn_lr_multiplier={multiplier}")
    start = _weights(trainer)
    trainer.run_steps(trainer.train_iterator(), 1)  # same start, same batch, same gradient
    moves.append([(norm, w - w0) for (norm, w), (_, w0) in zip(_weights(trainer), start)])
  assert 0 < sum(norm for norm, _ in moves[0]) < len(moves[0])
  for (norm, move), (_, scaled) in zip(*moves):
    assert np.abs(move).max() > 0
    np.testing.assert_allclose(scaled, 8 * move if norm else move, rtol=1e-4, atol=1e-8)


def test_bn_lr_multiplier_is_refused_for_adaptive_optimizers():
  with pytest.raises(ConfigError, match="only for --optimizer=sgd or momentum"):
    parse("--bn_lr_multiplier=4", "--optimizer=adam")


def test_muon_trains_the_conv_filters_the_same_on_two_replicas(tmp_path):
  muon = [*AIRBENCH, "--optimizer=momentum", "--nesterov", "--learning_rate=0.01",
          "--muon_learning_rate=0.05", "--weight_decay=0.0005"]
  runs = []
  for replicas in (1, 2):
    trainer = build(tmp_path / str(replicas), *muon, replicas=replicas)
    for v in trainer.state.model.trainable_variables:
      if len(v.shape) == 4:  # identity init starts them at norm sqrt(out) already
        v.assign(3 * v)
    start = [v.numpy() for v in trainer.state.model.trainable_variables]
    trainer.run_steps(trainer.train_iterator(), 2)
    runs.append([(w0, v.numpy()) for w0, v in zip(start, trainer.state.model.trainable_variables)])
  filters = [(w0, w) for w0, w in runs[0] if w.ndim == 4]
  assert filters
  for w0, w in filters:
    # From norm 3 sqrt(out), rescaled to sqrt(out), then stepped by 0.05 x an update of at
    # most `out` singular values below 1.3.
    out = w.shape[-1]
    np.testing.assert_allclose(np.linalg.norm(w0), 3 * out ** 0.5, rtol=1e-5)
    assert abs(np.linalg.norm(w) - out ** 0.5) < 0.05 * 1.3 * out ** 0.5
  for (_, one), (_, two) in zip(*runs):
    np.testing.assert_allclose(two, one, rtol=1e-3, atol=2e-5)


def test_an_average_every_k_steps_with_lookahead(tmp_path):
  strategy = tf.distribute.get_strategy()
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  average = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  state = ema.EMA(model, average, 0.5, strategy, every=3, lookahead=True)
  w = model.weights[0]
  values = [w.numpy()]
  for n in range(1, 7):
    w.assign(w.numpy() + 1.0)  # what a step would do
    state.update(tf.constant(True), tf.constant(n, tf.int64))
    values.append(w.numpy())
  expected = values[0]
  for n in range(1, 7):
    if n % 3:  # between updates: the average stays, the weights move on
      np.testing.assert_array_equal(values[n], values[n - 1] + 1.0)
      continue
    decay = min(0.5, (1 + n) / (10 + n)) ** 3
    expected = decay * expected + (1 - decay) * (values[n - 1] + 1.0)
    np.testing.assert_allclose(values[n], expected, rtol=1e-6)  # lookahead: w := average
  np.testing.assert_allclose(average.weights[0].numpy(), expected, rtol=1e-6)


def test_ema_every_and_lookahead_need_the_average():
  with pytest.raises(ConfigError, match="apply to the average of --ema_decay"):
    parse("--ema_every=5")


def test_airbench_trains_alike_on_two_replicas(tmp_path):
  """Synchronized batch norm and the fitted stem: 2 replicas step as one device does."""
  args = (*AIRBENCH, "--optimizer=momentum", "--learning_rate=0.05", "--sync_batch_norm")
  one, two = build(tmp_path / "a", *args), build(tmp_path / "b", *args, replicas=2)
  for trainer in (one, two):
    trainer.run_steps(trainer.train_iterator(), 2)
  for a, b in zip(one.state.model.weights, two.state.model.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-4, atol=2e-5)
