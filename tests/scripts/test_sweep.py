"""scripts/sweep.py: grid parsing, and a two-trial sweep end to end, rerun as people do."""

import json
import os
import shutil
import subprocess
import sys
import types

import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata

from paths import ROOT, load_script
from runs import read_hparams
from trainer.options import declared
from trainer.process import files
from trainer.run import child_runs

sweep = load_script("sweep")


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


def test_the_table_shows_figures_to_4_significant_digits():
  table = sweep.table([{"trial": {"learning_rate": "1e-3"}, "validation_accuracy": 0.91234567,
                        "test_accuracy": 0.000252261056, "train_seconds": 3.2,
                        "status": "trained"}])
  assert "| learning_rate=1e-3 | 0.9123 | 0.0002523 | 3 | trained |" in table.splitlines()


def _sweep_args(root, *extra, trainer_flags=()):
  return ["--grid=learning_rate=1e-3,1e-2", f"--root={root}", *extra, "--", "--model=mlp",
          "--hidden_units=8", "--batch_size=32",
          "--dataset=synthetic:shape=8x8x1,classes=3,train=200,test=40",
          "--validation_split=0.2", "--train_steps=10", "--noeval_images", *trainer_flags]


def _sweep(root, *extra, trainer_flags=()):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "sweep.py"),
       *_sweep_args(root, *extra, trainer_flags=trainer_flags)],
      capture_output=True, text=True, timeout=300)


def _sweep_here(capsys, root, *extra, trainer_flags=()):
  """The sweep in this process (its trainers are processes of their own either way)."""
  status = sweep.main(_sweep_args(root, *extra, trainer_flags=trainer_flags))
  out, err = capsys.readouterr()
  return subprocess.CompletedProcess([], status, out, err)


def test_a_sweep_trains_every_trial_writes_one_experiment_resumes_and_refuses_changes(
    tmp_path, capsys):
  proc = _sweep(tmp_path, "--parallel=2")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  trials = sorted(d for d in os.listdir(tmp_path) if d.startswith("learning_rate="))
  assert trials == ["learning_rate=1e-2", "learning_rate=1e-3"]
  with open(tmp_path / "sweep.json") as f:
    outcomes = json.load(f)["trials"]
  assert {o["status"] for o in outcomes} == {"trained"}
  ranked = [line for line in proc.stdout.splitlines() if line.startswith("| learning_rate=")]
  accuracies = [float(line.split("|")[2]) for line in ranked]
  assert len(ranked) == 2 and accuracies == sorted(accuracies, reverse=True)
  # The root's experiment: what is trained a column, the swept flag first (it differs),
  # with its values as domain; how the trials ran (model_dir, data_dir, ...) no column.
  experiment = _experiment(tmp_path)
  infos = {h.name: h for h in experiment.hparam_infos}
  assert [h.name for h in experiment.hparam_infos if h.differs] == ["learning_rate"]
  assert experiment.hparam_infos[0].name == "learning_rate"
  assert not set(declared.HOW_IT_RUNS) & set(infos)
  assert [v.number_value for v in infos["learning_rate"].domain_discrete.values] == [1e-3, 1e-2]
  assert {m.name.tag for m in experiment.metric_infos} >= {"accuracy", "test_accuracy"}
  # Each trial is a run with its own session: its learning rate, its eval metrics, and no
  # group name: TensorBoard names the trial after its run (tests/trainer/test_hparams.py).
  values, metrics, _ = read_hparams(tmp_path / "learning_rate=1e-2")
  assert values["learning_rate"] == pytest.approx(1e-2) and ("eval", "accuracy") in metrics
  assert _session(tmp_path / "learning_rate=1e-2").group_name == ""
  again = _sweep_here(capsys, tmp_path)
  assert again.returncode == 0 and "start  learning_rate" not in again.stdout  # skipped
  assert again.stdout.count("done before") == 2
  # Other flags than a trial ran with, in one trial's directory (the first trial is new):
  # refused before any trial starts, its dry run too, in one line; nothing written.
  shutil.rmtree(tmp_path / "learning_rate=1e-3")
  before = sorted(p.name for p in tmp_path.rglob("*"))
  for dry in (["--dry_run"], []):
    other = _sweep_here(capsys, tmp_path, *dry, trainer_flags=["--seed=1"])
    assert other.returncode == 2 and other.stdout == ""
    assert other.stderr.strip().splitlines() == [
        f"error: trial learning_rate=1e-2: {tmp_path}/learning_rate=1e-2 holds a run of other "
        "flags (--seed=0 -> 1): use a new --root (no trial was started)"]
  assert sorted(p.name for p in tmp_path.rglob("*")) == before


