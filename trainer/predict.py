"""Class predictions from a run's export: for new image files, or a dataset's test split.

    python -m trainer.predict --model_dir=runs/quickstart --images=new_images/
    python -m trainer.predict --model_dir=runs/kaggle --dataset=csv:test.csv --output=submission.csv
    python -m trainer.predict --model_dir=runs/quickstart          # the run's own test split

--images: a folder, a pattern or a comma list of files; each image is fitted to the
export's size (resized to cover, centre cropped, as evaluation fits them) and converted to
its channels (grey or colour). The CSV holds path,class,probability per file.
--dataset: any source trainer.main reads; its test split, as a Kaggle Digit Recognizer
submission (ImageId,Label). Without either: the run's own dataset (model_dir/flags.json).

The data flags are trainer.main's (trainer/options/declared.py declares them once) and mean the same
here. --data_dir defaults to the run's (where its TFDS data was); --manual_dir,
--num_classes and --skip_bad_images to the run's when predicting on the run's own dataset.
"""

from absl import flags

from trainer import cli
from trainer.deploy import formats
from trainer.options import command_line
from trainer.options.values import flag_arg

FLAGS = flags.FLAGS

_DATA_FLAGS = ("dataset", "data_dir", "manual_dir", "num_classes", "skip_bad_images")
# tapeloop's flags that mean something here; any other one given is refused, not ignored.
_USED = ("model_dir", "model", "batch_size", "tta", "dry_run", *_DATA_FLAGS)
# The run's recorded values of these describe its own data: inherited only for it.
_OWN_DATA = ("manual_dir", "num_classes", "skip_bad_images")
# Flags that locate a --dataset: meaningless beside --images.
_LOCATES = ("dataset", "data_dir", "manual_dir", "num_classes")

HELP_GROUPS = {"Prediction": ["model_dir", "model", "images", "dataset", "output", "batch_size",
                              "skip_bad_images", "tta", "dry_run"],
               "Where --dataset's data is (as in trainer.main; default: the run's)":
                   ["data_dir", "manual_dir", "num_classes"]}
USAGE = ("python -m trainer.predict --model_dir=DIR [--images=DIR|'DIR/*.png'|A.png,B.jpg | "
         "--dataset=SPEC] [--output=FILE] [--tta=none]\n"
         "python -m trainer.predict --model=FILE.tflite|FILE.onnx [--model_dir=DIR] "
         "[--images=... | --dataset=SPEC]\n\n"
         "--model: a file trainer.export wrote, run by LiteRT or onnxruntime instead of the "
         "run's SavedModel (the same CSV).\n"
         "--images: new image files, fitted to the export's size and channels; writes "
         "path,class,probability per file.\n--dataset: a source as in trainer.main; its test "
         "split as ImageId,Label. Neither: the run's own dataset (model_dir/flags.json), "
         "its test split.\n--tta=none: without the views of a run trained with --tta (the "
         "export's plain signature).")


def define_flags() -> None:
  """tapeloop's flags (trainer/options/command_line.py) and predict's own (once per process: absl
  refuses a second)."""
  command_line.define_flags()
  cli.define_flag("string", "images", None, "Image files to classify: a folder (its .jpg, "
                  ".jpeg, .png, .gif, .bmp files; not its subfolders), a pattern in quotes "
                  "('photos/*.jpg', 'photos/*/') or a comma list of files; any "
                  "TensorFlow filesystem (gs://).")
  cli.define_flag("string", "output", None, "The CSV to write, whole or not at all (default "
                  "predictions.csv for --images: path,class,probability; "
                  "submission.csv for a dataset: ImageId,Label).")


def run():
  """Console script entry point (tapeloop-predict): the flags are parsed before this
  module's TensorFlow part below is imported (as trainer.predict), then its main runs."""
  define_flags()
  # --help shows no default dataset: here it is the run's own, not trainer.main's mnist.
  # (Only in the program: importing predict must not change trainer.main's defaults.)
  FLAGS.set_default("dataset", None)
  FLAGS["model"].help = ("An exported .tflite or .onnx file (python -m trainer.export) to "
                         "predict with instead of --model_dir's SavedModel.")
  FLAGS.set_default("model", None)
  cli.run_app("trainer.predict", USAGE, HELP_GROUPS)


