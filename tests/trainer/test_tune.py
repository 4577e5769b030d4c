"""trainer.tune: Optuna trials as ordinary runs, pruned from the eval action, one study
shared by several tuner processes (a real PostgreSQL server), a killed tuner's trial
resumed from its checkpoint, and bad input in one line."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import backend_context

import postgres
from flag_helpers import parse
from paths import ROOT
from runs import read_experiment, read_scalars
from trainer import cli, tune
from trainer.run import child_runs, train
from trainer.tuning import tune_results
from trainer.tuning.search import parse_search
from trainer.tuning.study import KILL_RETRIES, Settings, Tuner
from trainer.tuning.trial import ConfigError, actions, database_url, environment

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

# A tiny MLP on generated data: 48 steps, an eval (a report to the trial) every 6.
TRIAL = ["--model=mlp", "--dataset=synthetic:shape=8x8x1,classes=4,train=512,test=64",
         "--validation_split=0.25", "--batch_size=32", "--epochs=4", "--eval_every=6",
         "--steps_per_loop=6", "--eval_images=false", "--deterministic",
         "--jit_compile=off"]


def _tuner(root, *args, storage=None, trial=TRIAL):
  """python -m trainer.tune as a user starts it."""
  return subprocess.Popen(
      [sys.executable, "-m", "trainer.tune", f"--root={root}", *args,
       *([f"--storage={storage}"] if storage else []), "--", *trial],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def _tune(argv):
  """python -m trainer.tune ARGV in this process: its flags, then its main with cli.run_app's
  exit statuses; returns the status."""
  try:
    return cli.call(tune.main, tune.parse_flags(["trainer.tune", *argv]))
  except SystemExit as e:
    return e.code


def _study(root, storage=None):
  return optuna.load_study(study_name=str(root),
                           storage=database_url(
                               storage or f"sqlite:///{root}/study.db"))


def _running(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def _starts(model_dir):
  """How often the trial's trainer started from step 0, and the steps it resumed from."""
  with open(os.path.join(model_dir, "train.log")) as f:
    log = f.read()
  return (len(re.findall(r"training mlp on \S+ from step 0 ", log)),
          [int(s) for s in re.findall(r"resumed from .*ckpt-(\d+)'?$", log, re.M)])


def _trial_run(cfg):
  """A run as trainer.main starts it for a tuner: the trial of TAPELOOP_TRIAL reports to it."""
  return train.train_and_evaluate(cfg, extra_actions=actions(cfg))


def test_an_eval_below_the_median_prunes_the_trial_at_that_boundary(tmp_path, monkeypatch):
  """The trainer's side: its evals reach the trial; the pruner's verdict stops training at
  the eval's step with a checkpoint, and results.json and TensorBoard say so. The last
  step's eval is reported, never pruned: that trial is complete."""
  storage = f"sqlite:///{tmp_path}/study.db"
  study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
  for _ in range(2):  # two finished trials that were perfect at every eval
    study.add_trial(optuna.create_trial(
        value=1.0, params={}, distributions={},
        intermediate_values={step: 1.0 for step in range(6, 49, 6)}))
  trial = study.ask()
  monkeypatch.setenv(*environment(
      storage=storage, study="s", trial_id=trial._trial_id, number=trial.number,
      objective="accuracy", pruner="median", startup_trials=2).popitem())
  model_dir = tmp_path / "trial"
  results = _trial_run(parse(*TRIAL, "--checkpoint_every=100", f"--model_dir={model_dir}"))
  assert results["pruned_at_step"] == 6 and results["global_step"] == 6
  assert "stopped_early_at" not in results  # a pruned trial did not stop early
  assert os.path.exists(model_dir / "checkpoints" / "ckpt-6.index")
  assert study.trials[-1].intermediate_values == {6: pytest.approx(
      results["validation_accuracy"])}
  assert read_scalars(model_dir / "eval")["pruned_at_step"] == {6: 6.0}

  last = study.ask()  # one eval only, at the last step, as bad as the first
  monkeypatch.setenv(*environment(
      storage=storage, study="s", trial_id=last._trial_id, number=last.number,
      objective="accuracy", pruner="median", startup_trials=2).popitem())
  results = _trial_run(parse(*TRIAL, "--epochs=1", "--eval_every=100",
                             f"--model_dir={tmp_path / 'last'}"))
  assert results["global_step"] == 12 and "pruned_at_step" not in results
  assert list(study.trials[-1].intermediate_values) == [12]


