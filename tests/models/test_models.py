import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from models import names
from models.common import InputTooSmall

POLICIES = ["float32", "mixed_float16", "mixed_bfloat16"]
COMPUTE = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}

# Exact parameter counts, worked out by hand (weights + biases; BN counts 4 per channel).
MLP_CONFIGS = [
    # name: 784*50+50 + 50*10+10
    ("1x50", dict(hidden_units=(50,)), 39_760),
    # 784*500+500 + 500*10+10
    ("1x500", dict(hidden_units=(500,)), 397_510),
    # 39250 + 4*(50*50+50) + 510
    ("5x50", dict(hidden_units=(50,) * 5), 49_960),
    ("5x50 dropout", dict(hidden_units=(50,) * 5, dropout=0.2), 49_960),
    # 392500 + 4*(500*500+500) + 5010
    ("5x500 dropout", dict(hidden_units=(500,) * 5, dropout=0.2), 1_399_510),
]


@pytest.mark.parametrize("name,hparams,count", MLP_CONFIGS, ids=[c[0] for c in MLP_CONFIGS])
def test_tutorial_mlps_parameter_counts(name, hparams, count):
  model = models.create("mlp", num_classes=10, image_shape=(28, 28, 1), **hparams)
  assert model.count_params() == count


def test_mlp_dropout_is_active_only_in_training():
  model = models.create("mlp", num_classes=10, image_shape=(28, 28, 1), hidden_units=(50,),
                        dropout=0.5)
  x = np.random.default_rng(0).random((4, 28, 28, 1), np.float32)
  np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
  assert not np.allclose(model(x, training=True), model(x, training=False))


def test_cnn_default_is_the_tutorial_cnn():
  model = models.create("cnn", num_classes=10, image_shape=(28, 28, 1))
  # conv 5*5*1*25+25, conv 5*5*25*25+25, conv 4*4*25*25+25, dense 25*50+50, logits 50*10+10
  assert model.count_params() == 650 + 15_650 + 10_025 + 1_300 + 510 == 28_135
  convs = [l for l in model.features if type(l).__name__ == "Conv2D"]
  assert [(c.filters, c.kernel_size) for c in convs] == [(25, (5, 5)), (25, (5, 5)), (25, (4, 4))]


def test_cnn_configurable():
  model = models.create("cnn", num_classes=10, image_shape=(28, 28, 1), filters=(8, 16),
                        kernel_sizes=(3, 3), dense_units=(32,), dropout=0.25)
  # conv 3*3*1*8+8, conv 3*3*8*16+16 -> 11x11x16 flatten 1936, dense 1936*32+32, logits 330
  assert model.count_params() == 80 + 1_168 + 61_984 + 330
  with pytest.raises(ValueError, match="same length"):
    models.create("cnn", num_classes=10, image_shape=(28, 28, 1), filters=(8,), kernel_sizes=(3, 3))


def test_cnn_pools_before_its_relu_with_relu_then_pool_values_and_gradients():
  from models.cnn import ReluMaxPool
  # Negative everywhere in some windows (ReLU's zeros tie there) and mixed in others.
  x = tf.constant(np.random.default_rng(0).normal(-0.5, 1, (4, 12, 12, 3)), tf.float32)
  reference = lambda t: keras.layers.MaxPooling2D(2)(tf.nn.relu(t))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    ours, theirs = ReluMaxPool(2)(x), reference(x)
    weights = tf.random.stateless_normal(ours.shape, (1, 2))
    loss_ours, loss_theirs = tf.reduce_sum(ours * weights), tf.reduce_sum(theirs * weights)
  np.testing.assert_array_equal(ours, theirs)
  assert float(tf.reduce_min(ours)) == 0.0 and float(tf.reduce_max(ours)) > 0
  np.testing.assert_array_equal(tape.gradient(loss_ours, x), tape.gradient(loss_theirs, x))
  # In bf16 only (float32's conv fuses its ReLU); the weights the same either way.
  bf16 = models.create("cnn", num_classes=10, image_shape=(28, 28, 1),
                       precision="mixed_bfloat16")
  assert [type(l).__name__ for l in bf16.features[:2]] == ["Conv2D", "ReluMaxPool"]
  assert bf16.features[0].activation.__name__ == "linear"
  f32 = models.create("cnn", num_classes=10, image_shape=(28, 28, 1))
  assert [type(l).__name__ for l in f32.features[:2]] == ["Conv2D", "MaxPooling2D"]
  assert [w.path.split("/", 1)[1] for w in bf16.weights] == [
      w.path.split("/", 1)[1] for w in f32.weights]


# airbench's norms have no scale; a 16-bit activation goes into the kernel as it is.
@pytest.mark.parametrize("scale,policy", [(True, "float32"), (False, "float32"),
                                          (True, "mixed_bfloat16")])