# Above this line, nothing imports TensorFlow: python -m trainer.predict stops here.
if __name__ == "__main__":
  run()

# pylint: disable=g-import-not-at-top,wrong-import-position,wrong-import-order
import collections
import contextlib
import os
import shlex

from trainer.process import tf_env

tf_env.apply()  # before anything imports TensorFlow

import numpy as np
import tensorflow as tf
from absl import logging

import input_pipeline
from input_pipeline import DataError
from input_pipeline.readers import folder
from input_pipeline.specs import parse_spec
from trainer.deploy import runtimes
from trainer.options import declared
from trainer.options.declared import normalized
from trainer.options.values import class_ids
from trainer.process import files
from trainer.process.errors import UsageError
from trainer.run import dry_run, export, run_files
# pylint: enable=g-import-not-at-top,wrong-import-position,wrong-import-order

def load_serving(export_dir: str, plain: bool = False):
  """The export's uint8 signature (plain: without its run's test-time augmentation), its
  image shape and its number of classes. UsageError naming the export when it cannot be
  loaded (a damaged saved_model.pb or variables), with the command that exports it anew."""
  try:
    signatures = tf.saved_model.load(export_dir).signatures
    # An export of a run with --tta has serving_plain beside; without, the default is plain.
    serve = signatures["serving_plain" if plain and "serving_plain" in signatures
                       else "serving_default"]
  # A truncated variables file raises IndexError ("Read less bytes than requested").
  except (OSError, ValueError, KeyError, IndexError, EOFError, tf.errors.OpError) as e:
    message = getattr(e, "message", None) or str(e) or type(e).__name__
    reason = message.strip().splitlines()[0].replace(export_dir, "it")[:120]
    model_dir = os.path.dirname(export_dir.rstrip("/"))
    raise UsageError(
        f"the export {shlex.quote(export_dir)} cannot be loaded ({reason}): export it anew "
        f"by rerunning python -m trainer.main {flag_arg('model_dir', model_dir)} "
        "(a finished run is evaluated and exported again, not trained)") from None
  shape = tuple(serve.structured_input_signature[1]["images"].shape[1:])
  return serve, shape, serve.structured_outputs["probabilities"].shape[-1]


def check_data(split, image_shape, num_classes, what: str) -> None:
  """An export labels only images of its own shape: refuse others, and labeled data with
  classes the model does not know (an unlabeled CSV's class count is unknown)."""
  if tuple(split.images.shape[1:]) != tuple(image_shape):
    raise UsageError(f"{what} has images of shape "
                     f"{'x'.join(map(str, split.images.shape[1:]))} but the model in "
                     f"{_model()} takes "
                     f"{'x'.join(map(str, image_shape))}: predict with a model trained on "
                     "this kind of data")
  if split.labels is not None and len(split.labels) and split.labels.max() >= num_classes:
    raise UsageError(f"{what} has labels up to {split.labels.max()} but the model in "
                     f"{_model()} predicts {num_classes} classes: "
                     "predict with a model trained on these classes")


def _classify(serve, images, batch_size: int) -> tuple[np.ndarray, list[str]]:
  """The export's class of each image, and its name."""
  classes, names = [np.zeros(0, np.int32)], []
  for i in range(0, len(images), batch_size):
    out = serve(images=tf.constant(images[i:i + batch_size]))
    classes.append(np.asarray(out["classes"]))
    names += [n.decode() for n in np.asarray(out["class_names"])]
  return np.concatenate(classes), names


def predict_classes(serve, images, batch_size: int):
  return _classify(serve, images, batch_size)[0]


# Rows of the predictions shown on the console (all are in the CSV).
SHOWN = 5


