"""Exports a run's model as a LiteRT (.tflite) or ONNX file, checked before it is published.

    python -m trainer.export --model_dir=runs/quickstart --format=litert
    python -m trainer.export --model_dir=runs/quickstart --format=litert --quantize=int8
    python -m trainer.export --model_dir=runs/quickstart --format=onnx --checkpoint=best

The file takes what the run's SavedModel takes (uint8 images of its size) and gives the
class probabilities (with the run's --tta views averaged) and the classes; their names are
in FILE.classes.txt beside it. Before it is published, the converted file is run by its own
runtime (LiteRT's interpreter, onnxruntime) beside the SavedModel of the same weights on
the run's test split: accuracy, agreement, the largest probability difference, size and
one image's latency, on the console and in FILE.report.json. An export whose accuracy falls
more than --max_accuracy_drop points below the SavedModel's is not published: exit 3, its
report in FILE.rejected.json.
"""

from absl import flags

from trainer import cli
from trainer.options import command_line

FLAGS = flags.FLAGS

# tapeloop's flags that mean something here; any other one given is refused, not ignored.
_USED = ("model_dir", "dataset", "data_dir", "manual_dir", "tta", "dry_run")
HELP_GROUPS = {"Export": ["model_dir", "format", "quantize", "checkpoint", "output", "opset",
                          "tta", "dry_run"],
               "The check before publishing": ["max_accuracy_drop", "calibration_examples",
                                               "dataset", "data_dir", "manual_dir"]}
USAGE = ("python -m trainer.export --model_dir=DIR --format=litert|onnx "
         "[--quantize=none|float16|dynamic|int8] [--checkpoint=final|best|PREFIX] "
         "[--output=FILE]")
# Exit status of an export that failed its check (not published).
EXIT_REJECTED = 3
# Below this agreement with the SavedModel, a published export is said to be suspicious.
LOW_AGREEMENT = 0.9


def define_flags() -> None:
  """tapeloop's flags and export's own (once per process: absl refuses a second; a flag of
  the same name another program defined in this process is left as it is)."""
  command_line.define_flags()
  own = [
      ("string", "format", None, "litert (LiteRT, formerly TensorFlow Lite: phones, "
       "microcontrollers, browsers) or onnx (onnxruntime and other ONNX servers)."),
      ("string", "quantize", "none", "litert: none (float32), float16 (weights), dynamic "
       "(int8 weights) or int8 (every operation on integers, calibrated on the run's "
       "training images). onnx: none."),
      # None, not "final": trainer.evaluate's --checkpoint (None: the latest) is the same
      # flag when both programs run in one process (tests).
      ("string", "checkpoint", None, "final (the run's latest checkpoint; the default), best "
       "(its --keep_best checkpoint) or a checkpoint prefix of the run."),
      ("string", "output", None, "The file to write (any TensorFlow filesystem; default "
       "model_dir/exports/NAME.tflite or .onnx, NAME: model, best or the checkpoint's, "
       "then _QUANTIZATION or _opsetN when given)."),
      ("integer", "opset", 17, "onnx: the ONNX operator set (13 to 18)."),
      ("float", "max_accuracy_drop", 1.0, "Percentage points the export's accuracy may fall "
       "below the SavedModel's on the check's images; more and it is not published (exit 3)."),
      ("integer", "calibration_examples", 200, "--quantize=int8: training images the "
       "activations' ranges are measured on (drawn with the run's --seed)."),
  ]
  for kind, name, default, text in own:
    cli.define_flag(kind, name, default, text)


def run():
  """Console script entry point (tapeloop-export): the flags are parsed before this
  module's TensorFlow part below is imported (as trainer.export), then its main runs."""
  define_flags()
  # What the shared flags mean here (only in the program: importing export must not change
  # trainer.main's help).
  FLAGS["model_dir"].help = "The trained run to export (its flags.json and checkpoints)."
  FLAGS["tta"].help = ("none: export without the test-time views the run was trained with "
                       "(default: with them, as its SavedModel).")
  FLAGS["dry_run"].help = ("Check the flags, the checkpoint, the output and the run's data, "
                           "print what would be exported and exit 0, writing nothing.")
  FLAGS.set_default("tta", None)  # the run's views unless --tta=none
  FLAGS.set_default("dataset", None)
  FLAGS["dataset"].help = ("The run's data where it is now, when it moved (default: as "
                           "the run recorded it): the same images as trained on.")
  FLAGS["data_dir"].help = "Where the run's TFDS data is now (default: the run's)."
  cli.run_app("trainer.export", USAGE, HELP_GROUPS)


