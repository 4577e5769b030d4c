"""trainer.export: a run's LiteRT and ONNX files, each checked in its own runtime against
the run's SavedModel before it is published; trainer.predict --model=FILE.

One tiny CNN run is trained in process once: on a folder of grey images of named classes,
streamed from its files (--pipeline=stream), with --tta=flip (the files must carry the
views) and --keep_best; the exports run in process, the command lines as forked children
(tests/forked_cli.py).
"""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import input_pipeline
from datafiles import tree_digest, write_image_folder
from flag_helpers import parse
from runs import in_process, run, run_main_many
from trainer import export as export_program
from trainer import predict
from trainer.deploy import convert, runtimes, verify
from trainer.process.errors import UsageError
from trainer.run import run_files, train

NAMES = ["cat", "dog", "fox"]
# The largest probability difference each export may have from the SavedModel on the
# run's test images (float32: the same classes, rounding only).
BOUNDS = {("litert", "none"): 1e-5, ("onnx", "none"): 1e-5, ("litert", "float16"): 2e-3,
          ("litert", "dynamic"): 3e-2, ("litert", "int8"): 5e-2}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  write_image_folder(root / "photos", per_split=(("train", 32), ("test", 16)), classes=NAMES,
                     sizes=((12, 12),), channels=1)
  model_dir = str(root / "run")
  train.train_and_evaluate(parse(
      "--model=cnn", "--filters=4,8", "--kernel_sizes=3,3", "--dense_units=16",
      f"--dataset=folder:{root}/photos", "--pipeline=stream", "--batch_size=16",
      "--train_steps=30", "--learning_rate=0.01", "--tta=flip", "--keep_best=accuracy",
      "--eval_images=false",
      f"--model_dir={model_dir}"))
  return model_dir


def export_in_process(*args) -> int:
  """trainer.export's main on these flags, in this process; its exit status."""
  return in_process(export_program, *args)


def _splits(model_dir):
  """The run's data, in memory."""
  return input_pipeline.load(run_files.read_record(model_dir)["dataset"]).splits


def _saved_model(model_dir, name="export"):
  return runtimes.SavedModel(
      tf.saved_model.load(os.path.join(model_dir, name)).signatures["serving_default"])


def test_each_format_matches_the_runs_savedmodel_within_its_bound(tiny_run, monkeypatch):
  splits = _splits(tiny_run)
  images = splits["test"].images
  reference = _saved_model(tiny_run)(images)
  calibrations = []
  litert = convert.litert
  monkeypatch.setattr(convert, "litert", lambda function, quantize, calibration=None: (
      calibrations.append(calibration), litert(function, quantize, calibration))[1])
  for (fmt, quantize), bound in BOUNDS.items():
    extra = ["--calibration_examples=20"] if quantize == "int8" else []
    assert export_in_process(f"--model_dir={tiny_run}", f"--format={fmt}",
                             f"--quantize={quantize}", *extra) == 0
    name = "model" + ("" if quantize == "none" else f"_{quantize}")
    path = os.path.join(tiny_run, "exports", name + (".onnx" if fmt == "onnx" else ".tflite"))
    runner = runtimes.load(path)
    assert runner.image_shape == (12, 12, 1) and runner.class_names == NAMES
    out = runner(images)
    difference = np.abs(out["probabilities"] - reference["probabilities"]).max()
    agreement = np.mean(out["classes"] == reference["classes"])
    assert difference <= bound, (fmt, quantize, difference)
    if quantize in ("none", "float16"):
      assert agreement == 1.0, (fmt, quantize)
    # The report's figures are those of the published file, on the same images.
    report = json.load(open(path + ".report.json"))
    assert report["published"] and report["examples"] == len(images)
    saved, exported = report["rows"]
    assert saved["accuracy"] == np.mean(reference["classes"] == splits["test"].labels)
    assert exported["agreement"] == pytest.approx(agreement)
    assert exported["size_bytes"] == os.path.getsize(path)
  # The ONNX file carries the class names in its metadata too.
  import onnx  # pylint: disable=g-import-not-at-top
  props = {p.key: p.value for p in onnx.load(os.path.join(tiny_run, "exports",
                                                         "model.onnx")).metadata_props}
  assert json.loads(props["class_names"]) == NAMES
  # int8's calibration: 20 of the run's training images, none of its test images.
  (calibration,) = [c for c in calibrations if c is not None]
  train_set = {image.tobytes() for image in splits["train"].images}
  test_set = {image.tobytes() for image in images}
  assert len(calibration) == 20
  assert all(image.tobytes() in train_set and image.tobytes() not in test_set
             for image in calibration)