def summary(output: str, header: tuple[str, ...], rows: list[tuple], names: list[str],
            note: str = "") -> str:
  """What the console shows of the predictions written: where, the first rows as a table,
  and how many of each class."""
  q = shlex.quote
  lines = [f"wrote {len(rows)} predictions to {q(output)}{note}"]
  table = [header] + [tuple(map(str, row)) for row in rows[:SHOWN]]
  widths = [max(len(row[i]) for row in table) for i in range(len(header))]
  lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
  if len(rows) > SHOWN:
    lines.append(f"  ... {len(rows) - SHOWN} more in {q(output)}")
  counts = sorted(collections.Counter(names).items(), key=lambda kv: (-kv[1], kv[0]))
  lines.append("per class: " + ", ".join(f"{name} {n}" for name, n in counts))
  return "\n".join(lines)


def _model() -> str:
  """The model predicting, as messages name it: --model's file, else the run."""
  return shlex.quote(FLAGS.model if FLAGS["model"].present else FLAGS.model_dir)


def _check_file_of_run(path: str, model_dir: str) -> None:
  """An exported file's report names the run it came from: another --model_dir would read
  that run's data and classes for it."""
  try:
    report = files.read_json(path + formats.REPORT_SUFFIX) or {}
  except (ValueError, OSError, tf.errors.OpError):
    return  # no readable report: nothing to go by
  source = report.get("model_dir")
  if isinstance(source, str) and not run_files.same_directory(source, model_dir):
    raise UsageError(f"{shlex.quote(path)} was exported from the run {shlex.quote(source)} "
                     f"(its report), not {shlex.quote(model_dir)}: give "
                     f"{flag_arg('model_dir', source)}, or drop --model_dir and give "
                     "--images or --dataset")


def _check_flags() -> None:
  if FLAGS["model"].present:
    if formats.of_path(FLAGS.model) is None:
      raise UsageError(f"{flag_arg('model', FLAGS.model)}: trainer.predict's --model is an "
                       "exported .tflite or .onnx file (python -m trainer.export); for a "
                       "run's SavedModel give --model_dir=DIR alone")
    if FLAGS["tta"].present:
      raise UsageError("--tta=none does not apply to an exported file (its views are part of "
                       "it): export the run with python -m trainer.export --tta=none")
    if not FLAGS.model_dir and FLAGS.images is None and not FLAGS["dataset"].present:
      raise UsageError("--model predicts --images=DIR or a --dataset's test split; give "
                       "one, or --model_dir=DIR to predict the run's own dataset")
  elif not FLAGS.model_dir:
    raise UsageError("--model_dir is required: the trained run whose export classifies "
                         "(e.g. --model_dir=runs/quickstart)")
  unused = [n for n in declared.NAMES if FLAGS[n].present and n not in _USED]
  if unused:
    raise UsageError(f"--{unused[0]} does not apply to trainer.predict (the export fixes "
                         "the model and its image size): drop it; python -m trainer.predict "
                         "--help lists the flags")
  if FLAGS.images is not None:
    given = [n for n in _LOCATES if FLAGS[n].present]
    if "dataset" in given:
      raise UsageError("--images and --dataset both given: give one (image files, or "
                           "a dataset's test split)")
    if given:
      raise UsageError(f"--images classifies image files; --{given[0]} is for a "
                           "--dataset: give one of the two")
    if not FLAGS.images.strip():
      raise UsageError("--images is empty: give a folder, a pattern ('DIR/*.png') or "
                           "image files")
  if FLAGS.batch_size < 1:
    raise UsageError(f"--batch_size={FLAGS.batch_size} must be positive")
  if FLAGS["tta"].present and FLAGS.tta.strip() != "none":
    raise UsageError(f"--tta={FLAGS.tta}: trainer.predict averages the views its run was "
                     "trained with (the export's); only --tta=none, to predict without "
                     "them, applies here")


