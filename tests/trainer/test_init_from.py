"""--init_from: a new run starts from another run's, a checkpoint's or a weights file's values,
matched by variable path and shape, bit for bit; the head is new for another class count;
the table is kept; a resumed run ignores it; bad sources end in one line."""

import dataclasses
import hashlib
import os
import shutil

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.legacy.saving import legacy_h5_format

import models
from models import paths, pretrained
from trainer.inner import freezing, init_from
from trainer.process.errors import ConfigError
from trainer.run import dry_run, run_files, run_record, train
from flag_helpers import build_trainer, parse
from runs import read_text

CNN = ["--model=cnn", "--filters=4", "--kernel_sizes=3", "--dense_units=8"]
RUN = [*CNN, "--batch_size=16", "--train_steps=2", "--eval_images=false"]
DATA10 = "--dataset=synthetic:shape=12x12x1,classes=10,train=32,test=16"
DATA5 = "--dataset=synthetic:shape=12x12x1,classes=5,train=32,test=16"


def _cnn(classes=10, shape=(12, 12, 1), precision="float32"):
  return models.create("cnn", num_classes=classes, image_shape=shape, precision=precision,
                       filters=[4], kernel_sizes=[3], dense_units=[8])


def _values(model):
  return {p: w.numpy() for p, w in paths.variable_paths(model).items()}


def _checkpoint_values(prefix, root="model"):
  reader = tf.train.load_checkpoint(prefix)
  return {path: reader.get_tensor(key)
          for path, key in paths.checkpoint_keys(reader, root).items()}


def _assert_equal(model_values, source, skip_head=True):
  compared = 0
  for path, value in model_values.items():
    if skip_head and paths.is_head(path):
      continue
    np.testing.assert_array_equal(value, source[path], err_msg=path)
    assert value.dtype == source[path].dtype
    compared += 1
  assert compared


def _trainer(*args, **kwargs):
  keras.utils.set_random_seed(0)  # as train_and_evaluate: the fresh head is reproducible
  return build_trainer(parse(*args), **kwargs)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """A 10-class run of a small CNN, 2 steps."""
  model_dir = str(tmp_path_factory.mktemp("init") / "source")
  train.train_and_evaluate(parse(*RUN, DATA10, f"--model_dir={model_dir}"))
  return model_dir


@pytest.fixture(scope="module")
def tuned_run(source_run):
  """A 5-class run started from source_run."""
  model_dir = os.path.join(os.path.dirname(source_run), "tuned")
  train.train_and_evaluate(parse(*RUN, DATA5, f"--model_dir={model_dir}",
                                 f"--init_from={source_run}"))
  return model_dir


def test_restored_bit_for_bit_and_the_head_new(source_run, tmp_path):
  source = _checkpoint_values(os.path.join(source_run, "checkpoints", "ckpt-2"))
  fresh = _values(_trainer(*RUN, DATA5, f"--model_dir={tmp_path}/fresh").state.model)
  trainer = _trainer(*RUN, DATA5, f"--model_dir={tmp_path}/new", f"--init_from={source_run}")
  started = _values(trainer.state.model)
  _assert_equal(started, source)
  for path in started:  # the body is the source's, not a fresh start's; the head is fresh
    same = np.array_equal(started[path], fresh[path])
    assert same == paths.is_head(path), path
  assert trainer.initialized.restored == [p for p in started if not paths.is_head(p)]
  assert not os.path.exists(tmp_path / "new")  # building the Trainer writes nothing


def test_the_table_in_model_dir_and_tensorboard(source_run, tuned_run):
  text = open(os.path.join(tuned_run, "init_from.txt")).read()
  prefix = os.path.join(source_run, "checkpoints", "ckpt-2")
  assert text.startswith(f"--init_from={source_run}: checkpoint {prefix} of a --model=cnn run\n"
                         "restored 4 of 6 variables, ")
  lines = text.splitlines()
  assert any(l.split() == ["restored", "features_0/kernel", "3x3x1x4", "36"] for l in lines)
  assert any(l.split() == ["new", "head", "logits/kernel", "shape", "8x10", "->", "8x5", "40"]
             for l in lines)
  (markdown,) = read_text(os.path.join(tuned_run, "train"), "init_from")
  assert "| restored | features_0/kernel | 3x3x1x4 | 36 |  |" in markdown
  assert "| new head | logits/bias | shape 10 -> 5 | 5 |  |" in markdown