# Above this line, nothing imports TensorFlow: python -m trainer.export stops here.
if __name__ == "__main__":
  run()

# pylint: disable=g-import-not-at-top,wrong-import-position,wrong-import-order
import datetime
import os
import platform
import shlex

from trainer.process import tf_env

tf_env.apply()  # before anything imports TensorFlow

import tensorflow as tf
from absl import logging

from trainer.deploy import convert, formats, runtimes, verify
from trainer.options import declared
from trainer.options.values import flag_arg
from trainer.process import files
from trainer.process.errors import UsageError
from trainer.run import dry_run, restored, run_files
# pylint: enable=g-import-not-at-top,wrong-import-position,wrong-import-order


def _check_flags() -> None:
  if not FLAGS.model_dir:
    raise UsageError("--model_dir is required: the trained run to export "
                     "(e.g. --model_dir=runs/quickstart)")
  if not FLAGS.format:
    raise UsageError("--format is required: --format=litert (LiteRT) or --format=onnx")
  formats.check(FLAGS.format, FLAGS.quantize)
  unused = [n for n in declared.NAMES if FLAGS[n].present and n not in _USED]
  if unused:
    raise UsageError(f"--{unused[0]} does not apply to trainer.export (the run fixes the "
                     "model and its data): drop it; python -m trainer.export --help lists "
                     "the flags")
  if FLAGS["tta"].present and FLAGS.tta.strip() != "none":
    raise UsageError(f"--tta={FLAGS.tta}: the export averages the views its run was trained "
                     "with; only --tta=none, to export without them, applies here")
  if FLAGS["opset"].present and FLAGS.format != "onnx":
    raise UsageError("--opset applies to --format=onnx only: drop it")
  if not 13 <= FLAGS.opset <= 18:
    raise UsageError(f"--opset={FLAGS.opset} is not offered: give 13 to 18 (tf2onnx's range)")
  if FLAGS["calibration_examples"].present and FLAGS.quantize != "int8":
    raise UsageError("--calibration_examples applies to --quantize=int8 only: drop it")
  if FLAGS.calibration_examples < 1:
    raise UsageError(f"--calibration_examples={FLAGS.calibration_examples} must be positive")
  if not FLAGS.max_accuracy_drop >= 0:
    raise UsageError(f"--max_accuracy_drop={FLAGS.max_accuracy_drop} must be 0 or more "
                     "(percentage points)")