def data_flags(model_dir: str) -> dict:
  """--dataset and the flags that locate and read it: as given, else as the run recorded
  them (data_dir always; the others for the run's own dataset only), else the defaults.
  Also the run's image_size (whether its export takes images fitted to a size), its
  classes (--classes: the dataset's ids of the model's classes) and whether the dataset
  is the run's own ("own")."""
  recorded = (run_files.read_record(model_dir) if model_dir else None) or {}
  values = {n: FLAGS[n].value for n in _DATA_FLAGS if FLAGS[n].present}
  if "dataset" not in values:
    if "dataset" not in recorded:
      raise UsageError(f"{shlex.quote(model_dir)} has no flags.json naming the run's dataset: give "
                           "--images=DIR (new image files) or --dataset=SPEC")
    values["dataset"] = recorded["dataset"]
  # Compared by meaning (folder:photos/ is folder:photos, mnist is tfds:mnist).
  own = normalized("dataset", values["dataset"]) == normalized("dataset", recorded.get("dataset"))
  for name in _DATA_FLAGS:
    if name not in values:
      inherit = name in recorded and (name == "data_dir" or (own and name in _OWN_DATA))
      values[name] = recorded[name] if inherit else FLAGS[name].default
  values["image_size"] = recorded.get("image_size")
  # A run trained on some classes (--classes) predicts their ids; its own dataset's test
  # split is cut to them, as training cut it.
  values["classes"] = class_ids(recorded.get("classes"))
  values["own"] = own
  return values


def _predict_dataset(serve, image_shape, num_classes, output: str) -> str:
  """The test split's classes as a Kaggle submission; returns its summary."""
  values = data_flags(FLAGS.model_dir)
  spec = values["dataset"]
  what = (flag_arg('dataset', spec) if FLAGS["dataset"].present
          else f"the run's dataset {shlex.quote(spec)}")
  kind, _ = parse_spec(spec)
  # Images of any size (a folder's; a run trained with --image_size) are fitted to the
  # export's, as training fitted them; others must have its shape already.
  size = image_shape[:2] if kind == "folder" or values["image_size"] else None
  data = input_pipeline.load(spec, data_dir=values["data_dir"],
                             manual_dir=values["manual_dir"],
                             num_classes=values["num_classes"], image_size=size,
                             skip_bad_images=values["skip_bad_images"],
                             folder_check=(run_files.read_folder_check(FLAGS.model_dir, spec)
                                           if FLAGS.model_dir else None),
                             classes=values["classes"] if values["own"] else None)
  split = data.splits.get("test")
  if split is None:
    raise UsageError(f"{what} has no test split to predict: give --images=DIR for "
                         "image files, or a --dataset with test data (csv:test.csv, "
                         "folder:DIR with DIR/test/)")
  check_data(split, image_shape, num_classes, what)
  if FLAGS.dry_run:
    return _dry_run_note(len(split), output)
  if values["classes"] and len(values["classes"]) != num_classes:
    raise UsageError(f"{_model()} predicts {num_classes} classes but the run in "
                     f"{shlex.quote(FLAGS.model_dir)} was trained on "
                     f"{len(values['classes'])} (--classes): give the model's own run as "
                     "--model_dir")
  classes, names = _classify(serve, split.images, FLAGS.batch_size)
  if values["classes"]:  # the model's class k is the dataset's class classes[k]
    classes = np.asarray(values["classes"])[classes]
  _write(output, lambda export: export.write_submission(output, classes))
  named = [f"{c} ({n})" if n != str(c) else n for c, n in zip(classes, names)]
  return summary(output, ("ImageId", "Label"),
                 [(i, label) for i, label in enumerate(named, start=1)], named)


# The formats --images reads, by their first bytes (as tf.io.decode_image tells them).
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def _opens_as_image(path: str) -> bool:
  """Whether the file can be read and starts as an image does: a dry run's check of each
  --images file, without decoding it (a damaged body is found by the run)."""
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      head = f.read(8)
  except (OSError, tf.errors.OpError):
    return False
  return head.startswith(_IMAGE_MAGIC)


def _dry_run_note(count: int, output: str) -> str:
  return (f"dry run: nothing was written; without --dry_run this writes {count} "
          f"predictions to {shlex.quote(output)}")


