"""python -m trainer.evaluate as a user runs it: after training, on another split, on a
chosen checkpoint, continuously beside a training run, and with bad input."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import types

import pytest
import tensorflow as tf
from absl import flags

from trainer import evaluate
from trainer.options import command_line
from trainer.process.errors import ConfigError, UsageError
from runs import read_images, read_scalars, run

DATASET = "synthetic:shape=12x12x1,classes=4,train=320,test=70"
ARGS = ["--model=mlp", "--hidden_units=16", f"--dataset={DATASET}", "--batch_size=32",
        "--steps_per_loop=4", "--noeval_images"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("eval") / "model")
  run("trainer.main", *ARGS, "--train_steps=20", "--checkpoint_every=8",
      f"--model_dir={model_dir}")
  return model_dir


def _results(model_dir):
  with open(os.path.join(model_dir, "results.json")) as f:
    return json.load(f)


def test_evaluates_the_latest_checkpoint_like_training_did(trained):
  proc = run("trainer.evaluate", f"--model_dir={trained}")
  results = _results(trained)
  assert f"test accuracy {results['test_accuracy']:.4f} (loss {results['test_loss']:.4f}) " \
         "at step 20" in proc.stdout
  with open(os.path.join(trained, "eval_test.json")) as f:
    figures = json.load(f)
  assert figures["global_step"] == 20 and figures["examples"] == 70
  assert figures["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-6)
  scalars = read_scalars(os.path.join(trained, "eval_test"))
  assert scalars["accuracy"][20] == pytest.approx(results["test_accuracy"], abs=1e-6)
  # Pictures are on by default here, although the training run had them off.
  pictures = read_images(os.path.join(trained, "eval_test"))
  assert set(pictures) >= {"confusion_matrix"} and 20 in pictures["confusion_matrix"]


def test_another_split_and_an_older_checkpoint(trained):
  # A batch larger than the 320 training examples: fine for evaluating (padded), although
  # a training run would refuse it.
  proc = run("trainer.evaluate", f"--model_dir={trained}", "--split=train", "--batch_size=512",
             f"--checkpoint={os.path.join(trained, 'checkpoints', 'ckpt-16')}", "--noeval_images")
  assert "train accuracy" in proc.stdout and "at step 16" in proc.stdout
  with open(os.path.join(trained, "eval_train.json")) as f:
    assert json.load(f)["examples"] == 320


def test_bad_input_is_one_line_and_exit_2(trained):
  proc = run("trainer.evaluate", f"--model_dir={trained}", "--split=validation", check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "Traceback" not in proc.stderr
  assert ("--split=validation: the run's data has no labeled validation split (it has "
          "train, test)") in last


def _main(*args):
  """trainer.evaluate's main on these flags, in this process: its errors are the
  UsageError and ConfigError that the command prints as one line, exit 2 (above)."""
  if "split" not in flags.FLAGS:  # defined once per process
    evaluate.define_flags()
  fv = flags.FLAGS
  fv.unparse_flags()
  fv(["evaluate", *args])
  try:
    evaluate.main(["evaluate"])
  finally:
    fv.unparse_flags()


@pytest.mark.parametrize("args,message", [
    (["--checkpoint=/nonexistent/ckpt-3"], "no checkpoint /nonexistent/ckpt-3"),
    (["--continuous", "--checkpoint=x"], "--continuous evaluates each new checkpoint"),
])
def test_bad_input_is_named(trained, args, message):
  with pytest.raises((ConfigError, UsageError), match=re.escape(message)):
    _main(f"--model_dir={trained}", *args)


def test_not_a_run_directory(tmp_path):
  proc = run("trainer.evaluate", f"--model_dir={tmp_path}", check=False)
  assert proc.returncode == 2
  assert "no flags.json in" in proc.stderr.strip().splitlines()[-1]


def test_a_run_that_recorded_jit_compile_as_a_boolean_evaluates(trained, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(trained, copy)
  recorded = json.loads((copy / "flags.json").read_text())
  recorded["jit_compile"] = False  # as runs before --jit_compile=auto recorded it
  (copy / "flags.json").write_text(json.dumps(recorded))
  proc = run("trainer.evaluate", f"--model_dir={copy}", "--noeval_images")
  assert f"test accuracy {_results(trained)['test_accuracy']:.4f}" in proc.stdout


def test_a_run_without_flags_json_uses_its_results_and_a_corrupt_one_is_refused(trained,
                                                                                 tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(trained, copy)
  os.remove(copy / "flags.json")  # as runs made before flags.json existed
  proc = run("trainer.evaluate", f"--model_dir={copy}", "--noeval_images")
  assert f"test accuracy {_results(trained)['test_accuracy']:.4f}" in proc.stdout
  (copy / "flags.json").write_text("{not json")
  proc = run("trainer.evaluate", f"--model_dir={copy}", check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "flags.json is not valid JSON" in proc.stderr.strip().splitlines()[-1]


def test_continuous_evaluation_waits_for_the_steps_of_an_extended_run(trained, tmp_path,
                                                                      caplog):
  # A rerun extending the run to 40 steps has started (flags.json holds its new length);
  # results.json is still the first start's: that run is not finished at step 20.
  copy = tmp_path / "copy"
  shutil.copytree(trained, copy)
  recorded = json.loads((copy / "flags.json").read_text())
  (copy / "flags.json").write_text(json.dumps({**recorded, "train_steps": 40}))
  proc = run("trainer.evaluate", f"--model_dir={copy}", "--continuous", "--poll_seconds=1",
             "--timeout=2", "--noeval_images")
  assert "at step 20" in proc.stdout and "checkpoints up to step 40" in proc.stderr
  assert "no new checkpoint for 2 s (--timeout): stopping" in proc.stderr
  assert "done" not in proc.stderr
  # Nor is an early stop the results speak of, when the checkpoint at that step says the
  # run goes on (a rerun with more patience resumed it); when it says stopped, it is.
  command_line.define_flags()
  results = json.loads((copy / "results.json").read_text())
  (copy / "results.json").write_text(json.dumps({**results, "stopped_early_at": 20}))
  stopped_early_at = tf.Variable(-1, dtype=tf.int64)
  evaluator = types.SimpleNamespace(  # what _last_step reads of an Evaluator
      cfg=types.SimpleNamespace(model_dir=str(copy)),
      trainer=types.SimpleNamespace(
          data=types.SimpleNamespace(splits={"train": range(320)}),
          state=types.SimpleNamespace(step=20, progress=types.SimpleNamespace(
              stopped_early_at=stopped_early_at))))
  assert evaluate._last_step(evaluator) == (40, None)  # pylint: disable=protected-access
  stopped_early_at.assign(20)
  assert evaluate._last_step(evaluator) == (40, 20)  # pylint: disable=protected-access
  # A damaged results.json: the checkpoint alone tells the early stop, and a watcher that
  # looks again and again is told once, in words for trainer.evaluate.
  (copy / "results.json").write_text("[]")
  with caplog.at_level(logging.WARNING, logger="absl"):
    looks = [evaluate._last_step(evaluator) for _ in range(3)]  # pylint: disable=protected-access
  assert looks == [(40, 20)] * 3
  [warning] = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert warning.endswith("holds no JSON object): the run's end is told from flags.json and "
                          "its checkpoints; python -m trainer.main writes it anew when it "
                          "next runs there"), warning


def test_continuous_evaluation_beside_a_training_run(tmp_path):
  model_dir = str(tmp_path / "model")
  trainer = subprocess.Popen(
      [sys.executable, "-m", "trainer.main", *ARGS, "--train_steps=120", "--checkpoint_every=8",
       "--keep_checkpoints=20", "--steps_per_loop=2", f"--model_dir={model_dir}"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not os.path.exists(os.path.join(model_dir, "flags.json")) and time.time() < deadline:
    time.sleep(0.2)
  evaluator = run("trainer.evaluate", f"--model_dir={model_dir}", "--continuous",
                  "--poll_seconds=1", "--noeval_images")
  trainer.communicate(timeout=300)
  assert trainer.returncode == 0
  steps = [int(line.split(" at step ")[1].split(",")[0])
           for line in evaluator.stdout.splitlines() if " at step " in line]
  assert steps and steps == sorted(set(steps)) and steps[-1] == 120  # ends at the last step
  assert "evaluated the run's last checkpoint (step 120): done" in evaluator.stderr


def test_a_checkpoint_of_another_run_is_refused_and_this_runs_figures_kept(trained, tmp_path):
  other = tmp_path / "other run"
  shutil.copytree(trained, other)
  checkpoint = str(other / "checkpoints" / "ckpt-16")
  figures = _eval_files(trained)
  # Refused before anything is built: named, with the command that evaluates it as its own
  # run's (paths quoted: this one holds a space).
  with pytest.raises(ConfigError, match=re.escape(
      f"'--checkpoint={checkpoint}' is not a checkpoint of --model_dir={trained} ") + ".*" +
                     re.escape(f": evaluate it with its own run's flags: python -m "
                               f"trainer.evaluate '--model_dir={other}' "
                               f"'--checkpoint={checkpoint}'") + "$"):
    _main(f"--model_dir={trained}", f"--checkpoint={checkpoint}")
  assert _eval_files(trained) == figures


def _eval_files(model_dir) -> dict[str, str]:
  """The run's eval_*.json files (an earlier test may have written some) and their text."""
  return {name: open(os.path.join(model_dir, name)).read()
          for name in sorted(os.listdir(model_dir))
          if name.startswith("eval_") and name.endswith(".json")}


