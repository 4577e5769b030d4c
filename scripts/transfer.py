"""What starting from an earlier run is worth: a transfer table on Fashion-MNIST.

    python scripts/transfer.py --root=runs/transfer [--data_dir=DIR] [--seeds=0,1] \
        [--per_class=10,50,500] [--model=cnn]

Pretrains on classes 0-4 (all their training images), then trains on classes 5-9 with N
labelled images per class (a seeded subset, --examples_per_class) four ways: from scratch,
fine-tuned (--init_from the pretrained run, all layers), a frozen backbone (a linear probe
on the pretrained features, --freeze=backbone) and frozen then unfrozen (the head alone for
the first half, then everything, the backbone at a tenth of the rate). Each run is an
ordinary run in ROOT (resumable; finished runs are skipped) and is scored on the test
images of classes 5-9 (5,000). Every run of a column takes the same number of steps.
Writes benchmarks/transfer.{json,md} (or --out); nothing when a run fails.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench_common  # pylint: disable=g-import-not-at-top,wrong-import-position
import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

PRETRAIN_CLASSES, TARGET_CLASSES = "0,1,2,3,4", "5,6,7,8,9"
ROWS = {  # row -> flags beyond the target data's (PRE: the pretrained run's model_dir)
    "from scratch": [],
    "fine-tuned (all layers)": ["--init_from={pre}"],
    "frozen backbone (linear probe)": ["--init_from={pre}", "--freeze=backbone"],
    "frozen, then unfrozen at half": ["--init_from={pre}", "--freeze=backbone",
                                      "--unfreeze_at_epoch={half}",
                                      "--backbone_learning_rate_multiplier=0.1"],
}


def schedule(per_class: int, steps: int) -> tuple[int, int]:
  """(batch size, epochs) of a run on 5 x per_class images taking about `steps` steps."""
  examples = 5 * per_class
  batch = min(128, examples)
  return batch, max(2, math.ceil(steps / (examples // batch)))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", required=True, help="where the runs are kept")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--model", default="cnn")
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--per_class", default="10,50,500")
  parser.add_argument("--pretrain_epochs", type=int, default=5)
  parser.add_argument("--steps", type=int, default=300, help="steps of each target run")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks"))
  args = parser.parse_args()
  data = [f"--model={args.model}", "--dataset=fashion_mnist",
          *([f"--data_dir={args.data_dir}"] if args.data_dir else [])]
  pre = os.path.abspath(os.path.join(args.root, "pretrain"))
  pretrained = sweep.train(pre, [*data, f"--classes={PRETRAIN_CLASSES}",
                                 f"--epochs={args.pretrain_epochs}"], "pretrain on 0-4")
  if pretrained.get("returncode"):
    return 1
  seeds = [int(s) for s in args.seeds.split(",")]
  sizes = [int(n) for n in args.per_class.split(",")]
  cells: dict[str, dict[str, list[float]]] = {}
  for n in sizes:
    batch, epochs = schedule(n, args.steps)
    steps = epochs * (5 * n // batch)
    for seed in seeds:
      for row, extra in ROWS.items():
        name = f"{n}_per_class/seed{seed}/{row.split(' (')[0].replace(' ', '_').replace(',', '')}"
        flags = [*data, f"--classes={TARGET_CLASSES}", f"--examples_per_class={n}",
                 f"--seed={seed}", f"--batch_size={batch}", f"--epochs={epochs}",
                 # One eval and one checkpoint, at the end: the runs are scored on test,
                 # not selected on it, and an epoch of a few steps need not be saved.
                 f"--eval_every={steps}", f"--checkpoint_every={steps}",
                 "--eval_images=false",
                 *(f.format(pre=pre, half=epochs // 2) for f in extra)]
        result = sweep.train(os.path.join(args.root, name), flags, name)
        if result.get("returncode"):
          return 1
        cells.setdefault(row, {}).setdefault(str(n), []).append(result["test_accuracy"])
  lines = [f"Test accuracy on Fashion-MNIST classes 5-9 (5,000 images), {args.model} pretrained "
           f"on classes 0-4 ({pretrained['test_accuracy']:.2%} on their test images); mean of "
           f"seeds {args.seeds} (each seed in brackets). About {args.steps} steps per run.", "",
           "| start | " + " | ".join(f"{n} per class" for n in sizes) + " |",
           "|---|" + "---|" * len(sizes)]
  for row in ROWS:
    lines.append(f"| {row} | " + " | ".join(
        f"{statistics.mean(cells[row][str(n)]):.2%} ("
        + ", ".join(f"{a:.2%}" for a in cells[row][str(n)]) + ")" for n in sizes) + " |")
  bench_common.write(args.out, "transfer", {"model": args.model, "seeds": seeds,
                                            "pretrain_test_accuracy":
                                                pretrained["test_accuracy"],
                                            "test_accuracy": cells}, "\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