def test_a_dry_run_reads_and_matches_the_source_and_writes_nothing(source_run, tmp_path):
  said = dry_run.report(parse(*RUN, DATA5, f"--model_dir={tmp_path}/m", "--dry_run",
                              f"--init_from={source_run}"))
  prefix = os.path.join(source_run, "checkpoints", "ckpt-2")
  assert said.splitlines()[-1] == (
      "init_from: restored 4 of 6 variables, 3,248 of 3,293 parameters from checkpoint "
      f"{prefix} of a --model=cnn run")
  with pytest.raises(ConfigError, match="no such directory, file or checkpoint prefix"):
    dry_run.report(parse(*RUN, DATA5, f"--model_dir={tmp_path}/m", "--dry_run",
                         f"--init_from={tmp_path}/gone"))
  assert not os.path.exists(tmp_path / "m")


def test_a_runs_kept_best_by_its_directory(source_run, tmp_path):
  run = tmp_path / "run"
  (run / "best").mkdir(parents=True)
  for name in os.listdir(os.path.join(source_run, "checkpoints")):
    if name.startswith("ckpt-2."):  # as --keep_best keeps it: model_dir/best/ckpt-STEP
      shutil.copy(os.path.join(source_run, "checkpoints", name), run / "best" / name)
  shutil.copy(os.path.join(source_run, "flags.json"), run / "flags.json")
  model = _cnn()
  report = init_from.initialize(model, str(run / "best"), "cnn")
  assert report.what == f"checkpoint {run}/best/ckpt-2 of a --model=cnn run"
  _assert_equal(_values(model), _checkpoint_values(str(run / "best" / "ckpt-2")), False)


def test_a_deeper_models_weights_are_found_where_the_optimizer_holds_them(tmp_path):
  """A ResNet's kernels are deeper in the model than in the optimizer's list: the
  checkpoint names them by the optimizer's path (optimizer/_trainable_variables/N)."""
  resnet = ["--model=resnet", "--widths=4", "--blocks_per_stage=1", "--batch_size=16",
            "--train_steps=1", "--eval_images=false"]
  train.train_and_evaluate(parse(*resnet, DATA10, f"--model_dir={tmp_path}/source"))
  prefix = str(tmp_path / "source" / "checkpoints" / "ckpt-1")
  source = models.create("resnet", num_classes=10, image_shape=(12, 12, 1), widths=[4],
                         blocks_per_stage=1)
  tf.train.Checkpoint(model=source).read(prefix).expect_partial()  # by the object graph
  trainer = _trainer(*resnet, DATA5, f"--model_dir={tmp_path}/new",
                     f"--init_from={tmp_path}/source")
  _assert_equal(_values(trainer.state.model), _values(source))
  assert trainer.initialized.restored == [p for p in _values(source) if not paths.is_head(p)]


def test_the_head_is_kept_only_for_the_same_classes(source_run, tmp_path):
  """A head of the same shape is the source's only when its run had these classes: 5 of
  one dataset's classes are not 5 others (the transfer from classes 0-4 to 5-9)."""
  source = _checkpoint_values(os.path.join(source_run, "checkpoints", "ckpt-2"))
  every = "--classes=" + ",".join(map(str, range(10)))  # all of them: the same classes
  same = _trainer(*RUN, DATA10, every, f"--model_dir={tmp_path}/same",
                  f"--init_from={source_run}")
  _assert_equal(_values(same.state.model), source, skip_head=False)
  subset = "--classes=0,1,2,3,4,5,6,7,9,8"  # the same 10, another order: another head
  other = _trainer(*RUN, DATA10, subset, f"--model_dir={tmp_path}/o", f"--init_from={source_run}")
  started = _values(other.state.model)
  assert not np.array_equal(started["logits/kernel"], source["logits/kernel"])
  assert [r[:3] for r in other.initialized.rows if paths.is_head(r[1])] == [
      ("new head", p, f"other classes (the source's: {DATA10[10:]})")
      for p in ("logits/kernel", "logits/bias")]


