"""trainer.predict: new image files, and a dataset located by the same flags as in training.

Two tiny runs are trained in process once (a colour MLP on a generated TFDS dataset in its
own data_dir, a grey one on synthetic data); the command line runs as a subprocess only
where the console, exit status or flag parsing is what is tested.
"""

import csv
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import input_pipeline
from datafiles import write_tiny_tfds
from flag_helpers import parse
from input_pipeline import DataError
from runs import in_process, run
from trainer import cli, predict
from trainer.run import train

FLAGS = flags.FLAGS
TFDS_TEST_SIZE = 13  # the generated dataset's test split


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
  """An MLP on a TFDS dataset prepared in a data_dir of its own (not TFDS's default), its
  images of varying size fitted to 12x10x3; classes red, green, blue."""
  root = tmp_path_factory.mktemp("colour")
  data_dir = str(root / "tfds data")
  name = write_tiny_tfds(data_dir)
  model_dir = str(root / "run")
  train.train_and_evaluate(parse(
      "--model=mlp", "--hidden_units=8", f"--dataset={name}", f"--data_dir={data_dir}",
      "--image_size=12x10", "--batch_size=8", "--train_steps=2", "--eval_images=false",
      f"--model_dir={model_dir}"))
  return model_dir, name, data_dir


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
  """An MLP on synthetic 12x12x1 images (classes "0".."3")."""
  model_dir = str(tmp_path_factory.mktemp("grey") / "run")
  train.train_and_evaluate(parse(
      "--model=mlp", "--hidden_units=8", "--dataset=synthetic:shape=12x12x1,classes=4,"
      "train=32,test=5", "--batch_size=8", "--train_steps=2", "--eval_images=false",
      f"--model_dir={model_dir}"))
  return model_dir


def predict_in_process(*args):
  """trainer.predict's main on these flags, in this process (no console, no exit)."""
  in_process(predict, *args)


def serve(model_dir, images):
  """(class names, probabilities of them) from the export itself, on uint8 images."""
  out = predict.load_serving(os.path.join(model_dir, "export"))[0](
      images=tf.constant(np.asarray(images, np.uint8)))
  classes = out["classes"].numpy()
  return ([n.decode() for n in out["class_names"].numpy()],
          out["probabilities"].numpy()[np.arange(len(classes)), classes])