def _convert(model, image_shape, tta, class_names, calibration) -> bytes:
  function = convert.frozen_function(model, image_shape, tta)
  if FLAGS.format == "litert":
    return convert.litert(function, FLAGS.quantize, calibration)
  return convert.onnx(function, FLAGS.opset, convert.class_metadata(class_names))


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {' '.join(argv[1:])}: flags look like --name=value")
  _check_flags()
  formats.require(FLAGS.format)
  given = {n: FLAGS[n].value for n in ("dataset", "data_dir", "manual_dir")
           if FLAGS[n].present}
  # The export computes in float32 whatever the run's policy (the weights are float32);
  # --quantize makes it smaller.
  given["mixed_precision"] = "float32"
  if FLAGS["tta"].present:
    given["tta"] = "none"
  cfg, recorded = restored.run_config(FLAGS.model_dir, given)
  which = FLAGS.checkpoint or "final"
  checkpoint = restored.checkpoint(cfg.model_dir, which, "trainer.export")
  default = formats.default_file(cfg.model_dir, FLAGS.format, FLAGS.quantize, which,
                                 FLAGS.opset if FLAGS["opset"].present else None,
                                 tta=not FLAGS["tta"].present)
  output = FLAGS.output or default
  run_files.check_output(output, os.path.basename(default))
  suffix = formats.FORMATS[FLAGS.format][0]
  if not output.endswith(suffix):  # nor a run's own file (flags.json, saved_model.pb)
    kind = "an ONNX" if FLAGS.format == "onnx" else "a LiteRT"
    raise UsageError(f"{flag_arg('output', output)}: {kind} file's name ends in {suffix}, "
                     f"e.g. {flag_arg('output', os.path.basename(default))}")
  what = f"{FLAGS.format}" + ("" if FLAGS.quantize == "none" else f" {FLAGS.quantize}")
  if FLAGS.dry_run:
    with dry_run.read_only():
      data = run_files.load_data(cfg)
    split_name = verify.check_split(data)
    print(f"dry run: nothing was written; without --dry_run this exports "
          f"{shlex.quote(checkpoint)} as {what} to {shlex.quote(output)} once it is checked "
          f"against the SavedModel on the {len(data.splits[split_name]):,} {split_name} "
          "images")
    return 0
  trainer = restored.trainer(cfg, recorded)
  trainer.restore(checkpoint)
  data, info = trainer.data, trainer.data.info
  split_name = verify.check_split(data)
  split = verify.in_memory(data.splits[split_name], split_name)
  class_names = list(info.class_names) or [str(i) for i in range(info.num_classes)]
  calibration = None
  if FLAGS.quantize == "int8":
    calibration = convert.calibration_images(data.splits["train"],
                                             FLAGS.calibration_examples, cfg.seed)
  model, tta = trainer.state.eval_model, cfg.tta
  logging.info("converting %s to %s", shlex.quote(checkpoint), what)
  content = _convert(model, info.image_shape, tta, class_names, calibration)
  candidate = (runtimes.LiteRT if FLAGS.format == "litert" else runtimes.Onnx)(
      content, class_names)
  logging.info("checking the export on the %d %s images", len(split), split_name)
  rows = verify.compare(model, info.image_shape, info.class_names, tta, split,
                        (formats.label(FLAGS.format, FLAGS.quantize), candidate, len(content)))
  drop = verify.accuracy_drop(rows, len(split))
  published, verdict = verify.verdict(drop, FLAGS.max_accuracy_drop)
  report = {
      "model_dir": cfg.model_dir, "checkpoint": checkpoint, "format": FLAGS.format,
      "quantize": FLAGS.quantize, "opset": FLAGS.opset if FLAGS.format == "onnx" else None,
      "tta": list(tta), "output": output, "published": published, "verdict": verdict,
      "split": split_name, "examples": len(split), "accuracy_drop_points": drop,
      "max_accuracy_drop": FLAGS.max_accuracy_drop,
      "calibration_examples": None if calibration is None else len(calibration),
      "rows": [vars(r) for r in rows],
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": f"{platform.machine()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}",
  }
  print(verify.table(rows, len(split), split_name))
  if rows[1].agreement < LOW_AGREEMENT:
    report["warning"] = (f"only {100 * rows[1].agreement:.1f}% of its classes are the "
                         "SavedModel's: its accuracy may match by chance (an undertrained "
                         "run?); compare the two on your own images before serving it")
    logging.warning("%s", report["warning"])
  rejected = output + formats.REJECTED_SUFFIX
  if not published:
    files.write_json(rejected, report)
    kept = " (the file there is an earlier export, kept)" if tf.io.gfile.exists(output) else ""
    print(f"{verdict}: nothing was written to {shlex.quote(output)}{kept}; the report is "
          f"{shlex.quote(rejected)}")
    return EXIT_REJECTED
  try:
    if tf.io.gfile.exists(rejected):  # an earlier attempt's, no longer true of the file
      tf.io.gfile.remove(rejected)
    runtimes.write_class_names(output, class_names)
    files.write_json(output + formats.REPORT_SUFFIX, report)
    files.write_text(output, content)  # last: the file's presence means checked
  except (OSError, tf.errors.OpError) as e:
    reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
    raise UsageError(f"cannot write {flag_arg('output', output)} ({reason}): choose another "
                     "--output") from None
  print(f"{verdict}\nwrote {shlex.quote(output)} ({len(content):,} bytes), its classes "
        f"{shlex.quote(runtimes.classes_file(output))} and report "
        f"{shlex.quote(output + formats.REPORT_SUFFIX)}")
  return 0
