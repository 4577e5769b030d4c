"""Training from streams (folders of images, TFDS record shards): the same training as in
memory, on several replicas, resumed exactly, and as a user runs it from the command line."""

import json
import logging
import os
import subprocess
import sys

import pytest

from datafiles import write_image_folder, write_tiny_tfds
from flag_helpers import parse
from runs import read_images, run
from input_pipeline.readers import folder
from trainer.process.errors import ConfigError
from trainer.run import train

CNN = ["--model=cnn", "--filters=4,4", "--kernel_sizes=3,3", "--dense_units=8"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  root = tmp_path_factory.mktemp("photos")
  write_image_folder(root, per_split=(("train", 12), ("test", 5)))
  return str(root)


def folder_run(photos, model_dir, *args):
  return train.train_and_evaluate(parse(
      *CNN, f"--dataset=folder:{photos}", "--image_size=16", "--batch_size=8",
      "--steps_per_loop=2", "--deterministic", "--eval_images=false",
      f"--model_dir={model_dir}", *args))


@pytest.mark.parametrize("augment", ["resized_crop=0", "resized_crop,flip"])
def test_a_stream_trains_exactly_like_memory(photos, tmp_path, augment):
  """The same examples in the same order, augmented with the same seeds, normalized to the
  same bits: equal weights, whether the folder is decoded into memory (gathered in the
  graph, or through tf.data) or read while training."""
  results = {p: folder_run(photos, tmp_path / p, f"--pipeline={p}", "--train_steps=9",
                           f"--augment={augment}", "--seed=3")
             for p in ("in_memory", "stream", "tf_data")}
  for pipeline in ("stream", "tf_data"):
    assert results[pipeline]["pipeline"] == pipeline
    assert results[pipeline]["weights_digest"] == results["in_memory"]["weights_digest"]
    assert results[pipeline]["test_loss"] == results["in_memory"]["test_loss"]


def test_a_stream_on_two_replicas_trains_like_one_device(photos, tmp_path):
  one = folder_run(photos, tmp_path / "one", "--pipeline=stream", "--train_steps=6",
                   "--strategy=default", "--augment=resized_crop=0")
  two = folder_run(photos, tmp_path / "two", "--pipeline=stream", "--train_steps=6",
                   "--strategy=mirrored", "--devices=/cpu:0,/cpu:1", "--augment=resized_crop=0")
  assert two["replicas"] == 2
  assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-5)
  assert two["test_accuracy"] == one["test_accuracy"]


def test_a_resumed_stream_continues_where_it_stopped(photos, tmp_path):
  straight = folder_run(photos, tmp_path / "straight", "--pipeline=stream",
                        "--train_steps=14")
  folder_run(photos, tmp_path / "resumed", "--pipeline=stream", "--train_steps=5")
  resumed = folder_run(photos, tmp_path / "resumed", "--pipeline=stream", "--train_steps=14")
  assert resumed["global_step"] == 14
  assert resumed["weights_digest"] == straight["weights_digest"]


def test_tfds_shards_stream_end_to_end(tmp_path):
  """A TFDS dataset of varying image sizes, 3 channels, read from its record shards."""
  name = write_tiny_tfds(tmp_path / "tfds")
  args = ["--model=mlp", "--hidden_units=16", f"--dataset={name}",
          f"--data_dir={tmp_path / 'tfds'}", "--image_size=12x10", "--batch_size=8",
          "--learning_rate=0.01", "--epochs=8", "--pipeline=stream", "--eval_images=false"]
  results = train.train_and_evaluate(parse(*args, f"--model_dir={tmp_path / 'run'}"))
  assert results["pipeline"] == "stream" and results["global_step"] == 48
  # The class is the dominant colour: well above chance (1/3) on the 13 test images.
  assert results["test_accuracy"] > 0.6


@pytest.fixture(scope="module")
def cli_run(photos, tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("cli") / "run")
  proc = run("trainer.main", "--model=resnet", "--widths=4,8", "--blocks_per_stage=1",
             f"--dataset=folder:{photos}", "--image_size=20x16", "--batch_size=6",
             "--epochs=2", "--memory_budget_gb=0.00001", f"--model_dir={model_dir}")
  return model_dir, proc