def test_an_export_below_the_bound_is_not_published(tiny_run, monkeypatch, tmp_path):
  frozen = convert.frozen_function
  # A converter that got the sign of the logits wrong: its accuracy collapses.
  monkeypatch.setattr(convert, "frozen_function", lambda model, shape, tta: frozen(
      lambda images, training: -model(images, training=training), shape, tta))
  output = str(tmp_path / "out" / "model.onnx")
  assert export_in_process(f"--model_dir={tiny_run}", "--format=onnx",
                           f"--output={output}") == export_program.EXIT_REJECTED
  assert os.listdir(tmp_path / "out") == ["model.onnx.rejected.json"]
  report = json.load(open(output + ".rejected.json"))
  assert not report["published"] and report["accuracy_drop_points"] > 1
  assert report["verdict"].startswith("not published: its accuracy is ")


def test_the_best_checkpoint_exported_to_a_bucket(tiny_run):
  """--checkpoint=best: the weights of the run's export_best, not its final ones; written
  to a non-local filesystem (ram://, as a bucket) and read back from it."""
  output = "ram://exports/best.tflite"
  assert export_in_process(f"--model_dir={tiny_run}", "--format=litert",
                           "--checkpoint=best", f"--output={output}") == 0
  assert json.loads(tf.io.gfile.GFile(output + ".report.json").read())["checkpoint"].startswith(
      os.path.join(tiny_run, "best", "ckpt-"))
  images = _splits(tiny_run)["test"].images
  out = runtimes.load(output)(images)["probabilities"]
  best = _saved_model(tiny_run, "export_best")(images)["probabilities"]
  final = _saved_model(tiny_run)(images)["probabilities"]
  assert np.abs(out - best).max() <= 1e-5 < np.abs(out - final).max()


def test_the_accuracy_drop_is_counted_in_images():
  # 49 and 47 right of 200: 2 images, 1 point, within --max_accuracy_drop=1 (a difference
  # of the accuracies would be 1.0000000000000009).
  rows = [verify.Row("a", 0.245, 1, 0, 1, 1), verify.Row("b", 0.235, 1, 0, 1, 1)]
  assert 0.245 - 0.235 > 0.01 and verify.accuracy_drop(rows, 200) == 1.0


def test_a_quantization_the_converter_cannot_do_is_one_line(tiny_run, monkeypatch, tmp_path):
  class Refusing:  # LiteRT's converter on an operation without an integer kernel
    optimizations, target_spec = [], type("Spec", (), {})()

    def convert(self):
      raise RuntimeError("'tfl.gelu' op quantization is not supported\nmore lines")

  monkeypatch.setattr(tf.lite.TFLiteConverter, "from_concrete_functions",
                      staticmethod(lambda *args: Refusing()))
  with pytest.raises(UsageError, match=r"^--quantize=int8 is not offered for this model: "
                     r"LiteRT's converter failed \('tfl.gelu' op quantization is not "
                     r"supported\); try --quantize=dynamic$"):
    export_in_process(f"--model_dir={tiny_run}", "--format=litert", "--quantize=int8",
                      f"--output={tmp_path}/out/model.tflite")
  assert not os.path.exists(tmp_path / "out")


def _write_pngs(folder, images):
  os.makedirs(folder)
  for i, image in enumerate(images):
    tf.io.write_file(os.path.join(folder, f"{i:02d}.png"), tf.io.encode_png(image))


def _rows(path):
  with open(path) as f:
    return list(csv.reader(f))


