"""LiteRT and ONNX exports of three Fashion-MNIST models, each checked against its run.

    python scripts/bench_export.py [--runs=runs/bench-export] [--models=cnn,resnet,airbench] \
        [--data_dir=DIR] [--skip_training] [--quick]    # make bench-export

Trains the quickstart CNN (configs/quickstart.cfg as it is), the ResNet
(configs/fashion_resnet.cfg for 3 epochs instead of 12) and airbench (configs/fashion_best.cfg
for 5 epochs instead of 20), each an ordinary run `python -m trainer.main` in RUNS/MODEL
(skipped when that run is finished, resumed when not; --skip_training: exports the runs as
they are). Then exports each as LiteRT float32, float16, dynamic and int8 and as ONNX, each
`python -m trainer.export` as a user types it (each its own process, one after the other),
which checks the file in its runtime beside the run's SavedModel on the test split. A
rejected export (exit 3) or one not offered for the model (exit 2) is a row of the table
too, and the next one runs. Writes benchmarks/export.{json,md} (or --out): every report,
the commands, date and machine. --quick: the same steps on a small synthetic dataset for
one epoch, into runs/bench-export-quick, its tables there too: the CNN alone in about a
minute (all three with --models=cnn,resnet,airbench: about three).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench_common  # pylint: disable=g-import-not-at-top,wrong-import-position

# name -> (what the table calls it, its recipe, the flags that shorten it for this benchmark)
MODELS = {
    "cnn": ("the quickstart CNN", "configs/quickstart.cfg", []),
    # 12 epochs take about 20 minutes on 2 cores; 3 epochs (the one-cycle schedule over
    # them, one eval at the end) about 5.
    "resnet": ("the ResNet", "configs/fashion_resnet.cfg", ["--epochs=3"]),
    # 20 epochs take about 12 minutes; the recipe's header reports 5-epoch runs.
    "airbench": ("airbench", "configs/fashion_best.cfg", ["--epochs=5"]),
}
# (format, quantize) of each export, in the table's order.
EXPORTS = [("litert", "none"), ("litert", "float16"), ("litert", "dynamic"),
           ("litert", "int8"), ("onnx", "none")]
SUFFIX = {"litert": ".tflite", "onnx": ".onnx"}
# Beside an export FILE, what trainer.export writes (trainer/deploy/formats.py).
REPORT, REJECTED, CLASSES = ".report.json", ".rejected.json", ".classes.txt"
EXIT_REJECTED = 3
# --quick: every step on a small generated dataset, one epoch of a smaller batch.
QUICK = ["--dataset=synthetic:shape=28x28x1,classes=10,train=512,test=200", "--epochs=1",
         "--batch_size=64", "--warmup_steps=0"]


def shown(path: str) -> str:
  """A path as the commands in the tables give it: relative to the checkout (where `make`
  runs them) when inside it."""
  rel = os.path.relpath(path, ROOT)
  return path if rel.startswith("..") else rel


def command_line(module: str, args: list[str]) -> str:
  return " ".join(shlex.quote(a) for a in ["python", "-m", module, *args])


def train_args(name: str, args) -> list[str]:
  """The flags of a model's run as a user gives them from the checkout, but --model_dir."""
  _, recipe, shorten = MODELS[name]
  return [f"--flagfile={recipe}", *(QUICK if args.quick else shorten),
          *([f"--data_dir={shown(args.data_dir)}"] if args.data_dir else [])]


def train(name: str, model_dir: str, command: str, args) -> dict:
  """The model's run in model_dir: trained (or resumed) unless finished; its results."""
  # Here, not at the top: sweep loads TensorFlow, which --skip_training never needs.
  import sweep  # pylint: disable=g-import-not-at-top
  print(f"training {name}: {command} (its log: "
        f"{shlex.quote(shown(os.path.join(model_dir, 'train.log')))})", flush=True)
  result = sweep.train(model_dir, train_args(name, args), name)
  if result.get("returncode"):
    raise SystemExit(result["returncode"])
  return result


