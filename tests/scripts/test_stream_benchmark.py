"""scripts/stream_benchmark.py at a tiny size: it generates its folder, makes training
stream it, and reports what it measured."""

import json
import os
import subprocess
import sys

from paths import ROOT


def test_a_tiny_stream_benchmark(tmp_path):
  out = tmp_path / "streaming"
  args = [sys.executable, os.path.join(ROOT, "scripts", "stream_benchmark.py"),
          f"--dir={tmp_path / 'images'}", "--train=160", "--test=20", "--size=16",
          "--batch_size=16", "--repeats=1", "--seconds=0.5", "--steps=3",
          "--budget_gb=0.00001", f"--out={out}"]
  proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "generated 160 + 20 images" in proc.stdout
  with open(f"{out}.json") as f:
    summary = json.load(f)
  assert summary["images"] == {"train": 160, "test": 20, "shape": [16, 16, 3]}
  assert summary["decoded_gb"] == 180 * 16 * 16 * 3 / 1e9
  (pipeline,), (training,) = summary["pipeline"], summary["training"]
  assert pipeline["examples_per_sec"] > 0 and training["examples_per_sec"] > 0
  # The kernel's peak RSS of each child: at least TensorFlow's own footprint.
  assert 0.2 < pipeline["peak_rss_gb"] < 20 and 0.2 < training["peak_rss_gb"] < 20
  assert training["scan_seconds"] >= 0
  assert summary["pipeline_vs_training"] == (pipeline["examples_per_sec"]
                                             / training["examples_per_sec"])
  with open(f"{out}.md") as f:
    table = f.read()
  assert "| ResNet training, --pipeline=auto (streams) |" in table
