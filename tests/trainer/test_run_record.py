"""A rerun into an existing model_dir: what may change, what is refused, and how the
learning-rate schedule continues when a run is extended."""

import json
import logging
import shutil

import numpy as np
import pytest

from trainer.inner.trainer import Trainer
from trainer.options import config
from trainer.process.errors import ConfigError
from trainer.run import run_files, run_record, train
from datafiles import tree_digest, write_mnist_dir
from flag_helpers import parse
from runs import read_scalars

RUN = ["--model=mlp", "--hidden_units=16", "--dataset=synthetic:shape=8x8x1,classes=3,"
       "train=256,test=64", "--batch_size=32", "--steps_per_loop=4", "--eval_images=false"]


def _json(path):
  with open(path) as f:
    return json.load(f)


def test_changing_what_is_trained_is_refused_naming_each_flag_and_leaves_the_run(tmp_path):
  # In process: the command line's one line and exit 2 for this refusal are
  # test_cli_errors.py's (test_an_existing_model_dir_is_left_as_it_was).
  model_dir = tmp_path / "my run"  # printed quoted: a path with a space pastes as one
  train.train_and_evaluate(parse(*RUN, "--epochs=1", f"--model_dir={model_dir}"))
  before = tree_digest(model_dir)
  with pytest.raises(ConfigError) as refused:
    train.train_and_evaluate(parse(*RUN, "--epochs=1", "--optimizer=sgd", "--learning_rate=0.1",
                                   f"--model_dir={model_dir}"))
  assert str(refused.value) == (
      f"'--model_dir={model_dir}' holds a run started with other flags: --learning_rate=0.001 "
      "-> 0.1, --optimizer=adam -> sgd; these change what is trained: use a new --model_dir, "
      "or continue this run with --allow_changed_flags=learning_rate,optimizer")
  assert tree_digest(model_dir) == before


def test_a_shorter_run_than_trained_is_refused_and_an_equal_one_only_evaluates(tmp_path):
  tmp_path = tmp_path / "a run"
  model_dir = f"--model_dir={tmp_path}"
  train.train_and_evaluate(parse(*RUN, "--epochs=2", model_dir))
  before = tree_digest(tmp_path)
  with pytest.raises(ConfigError) as refused:
    train.train_and_evaluate(parse(*RUN, "--epochs=1", model_dir))
  assert str(refused.value) == (
      f"'{model_dir}' is already trained to step 16; --epochs=1 ends at step 8: use a new "
      f"--model_dir for a shorter run, or evaluate this one with python -m trainer.evaluate "
      f"'{model_dir}'")
  assert tree_digest(tmp_path) == before
  again = train.train_and_evaluate(parse(*RUN, "--epochs=2", model_dir))
  assert again["global_step"] == 16 and "flag_changes" not in again


def test_how_it_runs_may_change_and_allowed_changes_are_recorded(tmp_path):
  model_dir = f"--model_dir={tmp_path}"
  train.train_and_evaluate(parse(*RUN, "--train_steps=8", model_dir))
  # Cadence, loop length and devices change how it runs, not what it trains.
  second = train.train_and_evaluate(parse(*RUN, "--train_steps=8", "--steps_per_loop=2",
                                          "--eval_every=2", "--strategy=mirrored",
                                          "--devices=/cpu:0,/cpu:1", model_dir))
  assert second["global_step"] == 8 and "flag_changes" not in second
  third = train.train_and_evaluate(parse(*RUN, "--train_steps=12", "--optimizer=sgd",
                                         "--allow_changed_flags=optimizer", model_dir))
  assert third["global_step"] == 12 and third["flags"]["optimizer"] == "sgd"
  # What the rerun's check said before any work is in model_dir's log, as on the console.
  assert "--optimizer changed from adam to sgd" in (tmp_path / "tapeloop.log").read_text()
  [change] = third["flag_changes"]
  assert change["step"] == 8 and change["total_steps"] == 12
  assert change["changed"] == {"optimizer": {"old": "adam", "new": "sgd"},
                               "train_steps": {"old": 8, "new": 12}}
  assert _json(tmp_path / "flag_changes.json")["changes"] == [change]
  recorded = _json(tmp_path / "flags.json")
  assert recorded["optimizer"] == "sgd" and recorded["train_steps"] == 12
  # The accepted change is now the run's: the next rerun needs no permission for it.
  fourth = train.train_and_evaluate(parse(*RUN, "--train_steps=12", "--optimizer=sgd",
                                          model_dir))
  assert fourth["global_step"] == 12