def _hparams_content(logdir):
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return acc.PluginTagToContent("hparams")


def _experiment(logdir):
  return metadata.parse_experiment_plugin_data(_hparams_content(logdir)[metadata.EXPERIMENT_TAG])


def _session(model_dir):
  return metadata.parse_session_start_info_plugin_data(
      _hparams_content(model_dir)[metadata.SESSION_START_INFO_TAG])


@pytest.fixture
def fake_trainer(monkeypatch):
  """sweep's trainer subprocess replaced by one that records a run as the trainer does
  (flags.json, results.json with its flags, the schedule's horizon resolved) through
  tf.io.gfile, so that ram:// works in this process. Returns the args of each start."""
  starts = []

  def run(command, env=None, stdout=None, stderr=None):
    del env, stderr  # the output goes to stdout, as sweep asks
    assert command[command.index("-m") + 1] == "trainer.main"
    args = command[command.index("-m") + 2:]
    flags = sweep.flags_for(args)
    flags["schedule_steps"] = flags["schedule_steps"] or flags["train_steps"]
    files.write_json(os.path.join(flags["model_dir"], "flags.json"), flags)
    files.write_json(os.path.join(flags["model_dir"], "results.json"),
                     {"flags": flags, "validation_accuracy": 0.5, "train_seconds": 1.0})
    stdout.write(b"training\nvalidation accuracy 0.5000\n")
    starts.append(args)
    return types.SimpleNamespace(wait=lambda: 0, pid=0)
  monkeypatch.setattr(child_runs, "subprocess", types.SimpleNamespace(
      Popen=run, STDOUT=subprocess.STDOUT))
  return starts


def test_a_finished_trial_is_reused_only_for_the_flags_it_ran_with(tmp_path, fake_trainer):
  cfg = tmp_path / "base.cfg"
  cfg.write_text("--model=mlp\n--dataset=synthetic\n--learning_rate=0.001\n")
  trial = str(tmp_path / "trial")
  train = lambda *flags: sweep.train(trial, [f"--flagfile={cfg}", *flags], "trial")
  assert train("--train_steps=10")["status"] == "trained"
  # How it runs may change; the flags it trained with may not.
  assert train("--train_steps=10", "--steps_per_loop=5", "--data_dir=x")["status"] == "done before"
  assert len(fake_trainer) == 1
  longer = train("--train_steps=20")  # the trainer extends the run
  assert longer["status"] == "trained" and len(fake_trainer) == 2
  cfg.write_text("--model=mlp\n--dataset=synthetic\n--learning_rate=0.003\n")  # edited
  other = train("--train_steps=20", "--dropout=0.1")
  assert other["status"] == "other flags" and other["returncode"] == 2 and len(fake_trainer) == 2
  assert other["error"] == (
      f"{trial} holds a run of other flags (--dropout=None -> 0.1, --learning_rate=0.001 -> "
      "0.003): use a new --root (nothing was changed in that directory)")
  # Changes the user allows are the trainer's to make (it continues the run with them).
  allowed = train("--train_steps=20", "--dropout=0.1",
                  "--allow_changed_flags=dropout,learning_rate")
  assert allowed["status"] == "trained" and len(fake_trainer) == 3