def read_rows(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def write(path, image, fmt=None):
  """Writes a uint8 HxWxC array as an image file (format from the extension)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(path, fmt)
  return str(path)


def submission_labels(path):
  rows = read_rows(path)
  assert rows[0] == ["ImageId", "Label"]
  assert [int(r[0]) for r in rows[1:]] == list(range(1, len(rows)))
  return [int(r[1]) for r in rows[1:]]


# --- 15: the data flags of trainer.main, with the run's values as defaults ---------------

def test_cli_predicts_a_tfds_dataset_in_the_given_data_dir(colour_run, tmp_path):
  """docs/usage.md's command (Predicting) after `make train`: --dataset and --data_dir as in training."""
  model_dir, name, data_dir = colour_run
  out = tmp_path / "submission.csv"
  proc = run("trainer.predict", f"--model_dir={model_dir}", f"--dataset={name}",
             f"--data_dir={data_dir}", f"--output={out}")
  assert f"wrote {TFDS_TEST_SIZE} predictions to {out}" in proc.stdout
  # The test split, fitted to the export's 12x10 as training fitted it, classified alike.
  data = input_pipeline.load(name, data_dir=data_dir, image_size=(12, 10))
  export = predict.load_serving(os.path.join(model_dir, "export"))[0]
  expected = export(images=tf.constant(data.splits["test"].images))["classes"].numpy()
  assert submission_labels(out) == expected.tolist()
  # The console: the first rows, then how many of each class, by label and name.
  lines = proc.stdout.strip().splitlines()
  names = ["red", "green", "blue"]
  assert lines[1].split() == ["ImageId", "Label"]
  assert [line.split(None, 1) for line in lines[2:7]] == [
      [str(i), f"{c} ({names[c]})"] for i, c in enumerate(expected[:5], start=1)]
  assert lines[7] == f"  ... {TFDS_TEST_SIZE - 5} more in {out}"
  counts = {int(part.split()[0]): int(part.split()[-1])
            for part in lines[8].removeprefix("per class: ").split(", ")}
  assert counts == {c: int((expected == c).sum()) for c in set(expected.tolist())}


def test_data_dir_and_dataset_default_to_the_runs(colour_run, tmp_path, monkeypatch):
  """Without --data_dir the run's is used, not TFDS's default; without --dataset, the run's
  own dataset's test split."""
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  model_dir, name, data_dir = colour_run
  # In this process the generated dataset's class is registered: TFDS would quietly build
  # it again in its default data_dir. Nothing may appear there.
  default = tmp_path / "tfds default"
  monkeypatch.setattr(constants, "DATA_DIR", str(default))
  monkeypatch.setenv("TFDS_DATA_DIR", str(default))
  given, no_data_dir, neither = (tmp_path / f"{n}.csv" for n in ("given", "dir", "neither"))
  predict_in_process(f"--model_dir={model_dir}", f"--dataset={name}",
                     f"--data_dir={data_dir}", f"--output={given}")
  predict_in_process(f"--model_dir={model_dir}", f"--dataset={name}", f"--output={no_data_dir}")
  predict_in_process(f"--model_dir={model_dir}", f"--output={neither}")
  assert len(submission_labels(given)) == TFDS_TEST_SIZE
  assert given.read_text() == no_data_dir.read_text() == neither.read_text()
  assert not default.exists()


def test_a_run_on_some_classes_predicts_their_own_ids_on_its_datasets_test_split(tmp_path):
  """--classes=3,1: the run's own test split is cut to them, and its Label column holds the
  dataset's class ids (3 and 1), not the model's (0 and 1)."""
  spec = "synthetic:shape=6x6x1,classes=5,train=64,test=40"
  model_dir = str(tmp_path / "run")
  train.train_and_evaluate(parse(
      "--model=mlp", "--hidden_units=8", f"--dataset={spec}", "--classes=3,1",
      "--batch_size=8", "--train_steps=2", "--eval_images=false", f"--model_dir={model_dir}"))
  output = tmp_path / "submission.csv"
  predict_in_process(f"--model_dir={model_dir}", f"--output={output}")
  labels = submission_labels(output)
  test = input_pipeline.load(spec).splits["test"]
  assert len(labels) == int(np.isin(test.labels, (3, 1)).sum()) and set(labels) <= {1, 3}
  # The same images as the export sees them, mapped from its classes to the dataset's.
  cut = input_pipeline.load(spec, classes=(3, 1)).splits["test"]
  names, _ = serve(model_dir, cut.images)
  assert labels == [{"3": 3, "1": 1}[n] for n in names]


def test_help_lists_the_data_flags_of_training():
  predict.define_flags()
  text = cli.help_text(predict.USAGE, predict.HELP_GROUPS)
  for name in ("model_dir", "images", "dataset", "output", "batch_size", "skip_bad_images",
               "data_dir", "manual_dir", "num_classes"):
    assert f"\n  --{name}" in text, name
  # The help of trainer.main's definition (trainer/options/command_line.py), not a second copy of it.
  assert FLAGS["data_dir"].help in " ".join(text.split())
  assert "--epochs" not in text


# --- 16: new image files -----------------------------------------------------------------

def test_cli_classifies_a_folder_of_new_images(colour_run, tmp_path):
  """Colour and grey files of any size and format, in a directory whose name holds
  glob characters: fitted to the export's 12x10x3; one row per image, the others ignored."""
  model_dir, _, _ = colour_run
  folder = tmp_path / "new images [1]"
  rng = np.random.default_rng(1)
  colour = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, (12, 10, 1), dtype=np.uint8)
  big = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
  paths = [write(folder / "a colour.png", colour),
           write(folder / "b grey.png", grey),
           # 2x each way: the area resize back to 12x10 gives the original pixels.
           write(folder / "c,big.bmp", big.repeat(2, axis=0).repeat(2, axis=1))]
  (folder / "notes.txt").write_text("not an image")
  write(folder / "subfolder" / "d.png", colour)  # a folder's subfolders are not searched
  out = tmp_path / "predictions.csv"
  proc = run("trainer.predict", f"--model_dir={model_dir}", f"--images={folder}",
             f"--output={out}")
  assert "Traceback" not in proc.stderr
  rows = read_rows(out)
  assert rows[0] == ["path", "class", "probability"]
  assert [r[0] for r in rows[1:]] == paths
  names, probabilities = serve(model_dir, [colour, np.repeat(grey, 3, axis=-1), big])
  assert [r[1] for r in rows[1:]] == names and set(names) <= {"red", "green", "blue"}
  np.testing.assert_allclose([float(r[2]) for r in rows[1:]], probabilities, atol=1e-6)
  # The console: where, once; the rows (paths quoted for a shell); how many of each class.
  lines = proc.stdout.strip().splitlines()
  assert lines[0] == f"wrote 3 predictions to {out}" and proc.stdout.count("wrote") == 1
  assert "wrote" not in proc.stderr  # not logged beside
  assert lines[1].split() == ["file", "class", "probability"]
  for line, path, name, p in zip(lines[2:5], paths, names, probabilities):
    assert line.split("  ")[1:] and line.strip().startswith(f"'{path}'")
    assert line.split()[-2:] == [name, f"{p:.4f}"]
  counts = {n: names.count(n) for n in names}
  assert lines[5] == "per class: " + ", ".join(
      f"{n} {c}" for n, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def test_images_become_the_exports_channels(grey_run, tmp_path):
  """A grey export takes colour files too (RGB, RGBA, palette GIF, BMP: TensorFlow
  refuses to decode the last two as grey); equal channels become the same grey."""
  rng = np.random.default_rng(2)
  grey = rng.integers(0, 256, (12, 12, 1), dtype=np.uint8)
  rgb = np.repeat(grey, 3, axis=-1)
  rgba = np.concatenate([rgb, np.full_like(grey, 255)], axis=-1)
  files = [write(tmp_path / "in" / "1.png", grey), write(tmp_path / "in" / "2.png", rgb),
           write(tmp_path / "in" / "3.png", rgba), write(tmp_path / "in" / "4.gif", grey),
           write(tmp_path / "in" / "5.bmp", rgb),
           write(tmp_path / "in" / "6.png", grey.repeat(3, axis=0).repeat(3, axis=1))]
  out = tmp_path / "out.csv"
  predict_in_process(f"--model_dir={grey_run}", f"--images={','.join(files)}",
                     f"--output={out}")
  rows = read_rows(out)[1:]
  names, probabilities = serve(grey_run, [grey])
  assert [r[0] for r in rows] == files
  assert {r[1] for r in rows} == set(names)
  np.testing.assert_allclose([float(r[2]) for r in rows], probabilities[0], atol=1e-6)


def test_patterns_lists_and_literal_brackets(grey_run, tmp_path):
  """A pattern after a directory named with [ ] * ?, a folder's subfolders by 'DIR/*/',
  a comma list with a space after the comma: files in the order given, each once."""
  image = np.zeros((12, 12, 1), np.uint8)
  odd = tmp_path / "odd [a]*?"
  a, b = write(odd / "a.png", image), write(odd / "b.jpg", image)
  c = write(odd / "sub" / "c.png", image)
  write(tmp_path / "odd ax" / "x.png", image)  # what 'odd [a]*?' matches as a pattern
  out = tmp_path / "out.csv"
  predict_in_process(f"--model_dir={grey_run}", f"--images={odd}/*.png,{odd}/*/, {b},{a}",
                     f"--output={out}")
  assert [r[0] for r in read_rows(out)[1:]] == [a, c, b]


def test_bucket_paths_go_through_tf_io_gfile(grey_run):
  """ram:// stands for gs://: listing, reading and the output file."""
  image = np.zeros((12, 12, 1), np.uint8)
  tf.io.gfile.makedirs("ram://bucket/new [2]")
  for name in ("x.png", "y.png"):
    tf.io.write_file(f"ram://bucket/new [2]/{name}", tf.io.encode_png(image))
  predict_in_process(f"--model_dir={grey_run}", "--images=ram://bucket/new [2]/*.png",
                     "--output=ram://bucket/out/predictions.csv")
  with tf.io.gfile.GFile("ram://bucket/out/predictions.csv") as f:
    rows = list(csv.reader(f))
  assert [r[0] for r in rows[1:]] == ["ram://bucket/new [2]/x.png", "ram://bucket/new [2]/y.png"]


def test_cli_names_an_unreadable_image_and_writes_nothing(grey_run, tmp_path, capsys):
  good = write(tmp_path / "in" / "a.png", np.zeros((12, 12, 1), np.uint8))
  bad = tmp_path / "in" / "b.png"
  bad.write_bytes(b"not a png")
  out = tmp_path / "predictions.csv"
  proc = run("trainer.predict", f"--model_dir={grey_run}", f"--images={tmp_path / 'in'}",
             f"--output={out}", check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.strip()]
  assert errors == [f"error: {bad} is not a readable image: remove it from --images, or pass "
                    "--skip_bad_images to skip such files"], proc.stderr
  assert not out.exists() and os.listdir(tmp_path) == ["in"]  # no temporary file either
  # Its dry run reads each file's first bytes: refused alike, or counted as skipped.
  with pytest.raises(DataError, match=re.escape(errors[0].removeprefix("error: "))):
    predict_in_process(f"--model_dir={grey_run}", f"--images={tmp_path / 'in'}",
                       f"--output={out}", "--dry_run")
  (tmp_path / "in" / "gone.png").symlink_to(tmp_path / "nothing")
  predict_in_process(f"--model_dir={grey_run}", f"--images={tmp_path / 'in'}",
                     f"--output={out}", "--dry_run", "--skip_bad_images")
  assert capsys.readouterr().out.strip() == (
      f"dry run: nothing was written; without --dry_run this writes 1 predictions to {out} "
      "(2 unreadable file(s) skipped)")
  (tmp_path / "in" / "gone.png").unlink()
  # Asked to, it skips such files and says how many.
  predict_in_process(f"--model_dir={grey_run}", f"--images={tmp_path / 'in'}",
                     f"--output={out}", "--skip_bad_images")
  assert [r[0] for r in read_rows(out)[1:]] == [good]


@pytest.mark.parametrize("args, error, message", [
    (["--images=MISSING"], DataError, "--images: MISSING: no such file or directory; give a "
     "folder, a pattern"),
    (["--images=EMPTY"], DataError, r"--images: no image files \(.jpg, .jpeg, .png, .gif, "
     r".bmp\) in EMPTY \(its subfolders are not searched: give DIR/\*/ for them\)"),
    (["--images=EMPTY/*.png"], DataError, "--images: EMPTY/\\*.png matches no image file"),
    (["--images=EMPTY", "--dataset=mnist"], cli.UsageError, "--images and --dataset both "
     "given: give one"),
    (["--images=EMPTY", "--data_dir=x"], cli.UsageError, "--images classifies image files; "
     "--data_dir is for a --dataset: give one of the two"),
    (["--images=EMPTY", "--epochs=2"], cli.UsageError, "--epochs does not apply to "
     "trainer.predict"),
    (["--dataset=synthetic:shape=12x12x1,classes=4,train=8,test=2", "--image_size=20"],
     cli.UsageError, "--image_size does not apply to trainer.predict"),
    (["--images=EMPTY", "--tta=flip"], cli.UsageError, "--tta=flip: trainer.predict averages "
     "the views its run was trained with .the export's.; only --tta=none"),
])
def test_bad_input_is_named_with_its_fix(grey_run, tmp_path, args, error, message):
  (tmp_path / "empty").mkdir()
  args = [a.replace("MISSING", str(tmp_path / "missing")).replace("EMPTY", str(tmp_path / "empty"))
          for a in args]
  message = message.replace("MISSING", re.escape(str(tmp_path / "missing"))).replace(
      "EMPTY", re.escape(str(tmp_path / "empty")))
  with pytest.raises(error, match=message):
    predict_in_process(f"--model_dir={grey_run}", *args, f"--output={tmp_path / 'o.csv'}")
  assert not (tmp_path / "o.csv").exists()


def test_a_model_dir_without_export_or_flags(tmp_path):
  with pytest.raises(cli.UsageError, match="no exported model in .*export: train first"):
    predict_in_process(f"--model_dir={tmp_path}", "--images=x.png")
  # An export copied without flags.json: which data to classify is for the user to say.
  with pytest.raises(cli.UsageError, match="has no flags.json naming the run's dataset: give "
                     "--images=DIR"):
    predict.data_flags(str(tmp_path))


@pytest.mark.parametrize("part", ["saved_model.pb", "variables/variables.data-00000-of-00001"])
def test_a_damaged_export_is_named_with_the_command_that_makes_it_anew(grey_run, tmp_path,
                                                                       part):
  copy = tmp_path / "a run"
  shutil.copytree(grey_run, copy)
  damaged = copy / "export" / part
  damaged.write_bytes(damaged.read_bytes()[:len(damaged.read_bytes()) // 2])
  with pytest.raises(cli.UsageError) as caught:
    predict_in_process(f"--model_dir={copy}", f"--images={tmp_path}")
  assert re.fullmatch(
      rf"the export '{re.escape(str(copy / 'export'))}' cannot be loaded \(.+\): export it "
      rf"anew by rerunning python -m trainer.main '--model_dir={re.escape(str(copy))}' \(a "
      r"finished run is evaluated and exported again, not trained\)", str(caught.value))


def test_an_output_that_cannot_be_written_is_refused_before_anything_is_classified(
    grey_run, tmp_path, monkeypatch):
  """Its dry run too: the run would find it only at its end, after classifying all."""
  write(tmp_path / "in" / "a.png", np.zeros((12, 12, 1), np.uint8))
  (tmp_path / "a file").write_text("")
  monkeypatch.setattr(predict.folder, "read_images", lambda *a: pytest.fail("classified"))
  monkeypatch.setattr(predict, "_classify", lambda *a: pytest.fail("classified"))
  cases = [([f"--images={tmp_path / 'in'}", f"--output={tmp_path / 'a file' / 'p.csv'}"],
            f"cannot write '--output={tmp_path / 'a file' / 'p.csv'}' ('{tmp_path / 'a file'}' "
            "is a file, not a directory): choose another --output"),
           ([f"--images={tmp_path / 'in'}", f"--output={tmp_path / 'in'}"],
            f"--output={tmp_path / 'in'} is a directory: give a file name"),
           (["--dataset=synthetic:shape=12x12x1,classes=4,train=8,test=2",
             f"--output={tmp_path / 'a file' / 'new' / 's.csv'}"], "is a file, not a directory")]
  for args, message in cases:
    for dry in (["--dry_run"], []):
      with pytest.raises(cli.UsageError, match=re.escape(message)):
        predict_in_process(f"--model_dir={grey_run}", *args, *dry)
  assert sorted(os.listdir(tmp_path)) == ["a file", "in"]