def test_extending_a_run_keeps_the_schedule_horizon(tmp_path, caplog):
  schedule = ["--lr_schedule=cosine", "--learning_rate=0.1", "--final_learning_rate=0.01",
              "--steps_per_loop=1"]
  extended = tmp_path / "extended"
  train.train_and_evaluate(parse(*RUN, *schedule, "--train_steps=16",
                                 f"--model_dir={extended}"))
  assert _json(extended / "flags.json")["schedule_steps"] == 16
  with caplog.at_level(logging.WARNING, logger="absl"):
    train.train_and_evaluate(parse(*RUN, *schedule, "--train_steps=24",
                                   f"--model_dir={extended}"))
  # Said, not silent: a cosine run extended past its horizon trains at its floor, the rate
  # the schedule itself ends at (once stated as 0 whatever --final_learning_rate said).
  assert any("steps 17 to 24 are past the cosine schedule's end (step 16): they train "
             "at its final rate, 0.01; to decay" in r.getMessage() for r in caplog.records)
  rates = read_scalars(extended / "train")["learning_rate"]
  # Up to step 16 the first start's cosine; past its horizon the rate stays at its end
  # instead of jumping back up to a cosine over 24 steps.
  assert rates[8] == pytest.approx(0.055, abs=1e-6)
  assert all(rates[s] == pytest.approx(0.01, abs=1e-7) for s in range(16, 25))
  assert np.all(np.diff([rates[s] for s in sorted(rates)]) <= 1e-7)  # never rises


def test_a_rerun_compares_meanings_not_spellings(tmp_path):
  model_dir = f"--model_dir={tmp_path}"
  data = "--dataset=synthetic:shape=8x8x1,classes=3,train=64,test=16"
  train.train_and_evaluate(parse(*RUN, data, "--augment=crop,flip", "--image_size=8",
                                 "--hidden_units=16", "--train_steps=2", model_dir))
  # The same run, spelled otherwise: extended, not refused as changed.
  again = train.train_and_evaluate(parse(*RUN, data, "--augment=flip,crop=4",
                                         "--image_size=8x8", "--hidden_units=016",
                                         "--train_steps=4", model_dir))
  assert again["global_step"] == 4
  assert [c["changed"] for c in again["flag_changes"]] == [
      {"train_steps": {"old": 2, "new": 4}}]
  with pytest.raises(ConfigError, match=r"--augment=crop,flip -> flip,crop=2"):
    train.train_and_evaluate(parse(*RUN, data, "--augment=flip,crop=2", "--image_size=8",
                                   "--train_steps=4", model_dir))


def test_local_data_paths_are_recorded_absolute(tmp_path, monkeypatch):
  write_mnist_dir(tmp_path / "digits", n_train=32, n_test=8, shape=(8, 8))
  monkeypatch.chdir(tmp_path)
  args = ["--model=mlp", "--hidden_units=4", "--dataset=idx:digits", "--batch_size=8",
          "--noeval_images", "--model_dir=run"]
  train.train_and_evaluate(parse(*args, "--train_steps=2"))
  recorded = _json(tmp_path / "run" / "flags.json")
  assert recorded["dataset"] == f"idx:{tmp_path / 'digits'}"
  # The same relative spelling from the same directory is the same run: extended.
  assert train.train_and_evaluate(parse(*args, "--train_steps=4"))["global_step"] == 4
  # From another directory (trainer.evaluate, predict) the record still finds the files.
  monkeypatch.chdir(tmp_path / "run")
  data = run_files.load_data(config.from_values(recorded))
  assert data.info.split_sizes["train"] == 32


class _Killed(Exception):
  """Stands for kill -9: the process ends between two inner loops."""