def test_a_bucket_root_is_written_through_tf_io_gfile(tmp_path, fake_trainer, monkeypatch):
  monkeypatch.chdir(tmp_path)
  root = f"ram://sweep_{tmp_path.name}/root"
  argv = ["--grid=learning_rate=1e-3,1e-2", f"--root={root}", "--", "--model=mlp",
          "--dataset=synthetic:train=512,test=64", "--train_steps=10"]
  assert sweep.main(argv) == 0
  assert os.listdir(tmp_path) == []  # no local ./ram:/ directory
  trial = f"{root}/learning_rate=1e-2"
  with tf.io.gfile.GFile(f"{trial}/train.log") as f:
    assert f.read() == "training\nvalidation accuracy 0.5000\n"  # the trainer's output, copied
  assert {o["status"] for o in files.read_json(f"{root}/sweep.json")["trials"]} == {"trained"}
  assert _experiment(root).hparam_infos[0].name == "learning_rate"
  assert sweep.main(argv) == 0 and len(fake_trainer) == 2  # both done before
  assert {o["status"] for o in files.read_json(f"{root}/sweep.json")["trials"]} == {"done before"}


def test_a_root_tensorflow_cannot_resume_from_is_refused_before_anything_is_made(
    tmp_path, fake_trainer, capsys):
  root = tmp_path / "sweep[1]"
  assert sweep.main(["--grid=learning_rate=1e-3", f"--root={root}", "--", "--model=mlp"]) == 2
  assert "--root=" in capsys.readouterr().err and not root.exists() and not fake_trainer
  # A trial directory of ablation.py or tutorial.py (sweep.train): nothing made either.
  outcome = sweep.train(str(root / "trial"), ["--model=mlp"], "trial")
  assert outcome["returncode"] == 2 and "are special" in outcome["error"]
  assert not root.exists()


def test_every_trials_flags_and_data_are_checked_before_any_trial_starts(
    tmp_path, fake_trainer, monkeypatch, capsys):
  """A flag, a dataset or a grid value a trial would refuse: one line naming the trial,
  exit 2, no trial started and no root made (an MNIST config offline started 4 trials that
  each failed alike)."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/tensorflow_datasets
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  root = tmp_path / "sweep"
  tiny = "--dataset=synthetic:train=256,test=64"

  def refused(*argv):
    assert sweep.main([f"--root={root}", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("(no trial was started)")
    return err[0]

  assert refused("--grid=dropout=0,0.1", "--", "--model=mlp", tiny, "--optimizer=adamm") \
      .startswith("error: trial dropout=0: --optimizer=adamm is unknown")
  offline = refused(f"--flagfile={ROOT}/configs/mlp_5x50.cfg", "--grid=learning_rate=1e-3,3e-3")
  assert "TFDS dataset 'mnist' is not prepared" in offline and "--data_dir" in offline
  # A value only some trials get, refused by what the data holds: named with its trial.
  assert refused("--grid=batch_size=64,512", "--", "--model=mlp", tiny).startswith(
      "error: trial batch_size=512: --batch_size=512 is larger than the 256 training examples")
  # --freeze and --init_from, checked on the trial's model as its dry run checks them.
  assert "--freeze=backbon matches no trainable variable" in refused(
      "--grid=dropout=0,0.1", "--", "--model=mlp", tiny, "--freeze=backbon")
  assert "no such directory, file or checkpoint prefix" in refused(
      "--grid=dropout=0,0.1", "--", "--model=mlp", tiny, f"--init_from={tmp_path}/none")
  assert not fake_trainer and not root.exists()
  # Passed, the dry run lists the trials and says the first one's plan as trainer.main's.
  assert sweep.main([f"--root={root}", "--grid=batch_size=64,128", "--dry_run", "--",
                     "--model=mlp", "--hidden_units=8", tiny]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[1:4] == ["  batch_size=64", "  batch_size=128",
                      "the first, batch_size=64, as trainer.main's dry run says it:"]
  assert out[4].startswith("  model mlp: ") and "parameters" in out[4]
  assert out[5].startswith("  data synthetic:train=256,test=64: train 256, test 64")
  assert out[6].startswith("  train: 4 steps (4 per epoch) of batch 64")
  assert not fake_trainer and not root.exists()
