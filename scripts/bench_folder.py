"""A standard network on an RGB image folder: tapeloop against Keras fit, interleaved.

    python scripts/bench_folder.py [--model=mobilenet_v3_small] [--image_size=64] \
        [--repeats=2] [--seconds=20] [--folder=DIR]

Makes an image folder once (--folder, default /tmp/tapeloop_bench_folder: 5 classes of
400 generated RGB PNGs at --image_size, class-coloured noise), then measures, each job in a
fresh process, alternating the order each repeat: tapeloop training on `folder:DIR` as
trainer.main would (its default pipeline: the images decoded once and held in memory),
and Keras `fit` on the same network (models.create: the same layers, weights and Adam),
given the same images as a float32 array in memory, at steps_per_execution 1 and at
tapeloop's steps per loop (its best counted). Steady examples/s, the first loop or epoch
(tracing) apart. Writes benchmarks/folder.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench_common  # pylint: disable=g-import-not-at-top,wrong-import-position

CLASSES, PER_CLASS = 5, 400


def make_folder(folder: str, size: int) -> None:
  """FOLDER/train/class_K/*.png: generated RGB images (kept: made once per size)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  done = os.path.join(folder, f".made_{size}")
  if os.path.exists(done):
    return
  rng = np.random.default_rng(0)
  for k in range(CLASSES):
    where = os.path.join(folder, "train", f"class_{k}")
    os.makedirs(where, exist_ok=True)
    colour = rng.integers(0, 256, size=3)
    for i in range(PER_CLASS):
      noise = rng.integers(-60, 60, size=(size, size, 3))
      image = np.clip(colour + noise, 0, 255).astype(np.uint8)
      tf.io.write_file(os.path.join(where, f"{i:04d}.png"), tf.io.encode_png(image))
  open(done, "w").close()


def flags(args) -> list[str]:
  # The folder's images all have --image_size: no resizing, hence none of the random-resized
  # crops --image_size turns on; neither trainer augments.
  return [f"--model={args.model}", f"--dataset=folder:{args.folder}",
          f"--batch_size={args.batch_size}",
          # float32 unless --tapeloop_flags say: Keras fit computes in float32.
          f"--steps_per_loop={args.steps_per_loop}", "--mixed_precision=float32",
          *args.tapeloop_flags.split()]


def tapeloop_job(args) -> dict:
  from trainer.inner.trainer import Trainer  # pylint: disable=g-import-not-at-top
  from trainer.options.config import from_args  # pylint: disable=g-import-not-at-top
  from trainer.run import distribute, planning, run_files  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as model_dir:
    cfg = from_args([*flags(args), f"--model_dir={model_dir}"])
    data = run_files.load_data(cfg)
    strategy = distribute.create_strategy(cfg)
    trainer = Trainer(cfg, strategy, data, planning.resolve(cfg, data, strategy))
    iterator = trainer.train_iterator()
    trainer.run_steps(iterator, args.steps_per_loop)  # trace, compile, first loop
    steps, start = 0, time.perf_counter()
    while steps < 2 * args.steps_per_loop or time.perf_counter() - start < args.seconds:
      trainer.run_steps(iterator, args.steps_per_loop)
      steps += args.steps_per_loop
    rate = steps * args.batch_size / (time.perf_counter() - start)
    return {"examples_per_sec": rate, "jit": trainer.jit, "precision": trainer.plan.precision}


def keras_job(args, steps_per_execution: int) -> dict:
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import input_pipeline  # pylint: disable=g-import-not-at-top
  import models  # pylint: disable=g-import-not-at-top
  data = input_pipeline.load(f"folder:{args.folder}")
  train = data.splits["train"]
  x, y = train.images.astype(np.float32) / 255.0, train.labels.astype(np.int32)
  model = models.create(args.model, num_classes=CLASSES, image_shape=x.shape[1:])
  model.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"], steps_per_execution=steps_per_execution)
  times = []

  class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      times.append(time.perf_counter() - self.start)
  n = len(x) - len(x) % (args.batch_size * steps_per_execution)
  epochs = 1
  model.fit(x[:n], y[:n], batch_size=args.batch_size, epochs=1, verbose=0, shuffle=True,
            callbacks=[Timer()])  # tracing
  while sum(times[1:]) < args.seconds or epochs < 3:
    model.fit(x[:n], y[:n], batch_size=args.batch_size, epochs=1, verbose=0, shuffle=True,
              callbacks=[Timer()])
    epochs += 1
  return {"examples_per_sec": n / statistics.median(times[1:])}


def job(args, kind: str) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--job={kind}",
         *(f"--{k}={v}" for k, v in vars(args).items() if k not in ("job", "out", "repeats"))]
  return bench_common.run_job(cmd, f"{kind} job")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="mobilenet_v3_small")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--steps_per_loop", type=int, default=10)
  parser.add_argument("--seconds", type=float, default=20)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--tapeloop_flags", default="",
                      help="more tapeloop flags, e.g. --jit_compile=loop")
  parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(),
                                                       "tapeloop_bench_folder"))
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks"))
  parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.job == "tapeloop":
    bench_common.print_result(tapeloop_job(args))
    return 0
  if args.job:
    bench_common.print_result(keras_job(args, int(args.job.split("_spe")[1])))
    return 0
  make_folder(args.folder, args.image_size)
  kinds = ["tapeloop", "keras_spe1", f"keras_spe{args.steps_per_loop}"]
  raw: dict[str, list[float]] = {k: [] for k in kinds}
  for repeat in range(args.repeats):
    for kind in (kinds if repeat % 2 == 0 else kinds[::-1]):
      rate = job(args, kind)["examples_per_sec"]
      raw[kind].append(rate)
      print(f"repeat {repeat + 1} {kind}: {rate:,.0f} examples/s", flush=True)
  med = {k: statistics.median(v) for k, v in raw.items()}
  best_keras = max(kinds[1:], key=med.get)
  lines = [f"{args.model} on a {args.image_size}x{args.image_size} RGB image folder "
           f"({CLASSES * PER_CLASS} images), batch {args.batch_size}, float32, 2 cores; "
           f"{args.repeats} interleaved repeats, each job a fresh process, {args.seconds:.0f} s "
           "each; median (samples).", "",
           "| trainer | examples/s | vs tapeloop |", "|---|---|---|"]
  for k in kinds:
    name = {"tapeloop": "tapeloop", "keras_spe1": "Keras fit, steps_per_execution=1"}.get(
        k, f"Keras fit, steps_per_execution={args.steps_per_loop}")
    lines.append(f"| {name} | {med[k]:,.0f} ({', '.join(f'{r:,.0f}' for r in raw[k])}) | "
                 f"x{med[k] / med['tapeloop']:.2f} |")
  lines += ["", f"tapeloop / best Keras fit: x{med['tapeloop'] / med[best_keras]:.2f}"]
  bench_common.write(args.out, "folder", {"args": {k: v for k, v in vars(args).items()
                                                     if k not in ("job", "out")},
                                          "examples_per_sec": raw}, "\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