def test_an_extension_past_a_decayed_schedule_is_refused_and_a_warm_restart_trains(
    tmp_path, monkeypatch):
  run_args = [*RUN, "--lr_schedule=cosine", "--learning_rate=0.01", "--checkpoint_every=4"]
  base = tmp_path / "base"
  first = train.train_and_evaluate(parse(*run_args, "--train_steps=16", f"--model_dir={base}"))
  before = tree_digest(base)
  # Cosine to 0 at step 16: steps 17 to 24 would change nothing; refused before any work.
  with pytest.raises(ConfigError, match=r"its cosine schedule ends at step 16, at rate 0; "
                     r"steps 17 to 24 would train at it and optimize nothing: restart the "
                     r"schedule over the added steps with --restart_learning_rate=0.01"):
    train.train_and_evaluate(parse(*run_args, "--train_steps=24", f"--model_dir={base}"))
  assert tree_digest(base) == before
  with pytest.raises(ConfigError, match="restarts the schedule of a run being extended"):
    train.train_and_evaluate(parse(*run_args, "--restart_learning_rate=0.005",
                                   f"--model_dir={tmp_path / 'new'}"))
  killed = tmp_path / "killed"
  shutil.copytree(base, killed)
  restart = [*run_args, "--train_steps=24", "--restart_learning_rate=0.005"]
  straight = train.train_and_evaluate(parse(*restart, f"--model_dir={base}"))
  assert straight["weights_digest"] != first["weights_digest"]  # trained, at a rate above 0
  assert straight["learning_rate_restarts"] == [{"step": 16, "end": 24, "learning_rate": 0.005}]
  [change] = _json(base / "flag_changes.json")["changes"]
  assert [change["restart"]] == straight["learning_rate_restarts"]
  assert change["changed"]["restart_learning_rate"] == {"old": None, "new": 0.005}
  rates = read_scalars(base / "train")["learning_rate"]
  # The first schedule's cosine to 0 at step 16, then a cosine from 0.005 over the 8
  # added steps (steps 17 to 24): half of it at step 20, 0 again at 24.
  assert rates[8] == pytest.approx(0.005, abs=1e-7) and rates[12] < rates[8]
  assert rates[16] == pytest.approx(0.0, abs=1e-7)
  assert rates[20] == pytest.approx(0.0025, abs=1e-7)
  assert rates[24] == pytest.approx(0.0, abs=1e-7)
  # Killed mid-extension (after the checkpoint of step 20), then extended further: the
  # refusal names a second restart, and following it keeps the first one's steps 21 to
  # 24 at its rates (not at the rate 0 it replaced), to the weights of the run that was
  # not killed, bit for bit.
  real = Trainer.run_steps

  def run_steps(self, iterator, steps):
    if self.state.step == 20:
      raise _Killed()
    return real(self, iterator, steps)
  monkeypatch.setattr(Trainer, "run_steps", run_steps)
  with pytest.raises(_Killed):
    train.train_and_evaluate(parse(*restart, f"--model_dir={killed}"))
  monkeypatch.setattr(Trainer, "run_steps", real)
  with pytest.raises(ConfigError, match=r"its warm restart ends at step 24, at rate 0; steps "
                     r"25 to 32 .* --restart_learning_rate=0.005"):
    train.train_and_evaluate(parse(*run_args, "--train_steps=32", f"--model_dir={killed}"))
  again = [*run_args, "--train_steps=32", "--restart_learning_rate=0.005"]
  resumed = train.train_and_evaluate(parse(*again, f"--model_dir={killed}"))
  longer = train.train_and_evaluate(parse(*again, f"--model_dir={base}"))
  assert resumed["weights_digest"] == longer["weights_digest"]
  assert resumed["learning_rate_restarts"] == longer["learning_rate_restarts"] == [
      {"step": 16, "end": 24, "learning_rate": 0.005},
      {"step": 24, "end": 32, "learning_rate": 0.005}]
  rates, killed_rates = (read_scalars(d / "train")["learning_rate"] for d in (base, killed))
  assert rates[28] == pytest.approx(0.0025, abs=1e-7) and rates[32] == pytest.approx(0.0)
  # The resumed run's first loop is one step: step 21, 5/8 through the first restart.
  assert killed_rates[21] == pytest.approx(0.0025 * (1 + np.cos(5 / 8 * np.pi)), abs=1e-7)
  assert all(killed_rates[s] == pytest.approx(rates[s], abs=1e-9) for s in (20, 28, 32))


def test_a_rerun_naming_only_the_model_dir_resumes_or_extends_that_run(tmp_path):
  model_dir = f"--model_dir={tmp_path}"
  train.train_and_evaluate(parse(*RUN, "--train_steps=8", "--optimizer=sgd",
                                 "--learning_rate=0.05", "--augment=flip", model_dir))
  # trainer.main's path: absl parses the command line, config.from_flags builds the Config
  # with the run's record (run_files.read_record).
  # Only the directory (and how it runs): the run's recorded flags, not the defaults.
  again = config.from_args([model_dir, "--jit_compile=off", "--eval_every=4"],
                           run_files.read_record)
  assert (again.model, again.optimizer, again.learning_rate, again.train_steps) == (
      "mlp", "sgd", 0.05, 8)
  assert train.train_and_evaluate(again)["global_step"] == 8  # done: evaluated only
  extended = train.train_and_evaluate(config.from_args([model_dir, "--epochs=2",
                                                        "--jit_compile=off"],
                                                       run_files.read_record))
  assert extended["global_step"] == 16 and extended["flags"]["augment"] == "flip"
  assert extended["flag_changes"][0]["changed"] == {"epochs": {"old": None, "new": 2},
                                                    "train_steps": {"old": 8, "new": None}}
  # A flag of what it trains given too: the rerun is compared with the record, as always.
  with pytest.raises(ConfigError, match="holds a run started with other flags"):
    train.train_and_evaluate(config.from_args([model_dir, "--epochs=2", "--seed=1"],
                                              run_files.read_record))
  # ... unless --allow_changed_flags names it: a change to that run, which still takes its
  # record (the longer horizon an extension's refusal suggests, --schedule_steps).
  horizon = config.from_args([model_dir, "--train_steps=32", "--schedule_steps=32",
                              "--allow_changed_flags=schedule_steps"], run_files.read_record)
  assert (horizon.optimizer, horizon.learning_rate, horizon.schedule_steps) == ("sgd", 0.05, 32)
  changes = run_record.check(horizon, run_files.read_record(str(tmp_path)))
  assert changes == {"schedule_steps": (8, 32), "epochs": (2, None), "train_steps": (None, 32)}