def test_a_trial_without_a_validation_split_is_refused(tmp_path, monkeypatch):
  monkeypatch.setenv(*environment(
      storage="sqlite://", study="s", trial_id=1, number=0, objective="accuracy",
      pruner="none", startup_trials=0).popitem())
  args = [a for a in TRIAL if not a.startswith("--validation_split")]
  with pytest.raises(ConfigError, match="--validation_split=0.1"):
    _trial_run(parse(*args, f"--model_dir={tmp_path}/m"))
  assert not os.path.exists(tmp_path / "m")


@pytest.mark.parametrize("args,message", [
    (["--search=nosuch=uniform:0:1"], "--search=nosuch=uniform:0:1: --nosuch is not a "
     "tapeloop flag"),
    (["--search=learning_rate=loguniform:1e-3"], "expected NAME=DIST:ARGS"),
    (["--search=learning_rate=normal:0:1"], "expected NAME=DIST:ARGS"),
    (["--search=learning_rate=loguniform:0:1"], "LOW < HIGH and LOW > 0"),
    (["--search=epochs=uniform:1:3"], "--epochs takes int:/logint:/choice: values"),
    (["--search=dropout=uniform:0:1.5"], "--search=dropout=uniform:0:1.5: with "
     "--dropout=1.5: --dropout=1.5 must be in [0, 1)"),
    (["--search=learning_rate=uniform:0.1:0.2", "--sampler=grid"],
     "--sampler=grid takes choice: or int: values"),
    (["--search=dropout=uniform:0:0.5", "--storage=postgresql://me:secret@127.0.0.1:9/db"],
     "'--storage=postgresql://me:***@127.0.0.1:9/db': cannot open it:"),
    (["--search=dropout=uniform:0:0.5", "--dry_run",
      "--storage=postgresql://me:secret@127.0.0.1:9/db"],
     "'--storage=postgresql://me:***@127.0.0.1:9/db': cannot open it:"),
    (["--search=dropout=uniform:0:0.5", "--root=ram://tune"],
     "--root=ram://tune is not a local directory: give --storage=URL"),
    (["--search=dropout=uniform:0:0.5", "--sampler=cmaes"],
     "flag --sampler=cmaes: value should be one of <tpe|random|grid>"),
    (["--search=dropout=uniform:0:0.5", "--epochs=3"], "unrecognized arguments: --epochs=3: "
     "trial flags go after --, e.g. python -m trainer.tune --root=... --search=... -- "
     "--epochs=3"),
    (["--search=dropout=uniform:0:0.5", "--trails=3"],
     "unrecognized arguments: --trails=3: did you mean --trials?"),
    # Non-finite bounds and values (1e400 reads as inf).
    (["--search=learning_rate=uniform:0.001:inf"], "LOW and HIGH must be finite numbers"),
    (["--search=learning_rate=loguniform:1e-4:1e400"], "LOW and HIGH must be finite numbers"),
    (["--search=l2=uniform:-1e308:1e308"], "and HIGH - LOW too"),
    (["--search=learning_rate=choice:0.01|nan"], "with --learning_rate=nan: "
     "--learning_rate=nan must be a finite number"),
    # What a trial refuses, on any value it may draw: its own rules and its plan on its data.
    (["--search=dropout=uniform:0:0.5", "--", "--validation_split=0"],
     "a tuning trial needs a held-out validation split"),
    (["--search=validation_split=choice:0.25|0"], "--search=validation_split=choice:0.25|0: "
     "with --validation_split=0: a tuning trial needs a held-out validation split"),
    (["--search=strategy=choice:auto|multi_worker"], "with --strategy=multi_worker: "
     "--strategy=multi_worker: a tuning trial is one process on one machine"),
    # Its model built (a shape check), and its strategy's replicas.
    (["--search=widths=choice:16|16,32,64", "--", "--model=airbench"],
     "with --widths=16,32,64: 8x8 images are too small for airbench's 3 conv groups"),
    (["--search=batch_size=choice:32|33", "--", "--strategy=mirrored", "--cpu_devices=2"],
     "with --batch_size=33: --batch_size=33 is not divisible by the 2 replicas"),
    # Its --freeze pattern and --init_from source, checked on its model as its dry run does.
    (["--search=dropout=uniform:0:0.5", "--", "--freeze=backbon"],
     "--freeze=backbon matches no trainable variable"),
    (["--search=dropout=uniform:0:0.5", "--", "--init_from=no/such/run"],
     "no/such/run: no such directory, file or checkpoint prefix"),
    (["--search=batch_size=choice:32|64", "--search=accumulation_steps=choice:1|8"],
     "a trial with --batch_size=64 --accumulation_steps=8: --batch_size=64 x "
     "--accumulation_steps=8 is more than the 384 training examples"),
])
def test_bad_input_is_one_line_and_exit_2_with_nothing_made(tmp_path, capsys, args,
                                                            message):
  """Also every check a trial makes, on every value the search may draw, before trial 0."""
  root = tmp_path / "tune"
  split = args.index("--") if "--" in args else len(args)
  args, after = args[:split], args[split + 1:]  # after --: more trial flags
  argv = [*args, *([] if any(a.startswith("--root") for a in args) else [f"--root={root}"]),
          "--", *TRIAL, *after]
  assert _tune(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert "secret" not in err[0]
  assert not os.path.exists(root)


def test_a_bad_choice_is_answered_before_tensorflow_loads(tmp_path):
  """--sampler, --pruner and --objective are checked by the TensorFlow-free parser: here a
  TensorFlow that cannot load is never reached."""
  (tmp_path / "tensorflow").mkdir()
  (tmp_path / "tensorflow" / "__init__.py").write_text("raise ImportError('loaded')\n")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}
  for flag in ("--sampler=tp", "--pruner=medain", "--objective=acc"):
    proc = subprocess.run([sys.executable, "-m", "trainer.tune", "--root=x", flag],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "value should be one of" in proc.stderr, proc.stderr


def test_bad_trial_flags_end_the_program_in_one_line_without_a_traceback(tmp_path):
  """python -m trainer.tune itself, under absl's app: the trials' flags checked in absl's
  FLAGS leave them parsed, which absl's app reads as the program exits with status 2."""
  proc = subprocess.run(
      [sys.executable, "-m", "trainer.tune", f"--root={tmp_path}/tune",
       "--search=dropout=uniform:0:0.5", "--", *TRIAL, "--freeze=backbon"],
      capture_output=True, text=True, cwd=ROOT, timeout=120)
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1, proc.stderr
  assert "--freeze=backbon matches no trainable variable" in err[0]
  assert not os.path.exists(tmp_path / "tune")


def test_a_root_holding_another_studys_trials_is_refused(tmp_path, capsys):
  """By the dry run too, which writes nothing."""
  root = tmp_path / "tune"
  root.mkdir()
  (root / "tune.json").write_text(json.dumps({"study": "other", "storage": "sqlite://x"}))
  for dry in (["--dry_run"], []):
    assert _tune([f"--root={root}", "--search=dropout=uniform:0:0.5", *dry, "--",
                      *TRIAL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --root={root} holds the trials of study 'other' in sqlite://x: "
                   "use a new --root for this one"]
    assert sorted(os.listdir(root)) == ["study.db", "tune.json"][bool(dry):]


def test_a_damaged_tune_json_is_refused_not_overwritten(tmp_path, capsys):
  """It is the root's guard against another study's trials: rewriting it would drop it."""
  root = tmp_path / "tu ne"
  root.mkdir()
  (root / "tune.json").write_text('{"study": "oth')
  assert _tune([f"--root={root}", "--search=dropout=uniform:0:0.5", "--dry_run", "--",
                    *TRIAL]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: '{root}/tune.json' is unreadable ("), err
  assert err[0].endswith(f"it records which study the trials in '{root}' belong to; restore "
                         "it, remove it if they are this study's, or use a new --root")
  assert (root / "tune.json").read_text() == '{"study": "oth'


def test_a_dry_run_checks_what_the_run_checks_before_its_first_trial(tmp_path, capsys,
                                                                     monkeypatch):
  """Optuna (the tune extra) imported, the study read: a new one, or the same one going
  on; nothing written. Without Optuna, one line saying how to install it."""
  root = tmp_path / "sp ace"
  argv = [f"--root={root}", "--search=dropout=uniform:0:0.5", "--dry_run", "--", *TRIAL]
  assert _tune(argv) == 0
  out = capsys.readouterr().out
  assert "dry run: nothing was written" in out and not os.path.exists(root)
  assert f"in a new study {shlex.quote(str(root))} in " in out
  # A trial's plan, as trainer.main's dry run says it (the searched flag at its first value).
  plan = out.splitlines()[1:]
  assert plan[0] == "a trial at --dropout=0.0, as trainer.main's dry run says it:"
  assert plan[1].startswith("  model mlp: ") and "parameters" in plan[1]
  assert plan[3].startswith("  train: 48 steps (12 per epoch) of batch 32")
  assert plan[4].startswith("  eval on validation every 6 steps")
  root.mkdir()
  Tuner(_settings(root, base=TRIAL)).study.add_trial(optuna.create_trial(
      state=optuna.trial.TrialState.FAIL, user_attrs={"error": "exit 1: boom"}))
  before = sorted((p.name, p.stat().st_mtime_ns) for p in root.iterdir())
  assert _tune([*argv[:1], "--search=learning_rate=loguniform:1e-4:1e-2",
                    *argv[2:]]) == 0
  assert f"in the study {shlex.quote(str(root))} in " in capsys.readouterr().out
  assert sorted((p.name, p.stat().st_mtime_ns) for p in root.iterdir()) == before
  monkeypatch.setitem(sys.modules, "optuna", None)  # the tune extra not installed
  assert _tune(argv) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      "error: trainer.tune needs Optuna, the tune extra: pip install -e '.[tune]' (make "
      "test installs it)"]


def test_a_rerun_of_a_study_with_other_trial_flags_is_refused(tmp_path, capsys):
  """What is trained may not change under a study (how it runs, e.g. --data_dir, may)."""
  root = tmp_path / "tune"
  study = optuna.create_study(study_name=str(root), storage=f"sqlite:///{tmp_path}/s.db")
  study.set_user_attr("definition", {
      "flags": child_runs.flags_for([*TRIAL, "--model_dir=/x"]),
      "search": ["dropout=uniform:0:0.5"], "objective": "accuracy"})
  argv = [f"--root={root}", f"--storage=sqlite:///{tmp_path}/s.db",
          "--search=dropout=uniform:0:0.5"]
  for dry in (["--dry_run"], []):  # the dry run refuses it as the run does
    assert _tune([*argv, *dry, "--", *TRIAL, "--epochs=5", "--data_dir=/elsewhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: study '{root}' in sqlite:///{tmp_path}/s.db was started with "
                   "other flags (--epochs=4 -> 5): use a new --root (nothing was changed)"]
    assert not os.path.exists(root)


def _checkpoint_steps(model_dir):
  directory = os.path.join(model_dir, "checkpoints")
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return [int(m.group(1)) for m in map(re.compile(r"ckpt-(\d+)\.index").fullmatch, names)
          if m]


def _kill_trainers(monkeypatch, which=lambda args: True, times=None, when=None):
  """kill -9 of the trainers the tuner starts that `which(args)` picks (the out-of-memory
  killer's way), at most `times` of them; the tuner lives. when(model_dir, n): for the
  n-th kill (from 1), a test polled until it holds, or None: at once, as it starts."""
  run_trainer, killed = child_runs.run_trainer, []

  def kill_when(pid, ready):
    while _running(pid) and not ready():
      time.sleep(0.01)
    if _running(pid):
      os.kill(pid, signal.SIGKILL)

  def run(model_dir, args, env=None, started=None):
    def start(pid):
      started(pid)
      if which(args) and (times is None or len(killed) < times):
        killed.append(pid)
        ready = when(model_dir, len(killed)) if when else None
        if ready is None:
          os.kill(pid, signal.SIGKILL)
        else:
          threading.Thread(target=kill_when, args=(pid, ready), daemon=True).start()
    return run_trainer(model_dir, args, env, start)
  monkeypatch.setattr(child_runs, "run_trainer", run)
  return killed


def test_a_killed_trainers_trial_is_retried_twice_in_its_dir_then_fails_naming_the_kill(
    tmp_path, capsys, monkeypatch):
  """The tuner alive, its trainer killed: the trial is retried in its own model_dir from
  its checkpoint, study.KILL_RETRIES times, then fails naming the kill, not the trainer's
  last line. Killed after its first checkpoint, then after a later one (the retry's,
  which resumed from it), then at once. Printed paths are quoted (the root has a space)."""
  root = tmp_path / "sp ace"
  run_trainer = child_runs.run_trainer
  saved = []

  def when(model_dir, n):
    if n == 1:
      return lambda: saved.extend(_checkpoint_steps(model_dir)) or saved
    return (lambda: max(_checkpoint_steps(model_dir)) > max(saved)) if n == 2 else None
  killed = _kill_trainers(monkeypatch, when=when)
  long = ["--dataset=synthetic:shape=8x8x1,classes=4,train=20000,test=64",
          "--eval_every=1000", "--steps_per_loop=20", "--checkpoint_every=20"]
  assert _tune([f"--root={root}", "--search=dropout=choice:0.1", "--trials=1", "--",
                    *TRIAL, *long]) == 1
  out, err = capsys.readouterr()
  assert len(killed) == 3 and KILL_RETRIES == 2
  for retry, label in ((1, "trial 0"), (2, "trial 1 (resumes trial-0000)")):
    assert (f"{label}: its trainer was killed by SIGKILL (kill -9, or the out-of-memory "
            f"killer); retried from its checkpoint (retry {retry} of 2)") in out
    assert f"start  trial {retry} (resumes trial-0000): --dropout=0.1" in out
  error = ("exit -9: its trainer was killed by SIGKILL (kill -9, or the out-of-memory "
           "killer), 3 times")
  log = shlex.quote(str(root / "trial-0000" / "train.log"))
  assert f"failed trial 2 (resumes trial-0000): {error} (its log: {log})" in out
  assert [t.state.name for t in _study(root).trials] == ["FAIL"] * 3
  assert _study(root).trials[-1].user_attrs["error"] == error
  assert [d for d in os.listdir(root) if d.startswith("trial-")] == ["trial-0000"]
  assert f"| 1 | trial-0000 | - | 0.1 | - | - | failed ({error}) |" in out
  starts, resumed = _starts(root / "trial-0000")
  assert starts == 1 and resumed == [max(saved)] and resumed[0] > 0, out
  assert f"tensorboard --logdir {shlex.quote(str(root))} (HParams tab)" in out
  assert err.strip() == "error: no trial completed"
  # The sweep's, the tutorial's and the ablation's trials say the same of a killed trainer.
  assert run_trainer(str(tmp_path), TRIAL, started=lambda pid: os.kill(pid, signal.SIGKILL)) == (
      -9, "killed by SIGKILL (kill -9, or the out-of-memory killer)")
  # The trainer's own exit on SIGTERM (143) keeps its last line, which says how to go on.
  stopped = "stopped by SIGTERM at step 40; checkpoint saved: run the same command again"
  monkeypatch.setattr(child_runs, "trainer_command", lambda module, args: (
      ["sh", "-c", f"echo 'error: {stopped}'; exit 143"], dict(os.environ)))
  assert run_trainer(str(tmp_path), TRIAL) == (143, stopped)


def test_a_trainer_stopped_alone_by_sigterm_is_retried_naming_its_stop(tmp_path, capsys,
                                                                        monkeypatch):
  """Its own exit on SIGTERM (143, checkpoint saved) is a stop, not a failure of its
  flags: retried like a killed trainer, and named as the stop it was."""
  calls = []

  def stopped(model_dir, args, env=None, started=None):
    calls.append(model_dir)
    return 143, "stopped by SIGTERM at step 20; checkpoint saved: run the same command again"
  monkeypatch.setattr(child_runs, "run_trainer", stopped)
  root = tmp_path / "tune"
  assert _tune([f"--root={root}", "--search=dropout=choice:0.1", "--trials=1", "--",
                    *TRIAL]) == 1
  out = capsys.readouterr().out
  assert len(calls) == 3 and len(set(calls)) == 1
  assert ("trial 0: its trainer was stopped by SIGTERM; retried from its checkpoint "
          "(retry 1 of 2)") in out
  assert "failed trial 2 (resumes trial-0000): exit 143: its trainer was stopped by " \
         "SIGTERM, 3 times" in out


def _settings(root, base=TRIAL):
  """A tuner's settings on the embedded study in root, as trainer.tune makes them."""
  return Settings(
      root=str(root), storage=f"sqlite:///{root}/study.db", study=str(root),
      searches=parse_search(["learning_rate=loguniform:1e-4:1e-2"]), base=base, trials=3)


def test_a_study_whose_trials_all_failed_on_input_takes_new_flags_and_drops_them(
    tmp_path, capsys):
  """A study that trained nothing (its only trial refused its input, exit 2) does not lock
  its root: a rerun with other flags is accepted, and that trial counts toward no --trials
  and leaves the table. A study with a trial that trained still refuses them: one handed
  back (its tuner stopped: it may have trained for hours), or an exit 2 whose model_dir
  holds a checkpoint."""
  for name, attrs, checkpoint in (("handed", {}, False),
                                  ("trained", {"error": "exit 2: bad"}, True)):
    other = tmp_path / name
    (other / "trial-0000" / "checkpoints").mkdir(parents=True)
    if checkpoint:
      (other / "trial-0000" / "checkpoints" / "ckpt-6.index").write_text("")
    study = Tuner(_settings(other, base=[*TRIAL, "--validation_split=0"])).study
    for trial_attrs in (attrs, {"error": "exit 2: bad"}):
      study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={
          "model_dir": str(other / "trial-0000"), **trial_attrs}))
    with pytest.raises(tune.UsageError, match=r"other flags \(--validation_split=0.0 -> 0.25"):
      Tuner(_settings(other))
  root = tmp_path / "tune"
  root.mkdir()
  study = Tuner(_settings(root, base=[*TRIAL, "--validation_split=0"])).study
  study.add_trial(optuna.create_trial(
      state=optuna.trial.TrialState.FAIL, user_attrs={
          "model_dir": str(root / "trial-0000"), "error": "exit 2: --dataset=mnist is not "
          "prepared"}))
  tuner = Tuner(_settings(root))
  assert "no trial got past its input; it tunes these flags now" in capsys.readouterr().out
  assert tuner.study.user_attrs["definition"]["flags"]["validation_split"] == 0.25
  assert tuner.superseded() == {0} and tune_results.rows(tuner) == []

  tuner.study.add_trial(optuna.create_trial(
      value=0.5, params={"learning_rate": 1e-3}, user_attrs={"model_dir": "x"},
      distributions={"learning_rate": optuna.distributions.FloatDistribution(
          1e-4, 1e-2, log=True)}))
  with pytest.raises(tune.UsageError, match=r"other flags \(--validation_split=0.25 -> 0"):
    Tuner(_settings(root, base=[*TRIAL, "--validation_split=0"]))


def test_the_table_shows_each_trial_as_it_is_now_in_short_numbers_and_one_experiment(
    tmp_path):
  """The ranked table and the HParams experiment of the tuners' reports: figures and drawn
  values in 4 significant digits; a pruned trial finished later by hand as it is now
  (complete, its figure and steps); the rerun command quoted (the root has a space); one
  experiment in the root whichever tuner reported last, the searched flag its first column
  even while the trials so far agree on it."""
  root = tmp_path / "sp ace"
  root.mkdir()
  tuner = Tuner(_settings(root))
  distributions = {"learning_rate": optuna.distributions.FloatDistribution(
      1e-4, 1e-2, log=True)}

  def trial(number, rate, results, **kw):
    model_dir = root / f"trial-{number:04d}"
    model_dir.mkdir()
    flags = child_runs.flags_for([*TRIAL, f"--learning_rate={rate}",
                                  f"--model_dir={model_dir}"])
    (model_dir / "results.json").write_text(json.dumps({**results, "flags": flags}))
    tuner.study.add_trial(optuna.create_trial(
        params={"learning_rate": rate}, distributions=distributions,
        user_attrs={"model_dir": str(model_dir)}, **kw))

  trial(0, 0.00025226105656484053, {"validation_accuracy": 0.8125, "global_step": 48,
                                    "train_seconds": 2.0}, value=0.8125)
  tune_results.report(tuner)  # the first tuner's report: one trial, nothing differs yet
  assert _columns(root)[:1] == [("learning_rate", True)]
  # Pruned at step 12, then trained to its end by hand (results.json rewritten).
  trial(1, 0.0051234567, {"validation_accuracy": 0.90625, "global_step": 48,
                          "train_seconds": 3.0},
        state=optuna.trial.TrialState.PRUNED, intermediate_values={6: 0.25, 12: 0.3})
  text, best = tune_results.report(tuner)  # another tuner's, later
  rows = [line for line in text.splitlines() if line.startswith("| 1 ") or
          line.startswith("| 2 ")]
  assert rows == ["| 1 | trial-0001 | 0.9062 | 0.005123 | 48 | 3 | complete (by hand after "
                  "pruning at step 12) |",
                  "| 2 | trial-0000 | 0.8125 | 0.0002523 | 48 | 2 | complete |"]
  assert "2 trials: 2 complete." in text and best["trial"] == "trial-0001"
  flagfile = shlex.quote(f"--flagfile={root}/best.cfg")
  assert f"Rerun it: python -m trainer.main {flagfile} --model_dir=DIR" in text
  assert [n for n in os.listdir(root) if "tfevents" in n and n.endswith(".experiment")] == [
      n for n in os.listdir(root) if "tfevents" in n] and len(
          [n for n in os.listdir(root) if "tfevents" in n]) == 1
  experiment = read_experiment(root)
  assert [(h.name, h.differs) for h in experiment.hparam_infos][0] == ("learning_rate", True)
  assert [h.name for h in experiment.hparam_infos if h.differs] == ["learning_rate"]


def _columns(logdir):
  """The HParams columns of logdir's experiment in the order TensorBoard shows them
  (its backend sorts them so), with their `differs` marks."""
  experiment = read_experiment(logdir)
  backend_context._sort_and_reduce_to_hparams_limit(experiment)  # pylint: disable=protected-access
  return [(h.name, h.differs) for h in experiment.hparam_infos]


def test_the_searched_flags_are_the_first_columns_and_no_partial_file_is_left(
    tmp_path, monkeypatch):
  """Searching --model makes the models' own hyperparameters differ too (activation,
  hidden_units, ...), which TensorBoard would sort ahead of it by name: only the searched
  flags are marked. A failed copy of the experiment leaves no partial file."""
  runs = [child_runs.flags_for([*TRIAL, f"--model={m}", "--model_dir=/x"])
          for m in ("mlp", "cnn")]
  root = tmp_path / "root"
  assert child_runs.write_experiment(str(root), runs, first=["model"]) == ["model"]
  assert _columns(root)[:2] == [("model", True), ("accumulation_steps", False)]
  assert child_runs.write_experiment(str(root / "sweep"), runs)[:1] == ["activation"]

  def fail(*args, **kwargs):
    raise tf.errors.PermissionDeniedError(None, None, "read-only")
  monkeypatch.setattr(tf.io.gfile, "rename", fail)
  with pytest.raises(tf.errors.PermissionDeniedError):
    child_runs.write_experiment(str(root), runs, first=["model"])
  assert not [n for n in os.listdir(root) if "partial" in n]


def test_a_killed_tuners_trial_resumes_a_hopeless_one_is_pruned_and_best_cfg_reruns(
    tmp_path, capsys, monkeypatch):
  """One machine, the embedded study, a grid of a good and a hopeless learning rate (the
  good one first, by the seed): kill -9 of the tuner in the first trial, whose rerun
  takes it up from its checkpoint; then the hopeless trial's trainer is killed (the tuner
  lives) and retried in its directory, where the median pruner prunes it at its first
  eval. The ranked table, best.cfg (rerun to the same weights) and the HParams
  experiment."""
  root = tmp_path / "tune"
  slow = [*TRIAL[:1], "--dataset=synthetic:shape=8x8x1,classes=4,train=20000,test=64",
          *TRIAL[2:4], "--epochs=2", "--eval_every=100", "--steps_per_loop=20",
          "--checkpoint_every=40", *TRIAL[7:]]  # long enough to be killed between checkpoints
  command = ["--search=learning_rate=choice:0.05|0.000001", "--sampler=grid", "--seed=1",
             "--startup_trials=1"]
  first = _tuner(root, *command, trial=slow)
  checkpoints = root / "trial-0000" / "checkpoints"
  deadline = time.monotonic() + 120
  while not (checkpoints.exists() and any(n.endswith(".index") for n in os.listdir(checkpoints))):
    assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
    time.sleep(0.05)
  first.kill()  # kill -9: the tuner's trainer gets SIGTERM (end_with_parent) and saves
  first.wait()
  trainer = _study(root).trials[0].user_attrs["trainer_pid"]
  deadline = time.monotonic() + 60
  while _running(trainer):  # it saves its checkpoint and exits (a zombie until reaped)
    assert time.monotonic() < deadline, "the killed tuner's trainer runs on"
    time.sleep(0.2)
  assert _study(root).trials[0].state.name == "RUNNING"  # as the kill left it

  # The same command, run in this process (TensorFlow is imported already).
  killed = _kill_trainers(monkeypatch, lambda args: "--learning_rate=0.000001" in args, 1)
  assert _tune([f"--root={root}", *command, "--", *slow]) == 0
  out = capsys.readouterr().out
  assert "trial 0: its tuner (pid" in out and "start  trial 1 (resumes trial-0000)" in out, out
  assert len(killed) == 1 and "trial 2: its trainer was killed by SIGKILL" in out
  assert "start  trial 3 (resumes trial-0002): --learning_rate=0.000001" in out
  starts, resumed = _starts(root / "trial-0000")
  assert starts == 1 and len(resumed) == 1 and resumed[0] > 0  # resumed, not restarted
  trials = _study(root).trials
  assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "FAIL", "PRUNED"]
  assert trials[1].params == {"learning_rate": "0.05"}
  assert trials[3].params == {"learning_rate": "0.000001"}

  with open(root / "results.md") as f:
    table = f.read()
  assert table in out  # the console shows the same table
  assert "2 trials: 1 complete, 1 pruned." in table
  rows = [line for line in table.splitlines() if re.match(r"\| \d+ \| trial-", line)]
  assert len(rows) == 2 and "| trial-0000 |" in rows[0] and "| complete |" in rows[0]
  assert "| trial-0002 |" in rows[1] and rows[1].endswith("| pruned at step 100 |")
  assert read_scalars(root / "trial-0002" / "eval")["pruned_at_step"] == {100: 100.0}
  saved = re.search(r"Pruning saved about (\d+) s", table)
  assert saved and int(saved.group(1)) > 0
  # One HParams experiment over the trials, the pruned step among its metrics.
  experiment = read_experiment(root)
  assert "pruned_at_step" in {m.name.tag for m in experiment.metric_infos}
  assert [h.name for h in experiment.hparam_infos if h.differs] == ["learning_rate"]
  # best.cfg reruns the best trial (the resumed one) to the same weights (trainer.main's
  # flags from the file, in this process).
  again = train.train_and_evaluate(parse(f"--flagfile={root / 'best.cfg'}",
                                         f"--model_dir={tmp_path / 'best'}"))
  with open(root / "trial-0000" / "results.json") as f:
    assert again["weights_digest"] == json.load(f)["weights_digest"]


def test_two_tuners_share_a_study_on_postgresql_with_no_trial_run_twice(tmp_path):
  with postgres.server() as url:
    root = tmp_path / "shared"
    args = ["--search=learning_rate=loguniform:1e-3:1e-1", "--search=hidden_units=choice:8|16",
            "--trials=3", "--startup_trials=1"]
    procs = [_tuner(root, *args, storage=url) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = _study(root, url).trials
    assert len(trials) == 3 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    started = [re.findall(r"^start  trial (\d+)", out, re.M) for out in outs]
    assert all(started) and sorted(sum(started, [])) == ["0", "1", "2"], outs
    dirs = sorted(os.path.basename(t.user_attrs["model_dir"]) for t in trials)
    assert dirs == [f"trial-000{i}" for i in range(3)]
    assert all(_starts(root / d) == (1, []) for d in dirs)  # each trained once
    # The password is in no output and no file the tuners wrote.
    assert "optuna-dashboard 'postgresql://postgres:***@127.0.0.1" in outs[0]
    written = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    assert all(postgres.PASSWORD not in out for out in outs)
    assert not [p for p in written if postgres.PASSWORD.encode() in open(p, "rb").read()]
