"""trainer.main end to end, as a user runs it: tiny synthetic data, a few seconds a run."""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import logging

import input_pipeline
import models
from datafiles import write_kaggle_csv
from flag_helpers import parse
from runs import read_hparams, read_images, read_scalars, read_text, run
from trainer.process import run_log
from trainer.run.train import train_and_evaluate

DATASET = "synthetic:shape=12x12x1,classes=4,train=320,test=70"
ARGS = ["--model=mlp", "--hidden_units=16", f"--dataset={DATASET}", "--batch_size=32",
        "--steps_per_loop=3", "--validation_split=0.2", "--eval_every=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("run") / "model")
  # 256 train examples / 32 = 8 steps per epoch; 2 epochs = 16 steps.
  start = time.time()
  first = run("trainer.main", *ARGS, "--epochs=2", f"--model_dir={model_dir}")
  first.wall_seconds = time.time() - start  # the whole command, as its user waits for it
  return model_dir, first


def test_results_json(trained):
  model_dir, proc = trained
  with open(os.path.join(model_dir, "results.json")) as f:
    results = json.load(f)
  assert results["global_step"] == 16 and results["parameters"] == 12 * 12 * 16 + 16 + 16 * 4 + 4
  assert 0.0 <= results["test_accuracy"] <= 1.0 and results["test_loss"] > 0
  assert results["test_accuracy"] > 0.5  # 4 learnable classes: well above chance (0.25)
  assert results["examples_per_sec"] > 0 and results["wall_seconds"] > 0
  assert results["flags"]["hidden_units"] == ["16"] and results["flags"]["epochs"] == 2
  assert f"test accuracy {results['test_accuracy']:.4f}" in proc.stdout
  # The end of the run's summary: the peak memory results.json records, once.
  host = results["peak_memory"]["host_rss_bytes"] / 2**20
  assert (proc.stdout + proc.stderr).count(f"peak memory: host {host:.0f} MiB (resident)\n") == 1


def test_phases_account_for_the_whole_command(trained):
  model_dir, proc = trained
  with open(os.path.join(model_dir, "results.json")) as f:
    phases = json.load(f)["phases"]
  assert set(phases) == {"start_up", "setup", "data", "build", "checkpoints", "export",
                         "compile", "train", "eval", "eval_pictures", "other", "total"}
  for name in ("start_up", "build", "checkpoints", "export", "compile", "train", "eval"):
    assert phases[name] > 0, name
  assert phases["start_up"] > 0.5  # Python and TensorFlow's import, before tapeloop's code
  parts = sum(v for k, v in phases.items() if k != "total")
  assert parts == pytest.approx(phases["total"], abs=0.01)
  # From the process's start to results.json: all of the command but its exit.
  assert proc.wall_seconds - 5 < phases["total"] <= proc.wall_seconds
  assert f"{phases['total']:.1f} s in all: start up {phases['start_up']:.1f} s" in proc.stderr


def test_console_progress_lines(trained):
  _, proc = trained
  # The first inner loop is one step, so its line comes right after compilation.
  assert "step 1/16  epoch 0.12  loss" in proc.stderr and "with tracing and compilation" in proc.stderr
  assert "step 4/16  epoch 0.50  loss" in proc.stderr and "examples/s  ETA" in proc.stderr
  assert "eval on validation at step 4" in proc.stderr
  assert "strategy: _DefaultDistributionStrategy" in proc.stderr
  # The default --mixed_precision=auto says what it chose and why, for an mlp too.
  assert "precision policy: float32 (auto: mlp trained slower in bfloat16 on CPU)" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_the_console_is_short_and_the_full_log_is_in_model_dir(trained):
  model_dir, proc = trained
  # The console: the time and the message, as docs/usage.md shows; absl's prefix (level,
  # date, thread, file:line) only in model_dir/tapeloop.log.
  absl_prefix = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ", re.M)
  assert not absl_prefix.search(proc.stderr), proc.stderr[:1000]
  assert re.search(r"^\d\d:\d\d:\d\d step 1/16  epoch 0.12  loss", proc.stderr, re.M)
  with open(os.path.join(model_dir, "tapeloop.log")) as f:
    log = f.read()
  assert re.search(absl_prefix.pattern + r"step 1/16  epoch 0.12  loss", log, re.M), log[:1000]


def test_the_run_log_ends_with_the_error_and_a_worker_holds_no_lines(tmp_path, capfd):
  # The error that ended a run, and its traceback, are in tapeloop.log (the console shows
  # the one line: trainer/cli.py); a worker other than the chief writes no log.
  with pytest.raises(ValueError):
    with run_log.RunLog() as log:
      log.start(str(tmp_path))
      logging.warning("a line before the error")
      raise ValueError("bad value\nits detail")
  text = (tmp_path / "tapeloop.log").read_text()
  assert "a line before the error" in text
  assert "the run ended with ValueError: bad value" in text and "Traceback" in text
  assert "Traceback" not in capfd.readouterr().err
  with run_log.RunLog() as worker:
    logging.warning("held until the run's checks pass")
    worker.start(None)
    logging.warning("a worker's line")
    assert not worker._held  # pylint: disable=protected-access


def test_a_bucket_log_of_other_bytes_is_kept_and_extended(tmp_path):
  # A model_dir that is not local (a bucket: here ram://) gets its log appended whole at
  # the end; bytes that are not UTF-8 already there are kept, replaced, not a traceback.
  path = f"ram://{tmp_path}/run/{run_log.NAME}"
  tf.io.gfile.makedirs(f"ram://{tmp_path}/run")
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(b"an earlier line \xff\xfe\n")
  with run_log.RunLog() as log:
    log.start(f"ram://{tmp_path}/run")
    logging.warning("this run's line")
  with tf.io.gfile.GFile(path) as f:
    text = f.read()
  assert text.startswith("an earlier line \ufffd\ufffd\n") and "this run's line" in text


def test_tensorboard_events(trained):
  model_dir, _ = trained
  train = read_scalars(os.path.join(model_dir, "train"))
  evals = read_scalars(os.path.join(model_dir, "eval"))
  assert {"loss", "accuracy", "learning_rate", "examples_per_sec"} <= set(train)
  # Loop boundaries: a first loop of one step, then every 3 steps, cut at eval (4, 8, ...)
  # and epoch (8, 16) boundaries.
  assert sorted(train["loss"]) == [1, 4, 7, 8, 11, 12, 15, 16]
  assert all(0 <= v <= 1 for v in train["accuracy"].values())
  np.testing.assert_allclose(list(train["learning_rate"].values()), 1e-3, rtol=1e-6)
  assert sorted(evals["loss"]) == [4, 8, 12, 16] and sorted(evals["accuracy"]) == [4, 8, 12, 16]
  assert {"test_loss", "test_accuracy"} <= set(evals)
  with open(os.path.join(model_dir, "results.json")) as f:
    results = json.load(f)
  assert evals["test_accuracy"][16] == pytest.approx(results["test_accuracy"], abs=1e-6)
  assert evals["accuracy"][16] == pytest.approx(results["validation_accuracy"], abs=1e-6)
  flags_table = read_text(os.path.join(model_dir, "train"), "flags")[0]
  assert "| hidden_units | 16 |" in flags_table and "| model | mlp |" in flags_table
  summary = read_text(os.path.join(model_dir, "train"), "model")[0]
  assert "| dense_0 | Dense | (16) | 2,320 |" in summary and "**2,388**" in summary


def test_eval_images_each_eval(trained):
  model_dir, _ = trained
  pictures = read_images(os.path.join(model_dir, "eval"))
  assert sorted(pictures["confusion_matrix"]) == [4, 8, 12, 16]
  assert sorted(pictures["worst_mistakes"]) == [4, 8, 12, 16]
  matrix = pictures["confusion_matrix"][16]
  assert matrix.shape[2] == 3 and matrix.shape[0] > 4 * 40 and matrix.shape[1] > 4 * 40
  # 84-pixel tiles (12x12 images upscaled 7x) with two caption lines, up to 4x4 of them.
  mistakes = pictures["worst_mistakes"][16]
  assert mistakes.shape[0] >= 84 and mistakes.shape[1] >= 96
  table = read_text(os.path.join(model_dir, "eval"), "per_class_accuracy")[-1]
  assert table.startswith("| class | accuracy | examples |") and table.count("\n") == 2 + 4 - 1


def test_hparams_session_ranks_by_eval_and_test_metrics(trained):
  model_dir, _ = trained
  values, metrics, names = read_hparams(model_dir)
  assert values["hidden_units"] == "16"  # readable, not "['16']"
  assert values["batch_size"] == 32 and values["model"] == "mlp"
  assert values["dropout"] == 0.0  # the model's default, not absent
  assert {("eval", "accuracy"), ("eval", "loss"), ("eval", "test_accuracy"),
          ("eval", "test_loss"), ("eval", "test_tta_accuracy"),
          ("train", "examples_per_sec"), ("eval", "pruned_at_step")} == metrics
  assert {"hidden_units", "learning_rate", "dropout"} <= names
  # The metrics exist as scalars in those runs, so the HParams table has values.
  evals = read_scalars(os.path.join(model_dir, "eval"))
  assert {"accuracy", "loss", "test_accuracy", "test_loss"} <= set(evals)


def _trained_model(model_dir):
  data = input_pipeline.load(DATASET)
  model = models.create("mlp", num_classes=4, image_shape=(12, 12, 1), hidden_units=(16,))
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  tf.train.Checkpoint(model=model).restore(latest).expect_partial()
  return data, model


def test_export_in_a_fresh_process_predicts_like_the_trained_model(trained, tmp_path):
  model_dir, _ = trained
  data, model = _trained_model(model_dir)
  images = data.splits["test"].images
  expected = np.argmax(model(images.astype(np.float32) / 255.0), axis=-1)
  np.save(tmp_path / "images.npy", images)
  code = ("import sys, numpy as np, tensorflow as tf\n"
          "m = tf.saved_model.load(sys.argv[1])\n"
          "x = np.load(sys.argv[2])\n"
          "a = m.signatures['serving_default'](images=tf.constant(x))\n"
          "b = m.signatures['serving_float'](images=tf.constant(x.astype('float32') / 255))\n"
          "np.save(sys.argv[3], np.stack([a['classes'].numpy(), b['classes'].numpy()]))\n"
          "assert np.allclose(a['probabilities'].numpy().sum(1), 1, atol=1e-5)\n")
  subprocess.run([sys.executable, "-c", code, os.path.join(model_dir, "export"),
                  str(tmp_path / "images.npy"), str(tmp_path / "out.npy")], check=True,
                 timeout=120)
  uint8_classes, float_classes = np.load(tmp_path / "out.npy")
  np.testing.assert_array_equal(uint8_classes, expected)
  np.testing.assert_array_equal(float_classes, expected)


def test_an_ema_run_logs_both_evals_and_exports_the_average(tmp_path):
  model_dir = str(tmp_path / "ema")
  results = train_and_evaluate(parse(
      *ARGS, "--epochs=1", "--ema_decay=0.8", "--label_smoothing=0.1", "--mixup=0.2",
      "--accumulation_steps=2", "--batch_size=16", f"--model_dir={model_dir}"))
  assert results["global_step"] == 8  # 256 examples, 16 x 2 a step
  assert {"test_raw_accuracy", "validation_raw_loss"} <= set(results)
  raw, average = (read_scalars(os.path.join(model_dir, r)) for r in ("eval_raw", "eval"))
  assert sorted(raw["accuracy"]) == sorted(average["accuracy"]) == [4, 8]  # both, each eval
  data = input_pipeline.load(DATASET)
  images = data.splits["test"].images
  probabilities = {}
  for name in ("model", "ema"):
    model = models.create("mlp", num_classes=4, image_shape=(12, 12, 1), hidden_units=(16,))
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    tf.train.Checkpoint(**{name: model}).restore(latest).expect_partial()
    probabilities[name] = tf.nn.softmax(model(images.astype(np.float32) / 255.0)).numpy()
  assert np.abs(probabilities["model"] - probabilities["ema"]).max() > 1e-3
  accuracy = np.mean(np.argmax(probabilities["ema"], -1) == data.splits["test"].labels)
  assert results["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
  # Which weights the export holds (loading it in a fresh process: the test above).
  serve = tf.saved_model.load(os.path.join(model_dir, "export")).signatures["serving_default"]
  np.testing.assert_allclose(serve(images=tf.constant(images))["probabilities"].numpy(),
                             probabilities["ema"], atol=1e-5)


def test_predict_writes_the_kaggle_submission(trained, tmp_path):
  model_dir, _ = trained
  data, model = _trained_model(model_dir)
  images = data.splits["test"].images[:9]
  write_kaggle_csv(tmp_path / "test.csv", images)
  out = tmp_path / "submission.csv"
  run("trainer.predict", f"--model_dir={model_dir}", f"--dataset=csv:{tmp_path / 'test.csv'}",
      f"--output={out}")
  lines = out.read_text().splitlines()
  assert lines[0] == "ImageId,Label" and len(lines) == 10
  ids, labels = zip(*(map(int, l.split(",")) for l in lines[1:]))
  assert list(ids) == list(range(1, 10))
  np.testing.assert_array_equal(labels, np.argmax(model(images / 255.0), axis=-1))


@pytest.mark.parametrize("dataset, problem", [
    ("synthetic:shape=8x8x1,classes=4,train=64,test=9", "has images of shape 8x8x1 but the "
     "model in .* takes 12x12x1"),
    ("synthetic:shape=12x12x1,classes=6,train=64,test=60", "has labels up to 5 but the model "
     "in .* predicts 4 classes")])
def test_predict_refuses_data_the_model_was_not_trained_for(trained, tmp_path, dataset, problem):
  model_dir, _ = trained
  out = tmp_path / "submission.csv"
  proc = run("trainer.predict", f"--model_dir={model_dir}", f"--dataset={dataset}",
             f"--output={out}", check=False)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and re.search(problem, errors[0]), proc.stderr
  assert "Traceback" not in proc.stderr and not out.exists()


def test_resume_continues_from_the_saved_step_and_a_finished_run_only_evaluates(trained):
  model_dir, _ = trained
  with open(os.path.join(model_dir, "results.json")) as f:
    before = json.load(f)
  second = run("trainer.main", *ARGS, "--epochs=3", f"--model_dir={model_dir}")
  assert "resumed from" in second.stderr and "ckpt-16" in second.stderr
  assert "from step 16 to 24" in second.stderr
  train = read_scalars(os.path.join(model_dir, "train"))
  assert max(train["loss"]) == 24 and 17 in train["loss"]  # 16 + 1: steps continued, not 0
  with open(os.path.join(model_dir, "results.json")) as f:
    after = json.load(f)
  assert after["global_step"] == 24
  # Made by older code: a rerun that trains nothing keeps what made the weights.
  after["made_with"]["tapeloop"] = "0.0.1"
  with open(os.path.join(model_dir, "results.json"), "w") as f:
    json.dump(after, f)
  third = run("trainer.main", *ARGS, "--epochs=3", f"--model_dir={model_dir}")
  assert "already at step 24 of 24: evaluating only" in third.stderr
  with open(os.path.join(model_dir, "results.json")) as f:
    final = json.load(f)
  assert final["test_accuracy"] == after["test_accuracy"]
  assert final["examples_per_sec"] == after["examples_per_sec"]  # training figures kept
  assert final["made_with"] == after["made_with"]
  assert before["global_step"] == 16
