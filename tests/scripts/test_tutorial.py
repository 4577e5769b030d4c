"""scripts/tutorial.py on generated data: one model trained, tabulated, and skipped on a rerun."""

import json
import os
import subprocess
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata

from paths import ROOT, load_script
from runs import read_hparams


DATASET = "synthetic:shape=28x28x1,classes=10,train=640,test=100"


def _tutorial(tmp_path):
  # Run from tmp_path, every path relative to it (the trainer runs in another process).
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "tutorial.py"), "--models=mlp_1x50",
       f"--dataset={DATASET}", "--root=runs", "--output=tutorial", "--data_dir=tfds", "--",
       "--epochs=2", "--noeval_images"], cwd=tmp_path, capture_output=True, text=True,
      timeout=300)


def test_the_tutorial_table_from_a_real_run_and_a_rerun_that_trains_nothing(
    tmp_path, monkeypatch, capsys):
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
  root = tmp_path / "runs" / DATASET.replace(":", "_")
  with open(root / "mlp_1x50" / "flags.json") as f:
    assert json.load(f)["data_dir"] == str(tmp_path / "tfds")  # the caller's, not the repo's
  # The runs' experiment, in the dataset's directory: what is trained, not how it runs.
  values, _, _ = read_hparams(root / "mlp_1x50")
  assert values["hidden_units"] == "50" and "model_dir" not in values
  experiment = _experiment(root)
  names = [h.name for h in experiment.hparam_infos]
  assert {"model", "hidden_units", "epochs"} <= set(names) and "data_dir" not in names
  # The rerun in this process: it starts no trainer, so nothing is paid for a process.
  monkeypatch.chdir(tmp_path)
  assert load_script("tutorial").main(
      ["--models=mlp_1x50", f"--dataset={DATASET}", "--root=runs", "--output=tutorial",
       "--data_dir=tfds", "--", "--epochs=2", "--noeval_images"]) == 0
  assert "start  mlp_1x50" not in capsys.readouterr().out
  assert "start  mlp_1x50" in proc.stdout
  with open(tmp_path / "tutorial.json") as f:
    assert json.load(f)["rows"][0]["test_accuracy"] == row["test_accuracy"]


def _experiment(logdir):
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return metadata.parse_experiment_plugin_data(
      acc.PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG])


def test_an_unknown_model_exits_2(tmp_path, capsys):
  assert load_script("tutorial").main(["--models=mlp_9x9", f"--root={tmp_path}"]) == 2
  assert "unknown mlp_9x9" in capsys.readouterr().err


def test_the_train_accuracy_of_another_step_is_evaluated_again(tmp_path, monkeypatch):
  tutorial = load_script("tutorial")
  evaluated = []

  def evaluate(command, **kwargs):  # what trainer.evaluate --split=train writes
    evaluated.append(command)
    (tmp_path / "eval_train.json").write_text(json.dumps({"global_step": 20, "accuracy": 0.9}))
    return subprocess.CompletedProcess(command, 0, "", "")
  monkeypatch.setattr(tutorial.subprocess, "run", evaluate)
  (tmp_path / "eval_train.json").write_text(json.dumps({"global_step": 10, "accuracy": 0.5}))
  assert tutorial.train_accuracy(str(tmp_path), 10) == 0.5 and not evaluated
  # The run was extended to step 20 since: the figure of step 10 is not its.
  assert tutorial.train_accuracy(str(tmp_path), 20) == 0.9 and len(evaluated) == 1
