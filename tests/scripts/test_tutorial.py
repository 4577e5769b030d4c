"""scripts/tutorial.py on generated data: one model trained, tabulated, and skipped on a rerun."""

import json
import os
import subprocess
import sys

from paths import ROOT


def _tutorial(tmp_path):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "tutorial.py"), "--models=mlp_1x50",
       "--dataset=synthetic:shape=28x28x1,classes=10,train=640,test=100",
       f"--root={tmp_path / 'runs'}", f"--output={tmp_path / 'tutorial'}", "--",
       "--epochs=2", "--noeval_images"], capture_output=True, text=True, timeout=300)


def test_the_tutorial_table_from_a_real_run_and_a_rerun_that_trains_nothing(tmp_path):
  proc = _tutorial(tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(tmp_path / "tutorial.json") as f:
    report = json.load(f)
  (row,) = report["rows"]
  assert row["config"] == "mlp_1x50" and row["parameters"] == 39_760 and row["epochs"] == 2
  assert 0 < row["validation_accuracy"] <= 1 and 0 < row["test_accuracy"] <= 1
  # Train accuracy comes from trainer.evaluate on the train split; the gap is derived.
  assert abs(row["gap"] - (row["train_accuracy"] - row["validation_accuracy"])) < 1e-12
  assert report["machine"]["cores"] == os.cpu_count()
  table = (tmp_path / "tutorial.md").read_text()
  assert "| 1 | MLP 1x50 | 39,760 | 2 |" in table and table.rstrip().endswith("| 94.70 |")
  again = _tutorial(tmp_path)
  assert again.returncode == 0 and "start  mlp_1x50" not in again.stdout
  assert "start  mlp_1x50" in proc.stdout
  with open(tmp_path / "tutorial.json") as f:
    assert json.load(f)["rows"][0]["test_accuracy"] == row["test_accuracy"]


def test_an_unknown_model_exits_2(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "tutorial.py"),
                         "--models=mlp_9x9", f"--root={tmp_path}"], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2 and "unknown mlp_9x9" in proc.stderr