def test_a_damaged_newest_checkpoint_gives_the_one_before(source_run, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(source_run, run, ignore=shutil.ignore_patterns("export*", "events*"))
  folder = run / "checkpoints"
  for name in os.listdir(folder):  # the source's checkpoint as an earlier one, ckpt-1
    if name.startswith("ckpt-2."):
      shutil.copy(folder / name, folder / name.replace("ckpt-2", "ckpt-1"))
  newest = folder / "ckpt-2.data-00000-of-00001"
  newest.write_bytes(newest.read_bytes()[:10])  # killed while it was written
  model = _cnn()
  report = init_from.initialize(model, str(run), "cnn")
  assert report.what == f"checkpoint {folder}/ckpt-1 of a --model=cnn run"
  _assert_equal(_values(model), _checkpoint_values(str(folder / "ckpt-1")), False)


def test_a_resumed_run_ignores_it(tuned_run, tmp_path):
  saved = _checkpoint_values(os.path.join(tuned_run, "checkpoints", "ckpt-2"))
  # A source that no longer exists: a new run would refuse it, a resumed one never reads it.
  trainer = _trainer(*RUN, DATA5, f"--model_dir={tuned_run}", f"--init_from={tmp_path}/gone")
  assert trainer.state.step == 2 and trainer.initialized is None
  _assert_equal(_values(trainer.state.model), saved, skip_head=False)


def test_a_rerun_with_another_source_is_refused(tuned_run, source_run):
  recorded = run_files.read_record(tuned_run)
  assert recorded["init_from"] == source_run
  run_record.check(parse(*RUN, DATA5, f"--model_dir={tuned_run}",
                         f"--init_from={source_run}"), recorded)
  with pytest.raises(ConfigError, match=r"--init_from=\S+ -> \S+best"):
    run_record.check(parse(*RUN, DATA5, f"--model_dir={tuned_run}",
                           f"--init_from={source_run}/best"), recorded)


def test_every_replica_starts_from_the_source(source_run, tmp_path):
  source = _checkpoint_values(os.path.join(source_run, "checkpoints", "ckpt-2"))
  trainer = _trainer(*RUN, DATA10, f"--model_dir={tmp_path}/m", f"--init_from={source_run}",
                     "--strategy=mirrored", "--devices=/cpu:0,/cpu:1")
  for path, weight in paths.variable_paths(trainer.state.model).items():
    replicas = weight.value.values
    assert len(replicas) == 2
    for replica in replicas:
      np.testing.assert_array_equal(replica.numpy(), source[path], err_msg=path)


def test_precision_keeps_float32_variables(source_run, tmp_path):
  source = _checkpoint_values(os.path.join(source_run, "checkpoints", "ckpt-2"))
  trainer = _trainer(*RUN, DATA10, f"--model_dir={tmp_path}/bf16", f"--init_from={source_run}",
                     "--mixed_precision=mixed_bfloat16")
  assert trainer.state.model.compute_dtype == "bfloat16"
  _assert_equal(_values(trainer.state.model), source, skip_head=False)  # float32 too
  # A source saved by a bfloat16 run, into a float32 run.
  bf16 = _cnn(precision="mixed_bfloat16")
  prefix = tf.train.Checkpoint(model=bf16).write(str(tmp_path / "bf16_ckpt" / "ckpt-1"))
  trainer = _trainer(*RUN, DATA10, f"--model_dir={tmp_path}/f32", f"--init_from={prefix}")
  _assert_equal(_values(trainer.state.model), _values(bf16), skip_head=False)


def test_the_weight_average_starts_from_the_source(tmp_path):
  # A source with an average (--ema_decay): its average is what is taken, as its evals did.
  weights, average = _cnn(), _cnn()
  prefix = tf.train.Checkpoint(model=weights, ema=average).write(str(tmp_path / "src" / "ckpt-1"))
  trainer = _trainer(*RUN, DATA10, f"--model_dir={tmp_path}/m", f"--init_from={prefix}",
                     "--ema_decay=0.9")
  _assert_equal(_values(trainer.state.model), _values(average), skip_head=False)
  _assert_equal(_values(trainer.state.ema.model), _values(average), skip_head=False)
  assert "its weight average (--ema_decay)" in trainer.initialized.what


def test_the_source_whitening_wins_over_the_data_fit(tmp_path):
  airbench = ["--model=airbench", "--widths=4,4", "--batch_size=16", "--train_steps=1",
              "--dataset=synthetic:shape=8x8x1,classes=4,train=32,test=8"]
  fitted = _trainer(*airbench, f"--model_dir={tmp_path}/fit").state.model.whiten.kernel.numpy()
  source = models.create("airbench", num_classes=4, image_shape=(8, 8, 1), widths=[4, 4])
  source.whiten.kernel.assign(np.random.default_rng(0).normal(size=fitted.shape))
  prefix = tf.train.Checkpoint(model=source).write(str(tmp_path / "src" / "ckpt-1"))
  started = _trainer(*airbench, f"--model_dir={tmp_path}/m", f"--init_from={prefix}").state.model
  np.testing.assert_array_equal(started.whiten.kernel.numpy(), source.whiten.kernel.numpy())
  assert not np.array_equal(fitted, source.whiten.kernel.numpy())


def test_a_keras_weights_file(tmp_path):
  keras.utils.set_random_seed(1)
  source = _cnn()
  source.save_weights(str(tmp_path / "source.weights.h5"))
  keras.utils.set_random_seed(2)
  model = _cnn(classes=5)
  report = init_from.initialize(model, str(tmp_path / "source.weights.h5"), "cnn")
  _assert_equal(_values(model), _values(source))
  assert report.rows[-2][:3] == ("new head", "logits/kernel", "shape 8x10 -> 8x5")
  assert report.unused == []


class _Wrapped(keras.Model):
  """As the standard networks: a functional keras.applications `backbone`, a `logits` head."""

  def __init__(self, classes):
    super().__init__()
    self.backbone = _mobilenet()
    self.pool = keras.layers.GlobalAveragePooling2D()
    self.logits = keras.layers.Dense(classes)

  def call(self, x):
    return self.logits(self.pool(self.backbone(x)))


def _mobilenet():
  """A small functional network named as keras.applications names its layers (the real
  ones take seconds to build; the layout and the reading do not depend on the size)."""
  inputs = keras.Input((32, 32, 3))
  x = keras.layers.Conv2D(16, 3, strides=2, name="conv")(inputs)
  x = keras.layers.BatchNormalization(name="conv_bn")(x)
  x = keras.layers.DepthwiseConv2D(3, name="expanded_conv_depthwise")(x)
  x = keras.layers.BatchNormalization(name="expanded_conv_depthwise_bn")(x)
  x = keras.layers.Conv2D(8, 1, name="expanded_conv_project")(x)
  return keras.Model(inputs, x, name="tiny_mobilenet")


def _published_file(path, rename=False):
  """A weights file in keras.applications' published layout, by Keras's own legacy writer,
  from the network built with weights=None; rename: its layers named otherwise (as Keras 2
  named MobileNetV3's). Returns the network."""
  network = _mobilenet()
  for weight in network.weights:
    weight.assign(np.random.default_rng(len(weight.path)).normal(size=weight.shape))
  if rename:
    for layer in network.layers:
      layer.name = "k2_" + layer.name
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, network)
  return network