def test_predict_with_an_exported_file_writes_the_savedmodels_csv(tiny_run, tmp_path):
  for fmt in ("litert", "onnx"):
    if not os.path.exists(os.path.join(tiny_run, "exports", f"model.{fmt}")):
      assert export_in_process(f"--model_dir={tiny_run}", f"--format={fmt}") == 0
  folder = str(tmp_path / "images")
  _write_pngs(folder, _splits(tiny_run)["test"].images[:12])
  # The SavedModel's in this process; the .tflite file's in a fresh one, as a user runs it.
  for name, args in (("saved", []), ("onnx", [f"--model={tiny_run}/exports/model.onnx"])):
    predict_in_process(f"--model_dir={tiny_run}", f"--images={folder}",
                       f"--output={tmp_path}/{name}.csv", *args)
  run("trainer.predict", f"--model={tiny_run}/exports/model.tflite", f"--images={folder}",
      f"--output={tmp_path}/tflite.csv")
  saved = _rows(tmp_path / "saved.csv")
  for name in ("onnx", "tflite"):
    rows = _rows(tmp_path / f"{name}.csv")
    assert [r[:2] for r in rows] == [r[:2] for r in saved], name
    assert np.allclose([float(r[2]) for r in rows[1:]], [float(r[2]) for r in saved[1:]],
                       atol=2e-6)
  # The run's own test split as a submission, through the ONNX file.
  predict_in_process(f"--model_dir={tiny_run}", f"--output={tmp_path}/saved_sub.csv")
  predict_in_process(f"--model_dir={tiny_run}", f"--model={tiny_run}/exports/model.onnx",
                     f"--output={tmp_path}/onnx_sub.csv")
  assert _rows(tmp_path / "onnx_sub.csv") == _rows(tmp_path / "saved_sub.csv")
  # A file with another run's --model_dir would read that run's data and classes for it.
  with pytest.raises(UsageError, match=r"model.onnx was exported from the run .*/run \(its "
                     r"report\), not .*/elsewhere: give '?--model_dir="):
    predict_in_process(f"--model_dir={tmp_path}/elsewhere",
                       f"--model={tiny_run}/exports/model.onnx")


def predict_in_process(*args):
  in_process(predict, *args)


def _bad_cases(run_dir, t):
  """(module, args, missing packages, the error line's words)."""
  e, p = "trainer.export", "trainer.predict"
  m = f"--model_dir={run_dir}"
  return [
      (e, [], (), "--model_dir is required"),
      (e, [m], (), "--format is required"),
      (e, [m, "--format=coreml"], (), "--format=coreml is not offered"),
      (e, [m, "--format=onnx", "--quantize=int8"], (),
       "--quantize=int8 is not offered for --format=onnx"),
      (e, [m, "--format=litert", "--quantize=int4"], (), "--quantize=int4 is not offered"),
      (e, [m, "--format=litert", "--opset=13"], (), "--opset applies to --format=onnx only"),
      (e, [m, "--format=onnx", "--opset=9"], (), "--opset=9 is not offered: give 13 to 18"),
      (e, [m, "--format=litert", "--calibration_examples=5"], (),
       "--calibration_examples applies to --quantize=int8 only"),
      (e, [m, "--format=litert", "--batch_size=8"], (), "--batch_size does not apply"),
      (e, [m, "--format=litert", "--tta=flip"], (), "only --tta=none"),
      (e, [m, "--format=onnx"], ("tf2onnx",), "onnx files need the package tf2onnx, which is "
       "not installed (tf2onnx): install the export extra with pip install -e '.[export]'"),
      (e, [f"--model_dir={t}/nowhere", "--format=litert"], (), "no flags.json in"),
      (e, [f"--model_dir={t}/no_checkpoint", "--format=litert"], (),
       f"no final checkpoint in {t}/no_checkpoint/checkpoints: train first"),
      (e, [f"--model_dir={t}/no_checkpoint", "--format=litert", "--checkpoint=best"], (),
       f"no best checkpoint in {t}/no_checkpoint/best: keep one with --keep_best"),
      (e, [m, "--format=litert", f"--checkpoint={run_dir}/checkpoints/ckpt-99"], (),
       "is no checkpoint: give final, best or a prefix"),
      (e, [m, "--format=litert", "--output=/proc/x/model.tflite"], (), "cannot write"),
      (e, [m, "--format=onnx", f"--output={run_dir}/flags.json"], (),
       "/flags.json: an ONNX file's name ends in .onnx, e.g. --output=model.onnx"),
      (e, [m, "--format=litert", f"--checkpoint={t}/other/checkpoints/ckpt-1"], (),
       f"is not a checkpoint of {m} (its own are in {run_dir}/checkpoints and "
       f"{run_dir}/best), whose model and data it would be taken for: export it with its own "
       f"run's flags: python -m trainer.export --model_dir={t}/other "),
      (e, [f"--model_dir={t}/train_only", "--format=litert"], (), "the run's data has no "
       "labelled test or validation split to check the export on (it has train): train the "
       "run with --validation_split=0.1"),
      (e, [m, "--format=litert", f"--output={t}"], (), "is a directory: give a file name"),
      (e, [f"--model_dir={t}/data_gone", "--format=litert", "--quantize=int8"], (),
       f"needs {t}/gone/train/<class>/"),
      (p, [f"--model={t}/model.txt", "--images=x"], (), "trainer.predict's --model is an "
       "exported .tflite or .onnx file"),
      (p, [f"--model={t}/missing.onnx", "--images=x"], (), "no exported file"),
      (p, [f"--model={t}/damaged.tflite", f"--images={t}"], (), "cannot be loaded as a litert "
       "model"),
      (p, [f"--model={t}/damaged.tflite", "--tta=none", "--images=x"], (),
       "--tta=none does not apply to an exported file"),
      (p, [f"--model={t}/damaged.tflite"], (), "--model predicts --images=DIR or a "
       "--dataset's test split"),
  ]