def test_fused_batch_norm_trains_as_keras_batch_norm(scale, policy):
  from models.common import BatchNormalization
  dtype = COMPUTE[policy]
  x = tf.constant(np.random.default_rng(0).normal(2, 3, (8, 5, 5, 4)), dtype)
  ours = BatchNormalization(momentum=0.9, scale=scale, dtype=policy)
  theirs = keras.layers.BatchNormalization(momentum=0.9, scale=scale, dtype=policy)
  ours.build(x.shape), theirs.build(x.shape)
  for a, b in zip(ours.weights, theirs.weights):  # away from the initial 0s and 1s
    b.assign(b + tf.random.stateless_normal(b.shape, (0, 1))), a.assign(b)
  weights = tf.random.stateless_normal(x.shape, (2, 3))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    y_ours, y_theirs = ours(x, training=True), theirs(x, training=True)
    f32 = lambda t: tf.cast(t, tf.float32)
    loss_ours = tf.reduce_sum(f32(y_ours) * weights)
    loss_theirs = tf.reduce_sum(f32(y_theirs) * weights)
  close = lambda a, b, tol=2e-5: np.testing.assert_allclose(f32(a), f32(b), rtol=tol, atol=tol)
  assert y_ours.dtype == y_theirs.dtype == dtype
  # bfloat16 has 8 bits of mantissa: one rounding apart at most.
  activations = 2e-5 if dtype == "float32" else 1.6e-2
  close(y_ours, y_theirs, activations)
  close(tape.gradient(loss_ours, x), tape.gradient(loss_theirs, x), activations)
  for a, b in zip(tape.gradient(loss_ours, ours.trainable_weights),
                  tape.gradient(loss_theirs, theirs.trainable_weights)):
    close(a, b)
  for a, b in zip(ours.non_trainable_weights, theirs.non_trainable_weights):  # moving stats
    close(a, b)
  assert not np.allclose(ours.moving_variance, 1 + 0 * ours.moving_variance)
  close(ours(x, training=False), theirs(x, training=False), activations)  # Keras's own


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 1.6e-2)])
def test_compiled_gelu_is_kerass_forward_and_back(dtype, tol):
  from models.common import gelu
  x = tf.cast(tf.linspace(-6.0, 6.0, 997), dtype)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    ours, theirs = gelu(x, training=True), keras.ops.gelu(x)
    weights = tf.cast(tf.linspace(1.0, 2.0, 997), dtype)
    loss_ours, loss_theirs = tf.reduce_sum(ours * weights), tf.reduce_sum(theirs * weights)
  f32 = lambda t: np.asarray(tf.cast(t, tf.float32))
  assert ours.dtype == theirs.dtype == dtype
  np.testing.assert_allclose(f32(ours), f32(theirs), rtol=tol, atol=tol)
  np.testing.assert_allclose(f32(tape.gradient(loss_ours, x)),
                             f32(tape.gradient(loss_theirs, x)), rtol=tol, atol=tol)
  np.testing.assert_array_equal(gelu(x), theirs)  # inference: Keras's own ops


def test_resnet_parameter_count():
  model = models.create("resnet", num_classes=10, image_shape=(28, 28, 1))
  stem = 9 * 32 + 4 * 32
  stage1 = 2 * (2 * 9 * 32 * 32 + 2 * 4 * 32)
  stage2 = (9 * 32 * 64 + 9 * 64 * 64 + 32 * 64 + 3 * 4 * 64) + (2 * 9 * 64 * 64 + 2 * 4 * 64)
  stage3 = (9 * 64 * 128 + 9 * 128 * 128 + 64 * 128 + 3 * 4 * 128) + (2 * 9 * 128 * 128 + 2 * 4 * 128)
  assert model.count_params() == stem + stage1 + stage2 + stage3 + 128 * 10 + 10 == 698_282


@pytest.mark.parametrize("precision", POLICIES)
@pytest.mark.parametrize("name,hparams", [
    ("mlp", dict(hidden_units=(50, 50), dropout=0.2)),
    ("cnn", {}),
    ("resnet", dict(widths=(8, 16), blocks_per_stage=1)),
    ("airbench", dict(widths=(8, 8, 8))),
])
def test_float32_logits_under_every_policy(name, hparams, precision):
  model = models.create(name, num_classes=7, image_shape=(28, 28, 1), precision=precision,
                        **hparams)
  assert model.image_shape == (28, 28, 1)
  logits = model(np.zeros((3, 28, 28, 1), np.float32), training=True)
  assert tuple(logits.shape) == (3, 7) and logits.dtype == "float32"
  # Hidden layers compute in the policy's dtype; every variable stays float32.
  hidden = [l for l in model._flatten_layers() if hasattr(l, "kernel") and l.name != "logits"]
  assert hidden and all(l.compute_dtype == COMPUTE[precision] for l in hidden)
  assert {v.dtype for v in model.trainable_variables} == {"float32"}


def test_other_input_shapes():
  # keras.applications' networks: tests/models/test_applications.py, at 32x32 and others.
  for name in ("mlp", "cnn", "resnet", "airbench"):
    model = models.create(name, num_classes=100, image_shape=(32, 32, 3))
    assert tuple(model(np.zeros((2, 32, 32, 3), np.float32)).shape) == (2, 100)