def test_cli_chooses_streaming_and_says_why(cli_run):
  model_dir, proc = cli_run
  assert ("input pipeline: stream, 0.00 GB decoded is more than the memory budget of 0.0 GB "
          "(--memory_budget_gb): streamed from its files") in proc.stderr
  assert "checked 51 images under" in proc.stderr
  assert "Traceback" not in proc.stderr
  with open(os.path.join(model_dir, "results.json")) as f:
    results = json.load(f)
  assert results["pipeline"] == "stream" and results["global_step"] == 12
  # The worst mistakes of a streamed eval split are read back from their files: 20x16
  # images upscaled 5 times in the grid.
  pictures = read_images(os.path.join(model_dir, "eval"))
  assert sorted(pictures["confusion_matrix"]) == [6, 12]
  assert pictures["worst_mistakes"] and all(
      grid.shape[0] >= 100 for grid in pictures["worst_mistakes"].values())


def test_export_takes_the_training_size_and_names_classes(cli_run, photos):
  model_dir, _ = cli_run
  code = f"""
import numpy as np, tensorflow as tf
serve = tf.saved_model.load({os.path.join(model_dir, 'export')!r}).signatures["serving_default"]
print(serve.structured_input_signature[1]["images"].shape)
image = tf.io.decode_image(tf.io.read_file({os.path.join(photos, 'test', 'fox', '000.png')!r}))
out = serve(images=tf.image.resize(image, (20, 16))[None].numpy().astype(np.uint8)[None][0])
print(out["class_names"].numpy()[0].decode() in ("cat", "dog", "fox"), out["probabilities"].shape)
"""
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split("\n")[:2] == ["(None, 20, 16, 3)", "True (1, 3)"]


def test_evaluate_reads_a_streamed_run_back(cli_run):
  model_dir, _ = cli_run
  proc = run("trainer.evaluate", f"--model_dir={model_dir}", "--split=test")
  with open(os.path.join(model_dir, "results.json")) as f:
    results = json.load(f)
  assert "input pipeline: stream" in proc.stderr
  assert f"accuracy {results['test_accuracy']:.4f}" in proc.stderr + proc.stdout


def test_predict_fits_a_folders_images_to_the_export(cli_run, photos, tmp_path):
  model_dir, _ = cli_run
  out = tmp_path / "predictions.csv"
  run("trainer.predict", f"--model_dir={model_dir}", f"--dataset=folder:{photos}",
      f"--output={out}")
  lines = out.read_text().splitlines()
  assert lines[0] == "ImageId,Label" and len(lines) == 1 + 15  # the 15 test images
  assert {int(line.split(",")[1]) for line in lines[1:]} <= {0, 1, 2}


def test_images_too_small_for_the_model_are_refused(photos, tmp_path):
  with pytest.raises(ConfigError, match="^8x8 images are too small for CNN's convolutions and "
                     "pooling: use a larger --image_size, or smaller --kernel_sizes$"):
    train.train_and_evaluate(parse("--model=cnn", f"--dataset=folder:{photos}",
                                   "--image_size=8", "--batch_size=8",
                                   f"--model_dir={tmp_path / 'run'}"))
  assert not os.path.exists(tmp_path / "run")