def test_bad_input_exits_2_with_one_line_and_a_dry_run_publishes_nothing(tiny_run, tmp_path):
  t = str(tmp_path)
  # A run without checkpoints, and a run whose data is gone (a folder since deleted).
  record = run_files.read_record(tiny_run)
  run_files.write_record(f"{t}/no_checkpoint", record)
  shutil.copytree(tiny_run, f"{t}/data_gone", ignore=shutil.ignore_patterns("exports"))
  run_files.write_record(f"{t}/data_gone", {**record, "dataset": f"folder:{t}/gone"})
  with open(f"{t}/damaged.tflite", "wb") as f:
    f.write(b"TFL3 not a model")
  # Another run's checkpoint, and a run whose folder holds no test images.
  tf.train.Checkpoint(v=tf.Variable(1.0)).write(f"{t}/other/checkpoints/ckpt-1")
  run_files.write_record(f"{t}/other", record)
  write_image_folder(f"{t}/train_only_photos", per_split=(("train", 2),), classes=NAMES,
                     sizes=((12, 12),), channels=1)
  shutil.copytree(tiny_run, f"{t}/train_only", ignore=shutil.ignore_patterns("exports"))
  run_files.write_record(f"{t}/train_only", {**record,
                                             "dataset": f"folder:{t}/train_only_photos"})
  before = tree_digest(tiny_run), tree_digest(t)
  os.makedirs(tmp_path / "scratch")
  cases = _bad_cases(tiny_run, t)
  dry = ["--model_dir=" + tiny_run, "--format=litert", "--quantize=int8", "--tta=none",
         "--dry_run"]
  *procs, dry_proc = run_main_many(
      [{"module": module, "args": args, "missing": list(missing)}
       for module, args, missing, _ in cases] + [{"module": "trainer.export", "args": dry}],
      tmp_path / "scratch")
  assert dry_proc.returncode == 0 and dry_proc.stdout.startswith(
      f"dry run: nothing was written; without --dry_run this exports {tiny_run}/checkpoints/"
      f"ckpt-30 as litert int8 to {tiny_run}/exports/model_int8_notta.tflite once it is "
      "checked against the SavedModel on the 48 test images"), (dry_proc.stdout,
                                                                dry_proc.stderr)
  failures = []
  for (module, args, _, message), proc in zip(cases, procs):
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    if proc.returncode != 2 or message not in last or "Traceback" in proc.stderr:
      failures.append((module, args, proc.returncode, last))
  assert not failures, failures
  shutil.rmtree(tmp_path / "scratch")
  assert (tree_digest(tiny_run), tree_digest(t)) == before
