"""scripts/sweep.py: grid parsing, and a two-trial sweep end to end, rerun as people do."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from paths import ROOT
from runs import read_hparams

_spec = importlib.util.spec_from_file_location("sweep", os.path.join(ROOT, "scripts", "sweep.py"))
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def test_grid_values_split_on_commas_or_semicolons_for_list_flags():
  grid = sweep.parse_grid(["learning_rate=1e-3,3e-3", "hidden_units=50;50,50", "--dropout=0"])
  assert grid == {"learning_rate": ["1e-3", "3e-3"], "hidden_units": ["50", "50,50"],
                  "dropout": ["0"]}
  trials = sweep.trials(grid)
  assert len(trials) == 4
  assert sweep.trial_name(trials[1]) == "learning_rate=1e-3,hidden_units=50_50,dropout=0"


@pytest.mark.parametrize("spec,message", [
    ("lerning_rate=1", "--lerning_rate is not a tapeloop flag"),
    ("learning_rate", "expected NAME=V1,V2"),
    ("batch_size=32,big", "'big' is not a valid --batch_size"),
    ("model_dir=a,b", "cannot be swept"),
])
def test_bad_grids_are_refused(spec, message):
  with pytest.raises(sweep.SweepError, match=message):
    sweep.parse_grid([spec])


def _sweep(root, *extra):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "sweep.py"), "--grid=learning_rate=1e-3,1e-2",
       f"--root={root}", *extra, "--", "--model=mlp", "--hidden_units=8", "--batch_size=32",
       "--dataset=synthetic:shape=8x8x1,classes=3,train=200,test=40", "--validation_split=0.2",
       "--train_steps=10", "--noeval_images"], capture_output=True, text=True, timeout=300)


def test_a_sweep_trains_every_trial_writes_one_experiment_and_resumes(tmp_path):
  proc = _sweep(tmp_path, "--parallel=2")
  assert proc.returncode == 0, proc.stderr[-2000:]
  trials = sorted(d for d in os.listdir(tmp_path) if d.startswith("learning_rate="))
  assert trials == ["learning_rate=1e-2", "learning_rate=1e-3"]
  with open(tmp_path / "sweep.json") as f:
    outcomes = json.load(f)["trials"]
  assert {o["status"] for o in outcomes} == {"trained"}
  ranked = [line for line in proc.stdout.splitlines() if line.startswith("| learning_rate=")]
  accuracies = [float(line.split("|")[2]) for line in ranked]
  assert len(ranked) == 2 and accuracies == sorted(accuracies, reverse=True)
  # The root's experiment: every flag a column, the swept one with its values as domain.
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.plugins.hparams import metadata
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  experiment = metadata.parse_experiment_plugin_data(
      acc.PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG])
  infos = {h.name: h for h in experiment.hparam_infos}
  assert [v.number_value for v in infos["learning_rate"].domain_discrete.values] == [1e-3, 1e-2]
  assert {m.name.tag for m in experiment.metric_infos} >= {"accuracy", "test_accuracy"}
  # Each trial is a run with its own session: its learning rate, its eval metrics.
  values, metrics, _ = read_hparams(tmp_path / "learning_rate=1e-2")
  assert values["learning_rate"] == pytest.approx(1e-2) and ("eval", "accuracy") in metrics
  again = _sweep(tmp_path)
  assert again.returncode == 0 and "start  learning_rate" not in again.stdout  # skipped
  assert again.stdout.count("done before") == 2


def test_a_trial_with_a_bad_flag_ends_the_sweep_with_its_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "sweep.py"), "--grid=dropout=0.1",
       f"--root={tmp_path}", "--", "--model=mlp", "--dataset=synthetic", "--optimizer=adamm"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --optimizer=adamm is unknown")