def _predict_files(serve, image_shape, output: str) -> str:
  """Each --images file's class name and probability as CSV; returns its summary."""
  paths = folder.list_images(FLAGS.images)
  skip = FLAGS.skip_bad_images

  def refuse(position):
    raise DataError(f"{shlex.quote(paths[position])} is not a readable image: remove it "
                    "from --images, or pass --skip_bad_images to skip such files")

  if FLAGS.dry_run:
    bad = [i for i, path in enumerate(paths) if not _opens_as_image(path)]
    if bad and not skip:
      refuse(bad[0])
    if len(bad) == len(paths):
      raise DataError(f"none of the {len(paths)} files --images names is a readable image "
                      f"(e.g. {shlex.quote(paths[0])})")
    note = _dry_run_note(len(paths) - len(bad), output)
    return note + (f" ({len(bad)} unreadable file(s) skipped)" if bad else "")
  height, width, channels = image_shape
  batches = folder.read_images(paths, (height, width), channels).batch(FLAGS.batch_size)
  seen, names, probabilities = [], [], []

  for positions, images in batches.prefetch(1).as_numpy_iterator():
    # An unreadable file leaves a gap in the positions: named at once, before the rest.
    expected = np.arange(len(seen), len(seen) + len(positions))
    if not skip and (positions != expected).any():
      refuse(int(expected[np.argmax(positions != expected)]))
    out = serve(images=tf.constant(images))
    classes = np.asarray(out["classes"])
    seen += positions.tolist()
    names += [n.decode() for n in np.asarray(out["class_names"])]
    probabilities += np.asarray(out["probabilities"])[np.arange(len(classes)), classes].tolist()
  if not skip and len(seen) < len(paths):
    refuse(len(seen))
  if not seen:
    raise DataError(f"none of the {len(paths)} files --images names is a readable image "
                    f"(e.g. {shlex.quote(paths[0])})")
  skipped = len(paths) - len(seen)
  if skipped:
    first = paths[min(set(range(len(paths))) - set(seen))]
    logging.warning("skipped %d unreadable image file(s) (--skip_bad_images), e.g. %s",
                    skipped, shlex.quote(first))
  _write(output, lambda export: export.write_predictions(
      output, [paths[i] for i in seen], names, probabilities))
  rows = [(shlex.quote(paths[i]), name, f"{p:.4f}")
          for i, name, p in zip(seen, names, probabilities)]
  note = f" ({skipped} unreadable file(s) skipped)" if skipped else ""
  return summary(output, ("file", "class", "probability"), rows, names, note)


def _write(output: str, write) -> None:
  """write(export module); a path that cannot be written ends in one line, not a trace."""
  try:
    write(export)
  except (OSError, tf.errors.OpError) as e:
    reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
    raise UsageError(f"cannot write {flag_arg('output', output)} ({reason}): choose another "
                         "--output") from None


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {' '.join(argv[1:])}: flags look like "
                         "--name=value (quote a pattern: --images='DIR/*.png')")
  _check_flags()
  output = FLAGS.output or ("predictions.csv" if FLAGS.images is not None else "submission.csv")
  run_files.check_output(output, "predictions.csv")
  if FLAGS["model"].present:
    serve = runtimes.load(FLAGS.model)
    image_shape, num_classes = serve.image_shape, serve.num_classes
    if FLAGS.model_dir:
      _check_file_of_run(FLAGS.model, FLAGS.model_dir)
  else:
    export_dir = os.path.join(FLAGS.model_dir, "export")
    if not tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
      raise UsageError(f"no exported model in {shlex.quote(export_dir)}: train first with "
                       f"python -m trainer.main {flag_arg('model_dir', FLAGS.model_dir)}")
    serve, image_shape, num_classes = load_serving(export_dir, plain=FLAGS["tta"].present)
  # A dry run reads the data without preparing or caching anything, and only while it runs
  # (a caller's later loads in this process prepare as usual).
  with dry_run.read_only() if FLAGS.dry_run else contextlib.nullcontext():
    if FLAGS.images is not None:
      shown = _predict_files(serve, image_shape, output)
    else:
      shown = _predict_dataset(serve, image_shape, num_classes, output)
  print(shown)

