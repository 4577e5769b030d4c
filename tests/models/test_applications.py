"""keras.applications' networks as tapeloop models (models/applications.py): the same
network and weights as keras.applications', fed [0, 1] images; policy, batch norm, paths."""

import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.legacy.saving import legacy_h5_format

import models
from models import paths, summary
from models.common import Dropout, InputTooSmall
from datafiles import write_image_folder
from flag_helpers import build_trainer, parse
from runs import in_process, read_scalars
from trainer import predict
from trainer.inner.state import build_model
from trainer.process.errors import ConfigError
from trainer.run import distribute, planning, train
import input_pipeline

NETWORKS = {
    # name: (keras.applications constructor, its preprocess_input, a layer's kernel path)
    "resnet50": (keras.applications.ResNet50, keras.applications.resnet50.preprocess_input,
                 "backbone/conv1_conv/kernel"),
    "mobilenet_v3_small": (keras.applications.MobileNetV3Small,
                           keras.applications.mobilenet_v3.preprocess_input,
                           "backbone/conv/kernel"),
    "efficientnet_v2_b0": (keras.applications.EfficientNetV2B0,
                           keras.applications.efficientnet_v2.preprocess_input,
                           "backbone/stem_conv/kernel"),
}
COMPUTE = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def _non_initial(model, seed):
  """Gives every weight random values (BN statistics included, variances positive)."""
  rng = np.random.default_rng(seed)
  for w in model.weights:
    w.assign(rng.uniform(0.5, 1.0, w.shape).astype(np.float32) if "variance" in w.path
             else rng.normal(0, 0.05, w.shape).astype(np.float32))


def _reference(name, model, images_0_255, weights_file=None):
  """keras.applications' own network, given `model`'s backbone weights, on its own
  preprocess_input of 0..255 RGB images; then `model`'s pooling and head. weights_file:
  random weights instead, written there in the legacy .h5 layout keras.applications
  publishes its ImageNet weights in, and loaded into `model`'s backbone by layer name."""
  constructor, preprocess_input, _ = NETWORKS[name]
  network = constructor(input_shape=(None, None, 3), include_top=False, weights=None)
  if weights_file:
    _non_initial(network, 1)
    with h5py.File(weights_file, "w") as f:
      legacy_h5_format.save_weights_to_hdf5_group(f, network)
    model.backbone.load_weights(weights_file)
  else:
    network.set_weights(model.backbone.get_weights())
  features = network(preprocess_input(images_0_255.copy()), training=False)
  return model.logits(model.pool(features))


@pytest.mark.parametrize("name", NETWORKS)
def test_the_network_and_preprocessing_of_keras_applications_and_checkpoint_paths(tmp_path,
                                                                                 name):
  """Weights in keras.applications' published layout load into the backbone, and [0, 1]
  images then give what keras.applications' network gives on its preprocess_input of the
  same 0..255 images; variable paths are the Keras layer names and a checkpoint's keys."""
  model = models.create(name, num_classes=4, image_shape=(32, 32, 3))
  pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
  expected = _reference(name, model, pixels, weights_file=str(tmp_path / "published.h5"))
  np.testing.assert_allclose(model(pixels / 255.0, training=False), expected,
                             rtol=1e-4, atol=1e-4)
  # EfficientNet's stochastic depth: tapeloop's Dropout, which draws per replica.
  dropouts = [l for l in model.backbone.layers if isinstance(l, keras.layers.Dropout)]
  assert {type(l) for l in dropouts} == ({Dropout} if name == "efficientnet_v2_b0" else set())
  found = paths.variable_paths(model)
  assert len(found) == len(model.weights) and NETWORKS[name][2] in found
  assert list(found)[-2:] == ["logits/kernel", "logits/bias"]
  written = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
  assert set(paths.checkpoint_keys(tf.train.load_checkpoint(written))) == set(found)