def finished(model_dir: str) -> dict | None:
  try:
    with open(os.path.join(model_dir, "results.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def export_name(fmt: str, quantize: str) -> str:
  """trainer.export's default file for the run's final checkpoint."""
  return f"model{'' if quantize == 'none' else '_' + quantize}{SUFFIX[fmt]}"


def export(model_dir: str, fmt: str, quantize: str) -> dict:
  """One `python -m trainer.export` in its own process: its report (published or rejected),
  or its exit status and last line. Its whole output goes to FILE.log beside the file."""
  flags = [f"--model_dir={shown(model_dir)}", f"--format={fmt}",
           *([] if quantize == "none" else [f"--quantize={quantize}"])]
  output = os.path.join(model_dir, "exports", export_name(fmt, quantize))
  os.makedirs(os.path.dirname(output), exist_ok=True)
  # An earlier export's files would stand for this one when it fails.
  for path in (output, output + REPORT, output + REJECTED, output + CLASSES):
    if os.path.exists(path):
      os.remove(path)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  command = [sys.executable, "-P", "-m", "trainer.export", *flags]
  start = time.perf_counter()
  proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
  seconds = time.perf_counter() - start
  with open(output + ".log", "w") as f:
    f.write(proc.stdout + proc.stderr)
  entry = {"format": fmt, "quantize": quantize, "command": command_line("trainer.export", flags),
           "exit": proc.returncode, "seconds": seconds, "log": shown(output + ".log")}
  report = output + (REPORT if proc.returncode == 0 else REJECTED)
  if proc.returncode in (0, EXIT_REJECTED) and os.path.exists(report):
    with open(report) as f:
      entry["report"] = json.load(f)
  else:
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()] or ["(no output)"]
    entry["error"] = lines[-1].removeprefix("error: ")
    entry["traceback"] = "Traceback (most recent call last):" in proc.stderr
  return entry


def label(fmt: str, quantize: str) -> str:
  return f"{'LiteRT' if fmt == 'litert' else 'ONNX'} {'float32' if quantize == 'none' else quantize}"


def size(n: int) -> str:
  return f"{n / 1e3:,.1f} KB" if n < 1e6 else f"{n / 1e6:,.2f} MB"


def said(entry: dict) -> str:
  """One export's outcome in a console line."""
  if "report" not in entry:
    kind = "traceback" if entry["traceback"] else "error"
    return f"exit {entry['exit']} ({kind}): {entry['error']}"
  saved, row = entry["report"]["rows"]
  return (f"{'published' if entry['report']['published'] else 'NOT published'}: accuracy "
          f"{100 * row['accuracy']:.2f}% (SavedModel {100 * saved['accuracy']:.2f}%), agreement "
          f"{100 * row['agreement']:.2f}%, max |dp| {row['max_probability_difference']:.2g}, "
          f"{size(row['size_bytes'])}, {row['latency_ms']:.2f} ms")


def machine(result: dict) -> str:
  cpu = bench_common.cpu_name()
  reports = [e["report"] for m in result["models"].values() for e in m["exports"]
             if "report" in e]
  tf_part = reports[0]["machine"].split(", ")[-1] if reports else ""
  return ", ".join(p for p in (cpu, f"{os.cpu_count()} cores", f"Python {platform.python_version()}",
                               tf_part) if p)


def points(report: dict) -> str:
  """The export's accuracy change from the SavedModel's, in points: +0.10, -1.20, 0.00."""
  change = round(-report["accuracy_drop_points"], 2) + 0.0  # + 0.0: no -0.00
  return f"{change:+.2f}" if change else "0.00"


def saved_latency(reports: list[dict]) -> float:
  """The SavedModel's latency: the median of its measurement beside each export."""
  return statistics.median(r["rows"][0]["latency_ms"] for r in reports)


def model_table(model: dict) -> list[str]:
  """The SavedModel's row (its latency: the median of each export's measurement of it,
  their range in brackets) and each export's."""
  reports = [e["report"] for e in model["exports"] if "report" in e]
  lines = ["| model | test accuracy | agreement | max \\|Δp\\| | size | latency (ms) | published |",
           "|---|---:|---:|---:|---:|---:|---|"]
  if reports:
    saved = reports[0]["rows"][0]
    times = [r["rows"][0]["latency_ms"] for r in reports]
    spread = f" ({min(times):.2f}-{max(times):.2f})" if len(times) > 1 else ""
    lines.append(f"| SavedModel | {100 * saved['accuracy']:.2f}% | | | {size(saved['size_bytes'])} | "
                 f"{saved_latency(reports):.2f}{spread} | (the reference) |")
  for e in model["exports"]:
    name = label(e["format"], e["quantize"])
    if "report" not in e:
      why = e["error"].replace("|", "\\|")
      kind = "failed with a traceback" if e["traceback"] else f"exit {e['exit']}"
      lines.append(f"| {name} | | | | | | no: {kind}: {why} |")
      continue
    row, change = e["report"]["rows"][1], points(e["report"])
    lines.append(f"| {name} | {100 * row['accuracy']:.2f}% ({change}) | "
                 f"{100 * row['agreement']:.2f}% | {row['max_probability_difference']:.2g} | "
                 f"{size(row['size_bytes'])} | {row['latency_ms']:.2f} | "
                 f"{'yes' if e['report']['published'] else '**no**'} |")
  return lines


def findings(result: dict) -> list[str]:
  """What the figures show, computed from them (so that a rerun's text stays true)."""
  out = []
  for name, model in result["models"].items():
    rows = {(e["format"], e["quantize"]): e for e in model["exports"]}
    parts = []
    ok = {k: e["report"] for k, e in rows.items() if "report" in e}
    if not ok:
      out.append(f"- {MODELS[name][0]}: no export ran to its check.")
      continue
    saved = next(iter(ok.values()))["rows"][0]
    exact = [label(*k) for k, r in ok.items() if r["rows"][1]["agreement"] == 1.0]
    if exact:
      worst = max(ok[k]["rows"][1]["max_probability_difference"] for k in ok
                  if label(*k) in exact)
      parts.append(f"{' and '.join(exact)} gave the SavedModel's class on every test image "
                   f"(probabilities within {worst:.1g})")
    other = [(label(*k), r) for k, r in ok.items() if r["rows"][1]["agreement"] < 1.0]
    for what, r in other:
      row = r["rows"][1]
      changed = round((1 - row["agreement"]) * r["examples"])
      parts.append(f"{what} changed the class of {changed} of {r['examples']:,} images "
                   f"(accuracy {points(r)} points, "
                   f"{'published' if r['published'] else 'not published'})")
    smallest = min(ok, key=lambda k: ok[k]["rows"][1]["size_bytes"])
    parts.append(f"the smallest file, {label(*smallest)}, is "
                 f"{ok[smallest]['rows'][1]['size_bytes'] / saved['size_bytes']:.0%} of the "
                 f"SavedModel's size")
    fastest = min(ok, key=lambda k: ok[k]["rows"][1]["latency_ms"])
    slowest = max(ok, key=lambda k: ok[k]["rows"][1]["latency_ms"])
    parts.append(f"one image took {ok[fastest]['rows'][1]['latency_ms']:.2f} ms "
                 f"({label(*fastest)}) to {ok[slowest]['rows'][1]['latency_ms']:.2f} ms "
                 f"({label(*slowest)}) against the SavedModel's "
                 f"{saved_latency(list(ok.values())):.2f} ms")
    failed = [f"{label(*k)} (exit {e['exit']})" for k, e in rows.items() if "report" not in e]
    if failed:
      parts.append(f"not exported: {', '.join(failed)}")
    out.append(f"- {MODELS[name][0]}: " + "; ".join(parts) + ".")
  return out


def markdown(result: dict) -> str:
  lines = ["# LiteRT and ONNX exports, each checked against its run", "",
           f"Measured {result['date']} on {result['machine']} (a VM whose speed drifts: "
           "compare the latencies within one export, measured side by side), by `make bench-export` "
           "(scripts/bench_export.py). Every export is checked by `trainer.export` itself: "
           "the file run by its runtime (LiteRT's interpreter, onnxruntime) beside the run's "
           "SavedModel of the same weights, on the run's test split. Test accuracy: the "
           "export's (in brackets, points from the SavedModel's); agreement: the share of "
           "test images whose class is the SavedModel's; max |Δp|: the largest difference of "
           "a class probability from the SavedModel's over all of them; size: the file (the "
           "SavedModel: its directory); latency: the median of 200 predictions of one image "
           "on the CPU (the SavedModel's: the median of its five measurements, one beside "
           "each export, their range in brackets). Published: within trainer.export's "
           "--max_accuracy_drop (1 point)."
           + (" **--quick: a small synthetic dataset, not Fashion-MNIST.**"
              if result["quick"] else ""), ""]
  for name, model in result["models"].items():
    t = model["train"]
    acc = f"{100 * t['test_accuracy']:.2f}%" if t.get("test_accuracy") is not None else "?"
    secs = f", {t['train_seconds']:.0f} s of training" if t.get("train_seconds") else ""
    if t.get("precision") not in (None, "float32"):
      # trainer.export computes in float32 whatever the run's policy.
      secs += (f"; trained and evaluated in {t['precision']}, the SavedModel below computes "
               "in float32")
    checked = [e["report"] for e in model["exports"] if "report" in e]
    images = f" Checked on {checked[0]['examples']:,} test images." if checked else ""
    if checked and checked[0]["tta"]:
      images += (f" The SavedModel and every file average the run's test-time views "
                 f"(--tta={','.join(checked[0]['tta'])}): one image is several predictions.")
    title = MODELS[name][0]
    lines += [f"## {title[0].upper()}{title[1:]} ({name})", "",
              f"Trained by `{model['command']}` (test accuracy {acc}{secs}).{images}", "",
              *model_table(model), ""]
  lines += ["## What the figures show", "", *findings(result), "",
            "## Commands", "",
            "From the checkout; each export's report is FILE.report.json beside its file "
            "(FILE.rejected.json when it is not published), its console output FILE.log.", "",
            "```"]
  for model in result["models"].values():
    lines.append(model["command"])
    lines += [e["command"] for e in model["exports"]]
  lines += ["```", ""]
  return "\n".join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default=None, help="where the runs are kept, one directory "
                      "per model (default runs/bench-export; --quick: runs/bench-export-quick)")
  parser.add_argument("--models", default=None, help=f"which of {','.join(MODELS)} "
                      "(default all; --quick: cnn)")
  parser.add_argument("--data_dir", default=None, help="where Fashion-MNIST is prepared "
                      "(default: the trainer's, ~/tensorflow_datasets)")
  parser.add_argument("--skip_training", action="store_true", help="export the runs in "
                      "--runs as they are (each must be finished), training none")
  parser.add_argument("--quick", action="store_true", help="a small synthetic dataset, one "
                      "epoch: the whole script in about a minute, to check it")
  parser.add_argument("--out", default=None, help="where export.{json,md} go (default "
                      "benchmarks/; --quick: the --runs directory)")
  args = parser.parse_args()
  args.models = args.models or ("cnn" if args.quick else ",".join(MODELS))
  names = [n for n in args.models.split(",") if n]
  unknown = [n for n in names if n not in MODELS]
  if unknown or not names:
    parser.error(f"--models={args.models}: choose from {','.join(MODELS)}")
  runs = os.path.abspath(args.runs or os.path.join(
      ROOT, "runs", "bench-export-quick" if args.quick else "bench-export"))
  out = os.path.abspath(args.out or (runs if args.quick else os.path.join(ROOT, "benchmarks")))
  if args.data_dir:
    args.data_dir = os.path.abspath(args.data_dir)
  # Every command runs, and is shown, from the checkout: its configs/ are relative to it.
  os.chdir(ROOT)
  if args.skip_training:
    missing = [n for n in names if finished(os.path.join(runs, n)) is None]
    if missing:
      parser.error(f"--skip_training: no finished run in "
                   f"{shlex.quote(shown(os.path.join(runs, missing[0])))} (its results.json): "
                   "run without --skip_training to train it")
  os.makedirs(out, exist_ok=True)

  result = {"date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
            "quick": args.quick, "runs": shown(runs), "models": {}}
  for name in names:
    model_dir = os.path.join(runs, name)
    command = command_line("trainer.main", [*train_args(name, args),
                                            f"--model_dir={shown(model_dir)}"])
    results = (finished(model_dir) if args.skip_training
               else train(name, model_dir, command, args))
    model = result["models"][name] = {
        "command": command, "model_dir": shown(model_dir),
        "train": {k: results.get(k) for k in ("test_accuracy", "train_seconds", "wall_seconds",
                                              "global_step", "parameters", "precision")},
        "exports": []}
    for fmt, quantize in EXPORTS:
      entry = export(model_dir, fmt, quantize)
      model["exports"].append(entry)
      print(f"{name} {label(fmt, quantize)} ({entry['seconds']:.0f} s): {said(entry)}", flush=True)
  result["machine"] = machine(result)
  bench_common.write(out, "export", result, markdown(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