@pytest.mark.parametrize("rename", [False, True])
def test_the_published_legacy_layout_loads(tmp_path, rename):
  network = _published_file(str(tmp_path / "notop.h5"), rename)
  model = _Wrapped(5)
  model(np.zeros((1, 32, 32, 3), np.float32))
  if rename:  # a pattern freezing part of a layer (gamma, not beta) changes Keras's legacy
    # order of its weights, not where the file's go (the run freezes before it restores)
    freezing.Freezing(model, "gamma").freeze()
  report = init_from.initialize(model, str(tmp_path / "notop.h5"), "mobilenet_v3_small")
  for ours, theirs in zip(model.backbone.weights, network.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  assert [row[0] for row in report.rows] == ["restored"] * len(network.weights) + ["skipped"] * 2
  assert report.rows[-1][1:3] == ("logits/bias", "missing")
  first = report.rows[0][1]
  assert first.startswith("backbone/") and report.names[first] == (
      "k2_conv/conv/kernel" if rename else "conv/conv/kernel")
  assert report.text().splitlines()[2].split() == ["restored", first, "3x3x3x16", "432",
                                                    report.names[first]]
  assert ("paired in order" in report.what) == rename


def test_imagenet_from_the_cache_a_download_or_one_line_offline(tmp_path, monkeypatch):
  published = pretrained.IMAGENET["mobilenet_v3_small"]
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
  calls = []

  def offline(*args, **kwargs):
    calls.append((args, kwargs))
    raise Exception(f"URL fetch failure on {published.url}: None -- [Errno -3] no network")
  monkeypatch.setattr(keras.utils, "get_file", offline)
  model = _Wrapped(5)
  model(np.zeros((1, 32, 32, 3), np.float32))
  with pytest.raises(ConfigError) as error:
    init_from.initialize(model, "imagenet", "mobilenet_v3_small")
  assert str(error.value) == (
      f"--init_from=imagenet: cannot fetch {published.file} from {published.url} (URL fetch "
      "failure on it: None -- [Errno -3] no network); offline, download it on a connected "
      f"machine and pass --init_from=/path/to/{published.file}")
  assert calls[0][0] == (published.file, published.url)

  def download(fname, origin, cache_subdir, file_hash, cache_dir):
    _published_file(os.path.join(cache_dir, cache_subdir, fname))
    return os.path.join(cache_dir, cache_subdir, fname)
  monkeypatch.setattr(keras.utils, "get_file", download)
  assert init_from.initialize(model, "imagenet", "mobilenet_v3_small").restored
  cached = os.path.join(tmp_path, "keras", "models", published.file)
  with open(cached, "rb") as f:  # the stand-in is what is published, by its MD5
    monkeypatch.setitem(pretrained.IMAGENET, "mobilenet_v3_small", dataclasses.replace(
        published, md5=hashlib.md5(f.read()).hexdigest()))
  monkeypatch.setattr(keras.utils, "get_file", offline)  # now cached: no download asked
  report = init_from.initialize(model, "imagenet", "mobilenet_v3_small")
  assert report.what.startswith("ImageNet weights legacy Keras .h5 file ")
  assert len(calls) == 1
  with open(cached, "r+b") as f:  # a download killed part-way: fetched again, and offline
    f.truncate(1000)  # the line says to delete it
  with pytest.raises(ConfigError, match=f"; the copy in Keras's cache, {cached}, is "
                     "incomplete or damaged: delete it; offline, download it"):
    init_from.initialize(model, "imagenet", "mobilenet_v3_small")
  assert len(calls) == 2


def test_a_source_of_other_image_channels_is_refused_naming_the_shapes(tmp_path):
  # (The command line's one line, exit 2 and untouched model_dir: tests/trainer/
  # test_cli_errors.py, with the other bad sources.)
  rgb = tf.train.Checkpoint(model=_cnn(shape=(12, 12, 3))).write(str(tmp_path / "rgb" / "c-1"))
  with pytest.raises(ConfigError) as error:
    init_from.initialize(_cnn(), rgb, "cnn")
  assert str(error.value) == (
      f"--init_from={rgb}: features_0/kernel has shape 3x3x3x4 there and 3x3x1x4 in this "
      "--model=cnn: the source took 3-channel images, this run's have 1")
  # A later layer's input channels are another width, listed, not the images' channels.
  wider = models.create("cnn", num_classes=10, image_shape=(12, 12, 1), filters=[4, 3],
                        kernel_sizes=[3, 3], dense_units=[8])
  prefix = tf.train.Checkpoint(model=wider).write(str(tmp_path / "wider" / "c-1"))
  narrower = models.create("cnn", num_classes=10, image_shape=(12, 12, 1), filters=[4, 6],
                           kernel_sizes=[3, 3], dense_units=[8])
  rows = init_from.initialize(narrower, prefix, "cnn").rows
  assert rows[2][:3] == ("skipped", "features_2/kernel", "shape 3x3x4x3 -> 3x3x4x6")