@pytest.mark.parametrize("name", ["mobilenet_v3_small"])
def test_grayscale_is_repeated_to_rgb_at_any_size_from_32(name):
  model = models.create(name, num_classes=3, image_shape=(40, 48, 1))
  _non_initial(model, 2)
  grey = np.random.default_rng(1).integers(0, 256, (2, 40, 48, 1)).astype(np.float32)
  np.testing.assert_allclose(model(grey / 255.0, training=False),
                             _reference(name, model, np.repeat(grey, 3, axis=-1)),
                             rtol=1e-4, atol=1e-4)
  rows = summary.table(model)  # the console's and docs' table: the backbone's layers
  assert rows[0][1:3] == ("Rescaling", "(40, 48, 3)")
  assert rows[-1] == ("logits", "Dense", "(3)", 576 * 3 + 3)
  assert "InputLayer" not in {r[1] for r in rows}
  assert sum(r[3] for r in rows) == model.count_params()
  with pytest.raises(InputTooSmall, match="31x40 images are too small for MobileNetV3Small "
                     r"\(keras.applications' networks take 32x32 and up\)"):
    models.create(name, num_classes=3, image_shape=(31, 40, 3))
  # A run says it in one line, naming the flag that fixes it.
  info = input_pipeline.DatasetInfo("mnist", (28, 28, 1), 10, {"train": 1})
  with pytest.raises(ConfigError, match=r"^28x28 images are too small for MobileNetV3Small "
                     r"\(keras.applications' networks take 32x32 and up\): use a larger "
                     r"--image_size$"):
    build_model(parse(f"--model={name}"), info, "float32")
  # What --jit_compile=auto and --mixed_precision=auto pick for it, not claimed measured.
  cfg = parse(f"--model={name}", "--jit_compile=auto", "--mixed_precision=auto")
  assert planning.jit_mode(cfg, 1, "in_memory") == ("off", (
      f"auto: {name} not measured under XLA (its convolutions' gradients: oneDNN's are "
      "faster on CPU)"))
  assert planning.precision(cfg, distribute.create_strategy(cfg)) == (
      "float32", f"auto: {name} not measured in bfloat16 (ask for it)")


@pytest.mark.parametrize("precision,hparams", [
    ("mixed_float16", {}),
    ("mixed_bfloat16", dict(sync_batch_norm=True, bn_momentum=0.9, l2=1e-4, dropout=0.5)),
])
def test_policy_batch_norm_and_head(precision, hparams):
  model = models.create("mobilenet_v3_small", num_classes=3, image_shape=(32, 32, 3),
                        precision=precision, **hparams)
  layers = [l for l in model.backbone.layers if not isinstance(l, keras.layers.InputLayer)]
  assert {l.compute_dtype for l in layers} == {COMPUTE[precision]}
  assert {v.dtype for v in model.weights} == {"float32"}
  norms = [l for l in layers if isinstance(l, keras.layers.BatchNormalization)]
  assert {(l.synchronized, l.momentum) for l in norms} == {
      (hparams.get("sync_batch_norm", False), hparams.get("bn_momentum", 0.999))}
  logits = model(np.zeros((2, 32, 32, 3), np.float32), training=True)
  assert logits.dtype == "float32" and model.logits.dtype_policy.name == "float32"
  # l2 on every convolution kernel and the head's; the dropout before the head.
  kernels = sum(isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
                for l in layers)
  assert len(model.losses) == (kernels + 1 if "l2" in hparams else 0)
  assert (model.dropout is not None) == ("dropout" in hparams)


@pytest.mark.parametrize("name", ["mobilenet_v3_small"])
def test_a_checkpoint_restores_bit_exact_in_a_fresh_process(tmp_path, name):
  """Keras numbers unnamed layers per process: the paths must not depend on it."""
  model = models.create(name, num_classes=3, image_shape=(32, 32, 3))
  _non_initial(model, 3)
  prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
  script = (
      "import sys, numpy as np, tensorflow as tf, models\n"
      "from models import paths\n"
      f"m = models.create({name!r}, num_classes=3, image_shape=(32, 32, 3))\n"
      "tf.train.Checkpoint(model=m).read(sys.argv[1]).assert_consumed()\n"
      "np.savez(sys.argv[2], **{p.replace('/', '|'): w.numpy() "
      "for p, w in paths.variable_paths(m).items()})\n")
  out = str(tmp_path / "restored.npz")
  subprocess.run([sys.executable, "-c", script, prefix, out], check=True, timeout=300,
                 capture_output=True)
  restored = np.load(out)
  expected = paths.variable_paths(model)
  assert sorted(k.replace("|", "/") for k in restored.files) == sorted(expected)
  for path, weight in expected.items():
    np.testing.assert_array_equal(restored[path.replace("/", "|")], weight.numpy(),
                                  err_msg=path)



