"""Bounded memory: training from a folder of images larger (decoded) than the process uses.

    python scripts/stream_benchmark.py                 # 250k train + 2k test 64x64x3 PNGs
    python scripts/stream_benchmark.py --train=3000    # a quick look

Generates the folder once (--dir, default data/stream_benchmark), then, interleaved
(--repeats): the streaming input pipeline alone (read, decode, batch: what feeds the
devices) and ResNet training with `--pipeline=auto --memory_budget_gb=1` (which must
choose to stream). Each job runs in a fresh process; its peak RSS comes from the kernel
(wait4). Writes benchmarks/streaming.json and benchmarks/streaming.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
CLASSES = 10
BUDGET_GB = 1.0
# float32: the streaming figures on record were measured in it.
RESNET = ["--model=resnet", "--steps_per_loop=10", "--eval_images=false",
          "--mixed_precision=float32"]


def generate(root: str, n_train: int, n_test: int, size: int) -> None:
  """root/{train,test}/<class>/<i>.png: a smooth per-class pattern plus noise (compresses
  like photos do, learnable). Skipped when a previous run completed it."""
  done = os.path.join(root, ".complete")
  if os.path.exists(done) and open(done).read() == f"{n_train},{n_test},{size}":
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  start = time.time()
  rng = np.random.default_rng(0)
  templates = tf.image.resize(rng.integers(0, 200, (CLASSES, 8, 8, 3)).astype(np.float32),
                              (size, size)).numpy()
  for split, n in (("train", n_train), ("test", n_test)):
    for c in range(CLASSES):
      os.makedirs(os.path.join(root, split, f"class_{c}"), exist_ok=True)

    def write(i):
      label = i % CLASSES
      noise = tf.random.stateless_uniform((size, size, 3), tf.stack([i, 7]), 0, 56)
      image = tf.cast(tf.gather(templates, label) + noise, tf.uint8)
      path = tf.strings.format(os.path.join(root, split, "class_{}", "{}.png"), (label, i))
      tf.io.write_file(path, tf.io.encode_png(image))
      return i
    ds = tf.data.Dataset.range(n).map(write, num_parallel_calls=tf.data.AUTOTUNE)
    for _ in ds.batch(4096):
      pass
  with open(done, "w") as f:
    f.write(f"{n_train},{n_test},{size}")
  print(f"generated {n_train} + {n_test} images in {time.time() - start:.0f} s", flush=True)


def pipeline_job(root: str, seconds: float, budget_gb: float, size: int,
                 batch_size: int) -> None:
  """Child process: the train stream alone, as trainer.main builds it; prints a JSON line."""
  sys.path.insert(0, ROOT)
  from trainer.process import tf_env  # pylint: disable=g-import-not-at-top
  tf_env.apply()
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline.stream import train_stream  # pylint: disable=g-import-not-at-top
  data = input_pipeline.load(f"folder:{root}", image_size=(size, size), pipeline="auto",
                             memory_budget_gb=budget_gb)
  assert data.pipeline == "stream", data.reason
  it = iter(train_stream(data.splits["train"], global_batch_size=batch_size, seed=0))
  for _ in range(20):  # warm up: the first batches wait for the first decodes
    next(it)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    count += len(next(it)[1])
  print(json.dumps({"examples_per_sec": count / (time.perf_counter() - start)}), flush=True)


def run_child(args: list[str]) -> tuple[str, float]:
  """Runs a child process; (its output, its peak RSS in GB from the kernel)."""
  with tempfile.TemporaryFile("w+") as out:
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    text = out.read()
  if proc.returncode != 0:
    raise SystemExit(f"{' '.join(args[:4])} ... failed:\n{text[-3000:]}")
  return text, usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux


def measure_pipeline(args) -> dict:
  text, rss = run_child([sys.executable, os.path.abspath(__file__), f"--dir={args.dir}",
                         f"--budget_gb={args.budget_gb}", f"--size={args.size}",
                         f"--batch_size={args.batch_size}", f"--_pipeline_job={args.seconds}"])
  result = json.loads(text.strip().splitlines()[-1])
  return {"examples_per_sec": result["examples_per_sec"], "peak_rss_gb": rss}


def measure_training(args, model_dir: str) -> dict:
  text, rss = run_child([sys.executable, "-m", "trainer.main", *RESNET,
                         f"--dataset=folder:{args.dir}", f"--image_size={args.size}",
                         f"--batch_size={args.batch_size}", "--pipeline=auto",
                         f"--memory_budget_gb={args.budget_gb}", f"--train_steps={args.steps}",
                         f"--model_dir={model_dir}"])
  if "input pipeline: stream," not in text:
    raise SystemExit("training did not choose to stream:\n" + text[-2000:])
  with open(os.path.join(model_dir, "results.json")) as f:
    results = json.load(f)
  scan = re.search(r"checked (\d+) images under .* in ([\d.]+) s", text)
  return {"examples_per_sec": results["examples_per_sec"], "peak_rss_gb": rss,
          "scan_seconds": float(scan.group(2)), "test_accuracy": results["test_accuracy"]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", default=os.path.join(ROOT, "data", "stream_benchmark"))
  parser.add_argument("--train", type=int, default=250_000)
  parser.add_argument("--test", type=int, default=2_000)
  parser.add_argument("--size", type=int, default=SIZE, help="images are SIZExSIZEx3")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=2, help="0: only generate the folder")
  parser.add_argument("--seconds", type=float, default=30.0, help="pipeline job duration")
  parser.add_argument("--steps", type=int, default=40, help="training steps per job")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "streaming"))
  parser.add_argument("--budget_gb", type=float, default=BUDGET_GB,
                      help="--memory_budget_gb: below the decoded size, so auto streams")
  parser.add_argument("--_pipeline_job", type=float, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._pipeline_job is not None:  # pylint: disable=protected-access
    pipeline_job(args.dir, args._pipeline_job, args.budget_gb, args.size,  # pylint: disable=protected-access
                 args.batch_size)
    return
  sys.path.insert(0, ROOT)
  from trainer.process import tf_env  # pylint: disable=g-import-not-at-top
  tf_env.apply()  # TensorFlow's start-up chatter filtered, as in tapeloop's programs
  generate(args.dir, args.train, args.test, args.size)
  if not args.repeats:
    return
  decoded_gb = (args.train + args.test) * args.size * args.size * 3 / 1e9
  pipeline, training = [], []
  with tempfile.TemporaryDirectory() as scratch:
    for r in range(args.repeats):  # interleaved: the VM's speed drifts
      pipeline.append(measure_pipeline(args))
      training.append(measure_training(args, os.path.join(scratch, str(r))))
      print(f"round {r + 1}: pipeline {pipeline[-1]}, training {training[-1]}", flush=True)
  median = lambda rows, key: statistics.median(row[key] for row in rows)
  summary = {
      "date": datetime.date.today().isoformat(),
      "images": {"train": args.train, "test": args.test, "shape": [args.size, args.size, 3]},
      "batch_size": args.batch_size,
      "decoded_gb": decoded_gb, "memory_budget_gb": args.budget_gb,
      "pipeline": pipeline, "training": training,
      "pipeline_examples_per_sec": median(pipeline, "examples_per_sec"),
      "training_examples_per_sec": median(training, "examples_per_sec"),
      "peak_rss_gb": max(row["peak_rss_gb"] for row in pipeline + training),
  }
  summary["pipeline_vs_training"] = (summary["pipeline_examples_per_sec"]
                                     / summary["training_examples_per_sec"])
  summary["targets"] = {"peak_rss_below_decoded": summary["peak_rss_gb"] < decoded_gb,
                        "pipeline_at_least_3x_training": summary["pipeline_vs_training"] >= 3}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out + ".json", "w") as f:
    json.dump(summary, f, indent=1)
  rows = [("input pipeline alone (read, decode, batch)", pipeline),
          ("ResNet training, --pipeline=auto (streams)", training)]
  lines = [f"Streaming benchmark ({summary['date']}): {args.train} + {args.test} PNGs of "
           f"{args.size}x{args.size}x3, {decoded_gb:.2f} GB decoded, memory budget {args.budget_gb} GB; "
           f"medians of {args.repeats} interleaved rounds.", "",
           "| job | examples/s | peak RSS (GB) |", "|---|---:|---:|"]
  for name, jobs in rows:
    lines.append(f"| {name} | {median(jobs, 'examples_per_sec'):,.0f} | "
                 f"{max(j['peak_rss_gb'] for j in jobs):.2f} |")
  lines += ["", f"Pipeline / training: {summary['pipeline_vs_training']:.1f}x (target 3x). "
            f"Peak RSS {summary['peak_rss_gb']:.2f} GB vs {decoded_gb:.2f} GB decoded. "
            f"Folder check at start: {median(training, 'scan_seconds'):.0f} s."]
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