def test_a_rerun_reuses_the_folder_check_until_the_files_change(tmp_path, monkeypatch,
                                                                 caplog):
  """A resumed run does not decode every file again: the check is kept in model_dir and
  reused while the folder lists the same files."""
  root = tmp_path / "photos"
  write_image_folder(root, per_split=(("train", 4),), sizes=((12, 12),))
  model_dir = tmp_path / "run"
  args = ["--model=mlp", "--hidden_units=4", f"--dataset=folder:{root}", "--batch_size=4",
          "--eval_images=false", f"--model_dir={model_dir}"]
  train.train_and_evaluate(parse(*args, "--train_steps=2"))
  with open(model_dir / "folder_check.json") as f:
    saved = json.load(f)
  assert saved["files"] == 12 and saved["bad"] == [] and saved["sizes"] == [[12, 12]] * 2
  scans = []
  real = folder._scan
  monkeypatch.setattr(folder, "_scan", lambda paths: scans.append(len(paths)) or real(paths))
  cfg = parse(*args, "--train_steps=4")  # (parsing flags sets absl's level: first)
  with caplog.at_level(logging.INFO, logger="absl"):
    train.train_and_evaluate(cfg)
  assert scans == [] and "were checked before (same files): not decoded again" in caplog.text
  (root / "train" / "cat" / "000.png").rename(root / "train" / "cat" / "new.png")
  train.train_and_evaluate(parse(*args, "--train_steps=6"))
  assert scans == [12]  # another listing: checked again


def test_a_folder_in_a_bucket(photos, tmp_path):
  """folder: on a non-local filesystem (TensorFlow's ram://, as gs:// would be), streamed
  into a run whose model_dir is there too; the rerun reuses the check kept there."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for directory, _, names in os.walk(photos):
    for name in names:
      source = os.path.join(directory, name)
      target = "ram://bucket/photos" + source[len(photos):]
      tf.io.gfile.makedirs(os.path.dirname(target))
      tf.io.gfile.copy(source, target, overwrite=True)
  args = [*CNN, "--dataset=folder:ram://bucket/photos", "--image_size=16", "--batch_size=8",
          "--pipeline=stream", "--eval_images=false", "--model_dir=ram://bucket/run"]
  first = train.train_and_evaluate(parse(*args, "--train_steps=3"))
  assert first["pipeline"] == "stream" and first["test_accuracy"] >= 0
  check = json.loads(tf.io.gfile.GFile("ram://bucket/run/folder_check.json").read())
  assert check["files"] == 51 and check["root"] == "ram://bucket/photos"
  again = train.train_and_evaluate(parse(*args, "--train_steps=6"))
  assert again["global_step"] == 6


def test_a_rerun_keeps_the_order_its_pipeline_gave(tmp_path, photos):
  """--pipeline may change on a rerun while the batches stay the same (a folder, or
  in_memory/tf_data); a TFDS run may not switch between its shards' order and memory's,
  which --pipeline=auto would do on a VM with less memory."""
  name = write_tiny_tfds(tmp_path / "tfds")
  args = ["--model=mlp", "--hidden_units=4", f"--dataset={name}", "--image_size=8",
          f"--data_dir={tmp_path / 'tfds'}", "--batch_size=8", "--eval_images=false",
          f"--model_dir={tmp_path / 'run'}"]
  train.train_and_evaluate(parse(*args, "--train_steps=2"))  # auto: in memory
  with open(tmp_path / "run" / "flags.json") as f:
    assert json.load(f)["input_pipeline"] == "in_memory"
  before = sorted(os.listdir(tmp_path / "run"))
  with pytest.raises(ConfigError, match=(
      r"^--model_dir=.* was trained reading its data in_memory; this rerun would read it "
      r"stream \(0.00 GB decoded is more than the memory budget of 0.0 GB "
      r"\(--memory_budget_gb\): streamed from its files\), in another order: rerun with "
      r"--pipeline=in_memory, or use a new --model_dir$")):
    train.train_and_evaluate(parse(*args, "--train_steps=4", "--memory_budget_gb=0.000001"))
  assert sorted(os.listdir(tmp_path / "run")) == before
  resumed = train.train_and_evaluate(parse(*args, "--train_steps=4", "--pipeline=tf_data"))
  assert resumed["global_step"] == 4 and resumed["pipeline"] == "tf_data"
  folder_args = [*CNN, f"--dataset=folder:{photos}", "--image_size=16", "--batch_size=8",
                 "--eval_images=false", f"--model_dir={tmp_path / 'photos_run'}"]
  train.train_and_evaluate(parse(*folder_args, "--train_steps=2"))
  again = train.train_and_evaluate(parse(*folder_args, "--train_steps=4", "--pipeline=stream"))
  assert again["global_step"] == 4 and again["pipeline"] == "stream"