# Through tapeloop's own loop: the smallest network, at the smallest size, on a folder of
# RGB photographs of mixed sizes fitted to 32x32.
def test_mobilenet_trains_on_a_folder_like_on_one_device_and_exports_uint8_with_tta(tmp_path):
  write_image_folder(tmp_path / "photos", per_split=(("train", 8), ("test", 2)),
                     sizes=((36, 40), (32, 32), (48, 44)))
  # bn_momentum 0.5: moving statistics that follow the few steps, so evals and the export
  # see trained features (0.999's barely leave their start). No random crops: the
  # comparison below resumes mid-run.
  args = ["--model=mobilenet_v3_small", f"--dataset=folder:{tmp_path / 'photos'}",
          "--image_size=32", "--batch_size=8", "--train_steps=9", "--steps_per_loop=3",
          "--eval_every=9", "--optimizer=momentum", "--learning_rate=0.01",
          "--bn_momentum=0.5", "--augment=resized_crop=0", "--tta=flip",
          "--eval_images=false"]
  model_dir = str(tmp_path / "two")
  results = train.train_and_evaluate(parse(*args, "--strategy=mirrored",
                                           "--devices=/cpu:0,/cpu:1", f"--model_dir={model_dir}"))
  assert results["replicas"] == 2
  losses = read_scalars(os.path.join(model_dir, "train"))["loss"]
  assert sorted(losses) == [1, 3, 6, 9] and np.all(np.isfinite(list(losses.values())))
  assert losses[9] < losses[1]
  assert np.isfinite(results["test_loss"]) and "test_tta_accuracy" in results

  # One device, from the two replicas' checkpoint at step 3, takes the same 3 steps as
  # they did (their batch norm synchronized by default: global batch statistics).
  checkpoints = os.path.join(model_dir, "checkpoints")
  one = build_trainer(parse(*args, f"--model_dir={tmp_path / 'one'}"),
                      restore=os.path.join(checkpoints, "ckpt-3"))
  tf.config.run_functions_eagerly(True)  # the same step, without tracing it (seconds)
  try:
    one.run_steps(one.train_iterator(), 3)
  finally:
    tf.config.run_functions_eagerly(False)
  model = models.create("mobilenet_v3_small", num_classes=3, image_shape=(32, 32, 3),
                        bn_momentum=0.5, sync_batch_norm=True)
  tf.train.Checkpoint(model=model).read(os.path.join(checkpoints, "ckpt-6")).expect_partial()
  for path, weight in paths.variable_paths(one.state.model).items():
    np.testing.assert_allclose(weight.numpy(), paths.variable_paths(model)[path].numpy(),
                               rtol=1e-4, atol=1e-5, err_msg=path)
  tf.train.Checkpoint(model=model).read(os.path.join(checkpoints, "ckpt-9")).expect_partial()
  one = model

  # The export takes uint8 images and normalizes them as training did; its default
  # signature averages the flipped view in, which trainer.predict serves.
  data = input_pipeline.load(f"folder:{tmp_path / 'photos'}", image_size=(32, 32))
  images = data.splits["test"].images
  export = tf.saved_model.load(os.path.join(model_dir, "export"))
  plain = export.signatures["serving_plain"](images=tf.constant(images))["probabilities"]
  np.testing.assert_allclose(plain, tf.nn.softmax(one(images / 255.0)), atol=1e-5)
  assert np.ptp(plain, axis=0).max() > 1e-3  # the images are told apart
  both = export.signatures["serving_default"](images=tf.constant(images))["probabilities"]
  flipped = tf.nn.softmax(one(images[:, :, ::-1] / 255.0))
  np.testing.assert_allclose(both, (plain + flipped) / 2, atol=1e-5)
  output = str(tmp_path / "predictions.csv")
  predict_in_process(f"--model_dir={model_dir}", f"--output={output}")
  labels = np.loadtxt(output, delimiter=",", skiprows=1, dtype=np.int64)[:, 1]
  np.testing.assert_array_equal(labels, np.argmax(both, axis=1))


def predict_in_process(*args):
  """trainer.predict's main on these flags, in this process."""
  in_process(predict, *args)