def test_l2_adds_regularization_losses():
  model = models.create("mlp", num_classes=10, image_shape=(4, 4, 1), hidden_units=(8,), l2=1e-3)
  model(np.ones((1, 4, 4, 1), np.float32))
  assert len(model.losses) == 2  # one per kernel


def test_registry_errors_list_what_is_known():
  with pytest.raises(ValueError, match="unknown model 'vgg'; known models: airbench, cnn, "
                     "efficientnet_v2_b0, mlp, mobilenet_v3_small, resnet, resnet50$"):
    models.create("vgg", num_classes=10, image_shape=(28, 28, 1))
  with pytest.raises(ValueError, match="takes no filters; it takes .*hidden_units"):
    models.create("mlp", num_classes=10, image_shape=(28, 28, 1), filters=(3,))
  with pytest.raises(ValueError, match="precision 'fp8'"):
    models.create("mlp", num_classes=10, image_shape=(28, 28, 1), precision="fp8")
  assert models.hyperparameters("mlp")["hidden_units"] == (500,)


@pytest.mark.parametrize("name,hparams", [
    ("mlp", dict(hidden_units=(8, 8), dropout=0.1)),
    ("cnn", dict(filters=(4, 4), kernel_sizes=(3, 3), dense_units=(8,))),
    ("resnet", dict(widths=(4, 8), blocks_per_stage=2)),
    ("airbench", dict(widths=(4, 8, 8))),
])
def test_a_model_only_checkpoint_holds_every_weight(tmp_path, name, hparams):
  # Layers kept in lists must be checkpoint children too, BN moving statistics included.
  def make(seed):
    keras.utils.set_random_seed(seed)
    return models.create(name, num_classes=3, image_shape=(12, 12, 1), **hparams)
  a = make(1)
  for w in a.non_trainable_weights:  # give BN statistics non-initial values
    w.assign(np.full(w.shape, 0.5, np.float32))
  path = tf.train.Checkpoint(model=a).save(str(tmp_path / "ckpt"))
  b = make(2)
  tf.train.Checkpoint(model=b).restore(path).assert_existing_objects_matched()
  assert len(a.weights) == len(b.weights)
  for wa, wb in zip(a.weights, b.weights):
    np.testing.assert_array_equal(wa.numpy(), wb.numpy(), err_msg=wa.path)
  saved = {n for n, _ in tf.train.list_variables(path) if n.startswith("model/")}
  assert len(saved) == len(a.weights)


@pytest.mark.parametrize("name,hparams", [
    ("mlp", dict(hidden_units=(8,))),
    ("cnn", dict(filters=(4, 4), kernel_sizes=(3, 3), dense_units=(8,))),
    ("resnet", dict(widths=(4, 8), blocks_per_stage=1)),
])
def test_models_also_train_under_keras_fit(name, hparams):
  # Keras fit opens root name scopes named after layers: a name like "_block_6" fails there.
  model = models.create(name, num_classes=3, image_shape=(12, 12, 1), **hparams)
  model.compile(optimizer="adam",
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  history = model.fit(np.zeros((16, 12, 12, 1), np.float32), np.zeros(16, np.int32),
                      batch_size=8, epochs=1, verbose=0)
  assert np.isfinite(history.history["loss"][0])


def test_summary_lists_each_layer_with_its_output_shape_and_parameters():
  from models import summary
  model = models.create("cnn", num_classes=10, image_shape=(28, 28, 1), dropout=0.5)
  rows = summary.table(model)
  assert [(name, shape, params) for name, _, shape, params in rows if params] == [
      ("conv_0", "(24, 24, 25)", 650), ("conv_1", "(8, 8, 25)", 15650),
      ("conv_2", "(1, 1, 25)", 10025), ("dense_0", "(50)", 1300), ("logits", "(10)", 510)]
  assert [kind for _, kind, _, _ in rows].count("Dropout") == 2
  assert sum(r[3] for r in rows) == model.count_params() == 28135
  assert "total: 28,135 parameters" in summary.console(rows)
  assert summary.markdown(rows).splitlines()[-1] == "| **total** | | | **28,135** |"
  # The recording is undone: the model still calls its layers' own methods.
  assert all("call" not in vars(layer) for layer in model._flatten_layers())


def test_the_names_module_knows_every_model_and_its_hyperparameters():
  # The flags are checked against models/names.py before TensorFlow loads: it must say
  # what the classes' signatures say.
  assert sorted(names.HYPERPARAMETERS) == sorted(models.MODELS)
  for name in models.MODELS:
    assert names.hyperparameters(name) == models.hyperparameters(name), name


@pytest.mark.parametrize("kernel_sizes", [(5, 5, 4), (3, 3, 3)])
def test_images_too_small_for_the_cnn_are_named_whichever_layer_empties(kernel_sizes):
  # 8x8 with 5x5 kernels empties a convolution (Keras's ValueError); with 3x3 kernels the
  # second pooling gets a 1x1 map, which oneDNN's kernel refuses as an op error.
  with pytest.raises(InputTooSmall, match="8x8 images are too small"):
    models.create("cnn", num_classes=4, image_shape=(8, 8, 1), filters=(4, 4, 4),
                  kernel_sizes=kernel_sizes)