def test_a_damaged_checkpoint_is_named_with_where_the_others_are(trained, tmp_path):
  copy = tmp_path / "a copy"
  shutil.copytree(trained, copy)
  checkpoint = copy / "checkpoints" / "ckpt-16"
  for data in (copy / "checkpoints").glob("ckpt-16.data-*"):
    data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  with pytest.raises(ConfigError, match=re.escape(
      f"cannot read checkpoint '{checkpoint}' (IndexError: Read less bytes than requested); "
      f"give another checkpoint (the run's are in '{copy / 'checkpoints'}'), or none for its "
      "latest readable")):
    _main(f"--model_dir={copy}", f"--checkpoint={checkpoint}", "--noeval_images")


def test_evaluate_and_its_dry_run_choose_and_refuse_a_split_alike():
  """One rule (dry_run.evaluated_split) for both: the split training evaluates by default;
  a split the data lacks, or holds unlabeled, named with the labeled ones there are."""
  from trainer.run import dry_run  # pylint: disable=g-import-not-at-top
  split = lambda labeled: types.SimpleNamespace(labeled=labeled)
  held_out = types.SimpleNamespace(splits={"train": split(True), "validation": split(True),
                                           "test": split(True)})
  assert dry_run.evaluated_split(held_out, None) == "validation"
  assert dry_run.evaluated_split(held_out, "train") == "train"
  kaggle = types.SimpleNamespace(splits={"train": split(True), "test": split(False)})
  assert dry_run.evaluated_split(kaggle, "train") == "train"
  with pytest.raises(UsageError, match=re.escape(
      "--split=test: the run's data has no labeled test split (it has train)")):
    dry_run.evaluated_split(kaggle, None)
  unlabeled = types.SimpleNamespace(splits={"test": split(False)})
  with pytest.raises(UsageError, match=re.escape("no labeled test split (it has none)")):
    dry_run.evaluated_split(unlabeled, None)
