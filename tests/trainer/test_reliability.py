"""Crash safety: kill -9, preemption signals, divergence, corrupt checkpoints, atomic writes."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import logging

from trainer import cli
from trainer.inner.trainer import Trainer
from trainer.outer import preemption
from trainer.process import errors, files
from trainer.process.errors import ConfigError, Interrupted
from trainer.run import export, train
from datafiles import tree_digest
from flag_helpers import build_trainer, parse

# ~2 s of training when uninterrupted: long enough to be killed part-way.
RUN = ["--model=mlp", "--hidden_units=64", "--dataset=synthetic:shape=16x16x1,classes=4,"
       "train=512,test=64", "--batch_size=32", "--train_steps=300", "--steps_per_loop=2",
       "--checkpoint_every=20", "--deterministic", "--augment=translate=1"]


def start(model_dir, *extra, env=None):
  return subprocess.Popen([sys.executable, "-m", "trainer.main", *RUN, f"--model_dir={model_dir}",
                           *extra], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, **(env or {})))


def wait_for(proc, text):
  """Reads the run's log until a line contains text (or, if text is a function, until it
  returns true for a line); returns the lines read."""
  seen = text if callable(text) else lambda line: text in line
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if seen(line):
      return lines
  raise AssertionError(f"never saw {text!r}:\n{''.join(lines[-20:])}")


def finish(proc):
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  return err


def digest(model_dir):
  with open(os.path.join(model_dir, "results.json")) as f:
    results = json.load(f)
  assert results["global_step"] == 300 and 0 <= results["test_accuracy"] <= 1
  return results["weights_digest"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The digest of RUN trained without interruption. Its process starts at once and runs
  beside the test that first asks (the interrupted runs are compared with it at the end)."""
  model_dir = tmp_path_factory.mktemp("straight")
  proc = start(model_dir)
  done = []

  def result():
    if not done:
      finish(proc)
      done.append(digest(model_dir))
    return done[0]
  yield result
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def test_kill_9_at_three_points_then_finish_with_the_uninterrupted_weights(tmp_path,
                                                                          uninterrupted):
  crashed = tmp_path / "crashed"
  first = start(crashed)  # 1: killed mid-training, after the first checkpoint (step 20)
  wait_for(first, "step 30/300")
  first.kill()
  first.wait()
  second = start(crashed)  # 2: killed just after saving a checkpoint
  wait_for(second, "resumed from")
  wait_for(second, "saved checkpoint")
  second.kill()
  second.wait()
  # 3: killed in the middle of writing the checkpoint of step 260 (data file half written).
  third = start(crashed, env={"TAPELOOP_FAULT": "kill_in_checkpoint_write:260"})
  third.communicate(timeout=300)
  assert third.returncode == -signal.SIGKILL
  assert os.path.exists(crashed / "checkpoints" / "ckpt-260.index")
  err = finish(start(crashed))
  assert "ckpt-260 is unreadable" in err and "falling back to the previous one" in err
  assert "resumed from" in err and "ckpt-240" in err
  assert digest(crashed) == uninterrupted()  # --deterministic: the same weights, bit for bit


def _stop(model_dir, signum, status, after=0):
  """Starts RUN in model_dir and signals it once it is past step `after` + 4; checks its
  exit and last line and that the checkpoint of that step is there. Returns (the step, the
  run's log)."""
  def past(line):
    reached = re.search(r"step (\d+)/300", line)
    return reached and int(reached.group(1)) >= after + 4
  proc = start(model_dir)
  lines = wait_for(proc, past)
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == status, err[-2000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith(f"stopped by {signal.Signals(signum).name} at step ")
  assert "run the same command again to resume" in last and "Traceback" not in err
  step = int(last.split(" at step ")[1].split(";")[0])
  assert after + 4 <= step < 300
  assert os.path.exists(model_dir / "checkpoints" / f"ckpt-{step}.index")
  assert not os.path.exists(model_dir / "results.json")
  return step, "".join(lines) + err


def test_sigterm_then_sigint_save_a_checkpoint_and_the_reruns_resume_bit_exact(tmp_path,
                                                                              uninterrupted):
  first, _ = _stop(tmp_path, signal.SIGTERM, 143)
  second, log = _stop(tmp_path, signal.SIGINT, 130, after=first)
  assert f"ckpt-{first}" in log and f"from step {first} to 300" in log
  err = finish(start(tmp_path))
  assert f"ckpt-{second}" in err and f"from step {second} to 300" in err
  assert digest(tmp_path) == uninterrupted()  # two signals later: the same weights


def _signals_thread() -> bool:
  return any(t.name == "tapeloop-signals" for t in threading.enumerate())


def _blocked(signum) -> bool:
  return signum in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def _interrupted_before_training(action):
  with pytest.raises(Interrupted, match="stopped by SIGTERM before training"):
    try:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)
    finally:
      action.uninstall()


def _run_app(monkeypatch, program) -> None:
  """cli.run_app(program) as the command line runs it, the console handler restored after."""
  monkeypatch.setattr(sys, "argv", ["program"])
  handler = logging.get_absl_handler()
  monkeypatch.setattr(handler, "formatter", handler.formatter)
  monkeypatch.setattr(handler, "filters", list(handler.filters))
  cli.run_app(program, "program", {})


def test_a_signal_before_training_ends_a_program_but_raises_in_a_library_caller(monkeypatch):
  # A script or a notebook calling train_and_evaluate keeps its process: Interrupted, no
  # thread that would end it. A command-line program (cli.run_app) ends it at once.
  library = preemption.PreemptionStop()
  library.install()
  assert not _signals_thread() and not _blocked(signal.SIGTERM)
  _interrupted_before_training(library)
  seen = []

  def program(argv):
    del argv
    action = preemption.PreemptionStop()
    action.install()
    seen.append((errors.in_program(), _signals_thread(), _blocked(signal.SIGTERM)))
    action.uninstall()

  with pytest.raises(SystemExit) as e:
    _run_app(monkeypatch, program)
  assert e.value.code in (0, None) and seen == [(True, True, True)]
  assert not errors.in_program() and not _blocked(signal.SIGTERM)


def test_without_sigtimedwait_a_program_keeps_python_s_handlers(monkeypatch):
  # macOS's Python has no signal.sigtimedwait: no thread (it would die), no blocked signals
  # (Ctrl-C would be ignored), a signal before training raises as in a library caller.
  monkeypatch.delattr(signal, "sigtimedwait")
  action = preemption.PreemptionStop(at_once=True)
  action.install()
  assert not _signals_thread() and not _blocked(signal.SIGTERM)
  _interrupted_before_training(action)


def test_a_signal_pending_at_uninstall_goes_to_the_callers_handler():
  received = []
  # SIGINT's handler as the test process has it (ignored where it runs in the background).
  interrupt = signal.getsignal(signal.SIGINT)
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
  try:
    action = preemption.PreemptionStop(at_once=True)
    action.install()
    assert _blocked(signal.SIGTERM)
    action._at_once._closed.set()  # pylint: disable=protected-access
    action._at_once._thread.join()  # pylint: disable=protected-access
    # Sent to the main thread, which blocks it: pending until uninstall unblocks it.
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
    action.uninstall()
    assert received == [signal.SIGTERM] and not _blocked(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is interrupt
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_a_signal_ends_a_main_thread_stuck_outside_python_after_the_grace(tmp_path):
  # The main thread blocked in a system call never runs the Python handler: the signals'
  # thread ends the process GRACE_SECONDS later, with the stop line and 128 + n.
  read_end, write_end = os.pipe()
  ready_read, ready_write = os.pipe()
  pid = os.fork()
  if pid == 0:  # pragma: no cover (the child)
    try:
      os.dup2(os.open(tmp_path / "stderr", os.O_WRONLY | os.O_CREAT), 2)
      preemption.EndsAtOnce()
      os.write(ready_write, b"r")
      os.read(read_end, 1)
    finally:
      os._exit(0)
  os.read(ready_read, 1)
  os.kill(pid, signal.SIGTERM)
  start = time.monotonic()
  _, status = os.waitpid(pid, 0)
  for fd in (read_end, write_end, ready_read, ready_write):
    os.close(fd)
  assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM
  assert preemption.GRACE_SECONDS <= time.monotonic() - start < preemption.GRACE_SECONDS + 3
  assert (tmp_path / "stderr").read_text().startswith("stopped by SIGTERM before training")


def test_fp32_divergence_stops_naming_the_step_and_keeps_the_last_good_state(tmp_path):
  short = [a for a in RUN if not a.startswith("--train_steps")]
  ok = subprocess.run([sys.executable, "-m", "trainer.main", *short, "--train_steps=20",
                       f"--model_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert ok.returncode == 0, ok.stderr[-2000:]
  before = tree_digest(tmp_path / "checkpoints")
  results = (tmp_path / "results.json").read_bytes()
  bad = subprocess.run([sys.executable, "-m", "trainer.main", *short, "--train_steps=60",
                        "--learning_rate=1e30", "--allow_changed_flags=learning_rate",
                        f"--model_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 3, bad.stderr[-2000:]
  last = bad.stderr.strip().splitlines()[-1]
  # Step 21 (the first loop, one step) still reports the loss of the good weights; the
  # loop that ends at step 23 is the first to see the effect of a learning rate of 1e30.
  assert last.startswith("error: the training loss is ") and " at step 23" in last
  assert "the last good checkpoint is kept" in last
  assert tree_digest(tmp_path / "checkpoints") == before
  assert (tmp_path / "results.json").read_bytes() == results


def test_a_collapsed_fp16_loss_scale_stops_training(tmp_path):
  from trainer.outer import actions
  from trainer.run import distribute
  from trainer.outer.controller import Controller
  cfg = parse(*RUN[:5], "--train_steps=8", "--steps_per_loop=2",
              "--mixed_precision=mixed_float16", f"--model_dir={tmp_path}")
  trainer = build_trainer(cfg)
  trainer.state.optimizer.dynamic_scale.assign(0.5)  # what 16 straight overflowing steps leave
  controller = Controller(trainer=trainer, total_steps=8, steps_per_loop=2, batch_size=32,
                          actions=[actions.DivergenceCheck(lambda: trainer.state.loss_scale),
                                   actions.Checkpoint(save=trainer.state.checkpoints.save,
                                                      interval=1, total_steps=8)])
  with pytest.raises(FloatingPointError, match="fp16 loss scale collapsed to 0.5 at step 1"):
    controller.run()
  assert not glob.glob(str(tmp_path / "checkpoints" / "ckpt-*"))


TINY = ["--model=mlp", "--hidden_units=16", "--dataset=synthetic:shape=8x8x1,classes=3,"
        "train=256,test=50", "--batch_size=32", "--steps_per_loop=4", "--checkpoint_every=4",
        "--keep_checkpoints=5"]


def _train(model_dir, steps):
  return train.train_and_evaluate(parse(*TINY, f"--train_steps={steps}",
                                        f"--model_dir={model_dir}"))


def test_a_blow_up_recovers_from_the_last_checkpoint_past_the_bad_data(tmp_path, monkeypatch):
  real = Trainer.run_steps
  poisoned, positions = [], []

  def run_steps(self, iterator, steps):
    positions.append((self.state.step, iterator.position // 32))  # (global step, batches read)
    if self.state.step == 8 and not poisoned:  # a blow-up in the loop after step 8's checkpoint
      poisoned.append(self.state.step)
      weight = self.state.model.trainable_weights[-1]  # the logits bias: relu would hide a NaN
      weight.assign(weight * np.nan)
    return real(self, iterator, steps)
  monkeypatch.setattr(Trainer, "run_steps", run_steps)
  results = train.train_and_evaluate(parse(*TINY, "--train_steps=20", "--divergence_retries=1",
                                           f"--model_dir={tmp_path}"))
  assert poisoned == [8] and results["global_step"] == 20
  # Back to step 8; the data of steps 9 to 12 (the loop that blew up) is skipped.
  assert results["divergence_recoveries"] == 1 and results["skipped_steps"] == 4
  assert positions[3:6] == [(8, 8), (8, 12), (12, 16)]
  assert np.isfinite(results["test_loss"])
  # The recovery is in the checkpoint: a rerun reads the data where the recovered run did.
  monkeypatch.setattr(Trainer, "run_steps", real)
  extended = train.train_and_evaluate(parse(*TINY, "--train_steps=24", "--divergence_retries=1",
                                            f"--model_dir={tmp_path}"))
  assert extended["skipped_steps"] == 4 and extended["divergence_recoveries"] == 1


def test_divergence_retries_run_out(tmp_path):
  _train(tmp_path, 8)
  with pytest.raises(FloatingPointError, match=r"after 2 recoveries, --divergence_retries=2"):
    train.train_and_evaluate(parse(*TINY, "--train_steps=40", "--learning_rate=1e30",
                                   "--allow_changed_flags=learning_rate",
                                   "--divergence_retries=2", f"--model_dir={tmp_path}"))


def test_corrupt_checkpoints_fall_back_to_the_previous_one(tmp_path, caplog):
  _train(tmp_path, 8)
  data = glob.glob(str(tmp_path / "checkpoints" / "ckpt-8.data-*"))[0]
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)
  assert _train(tmp_path, 12)["global_step"] == 12  # from ckpt-4, not from 0
  os.remove(tmp_path / "checkpoints" / "ckpt-12.index")
  assert _train(tmp_path, 16)["global_step"] == 16  # from ckpt-8 (rewritten above)


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  _train(tmp_path, 8)
  for data in glob.glob(str(tmp_path / "checkpoints" / "ckpt-*.data-*")):
    with open(data, "wb") as f:
      f.write(b"garbage")
  before = tree_digest(tmp_path)
  with pytest.raises(ConfigError, match="no readable checkpoint in .*ckpt-8 .*ckpt-4") as e:
    _train(tmp_path, 12)
  assert tree_digest(tmp_path) == before
  # The files may be fine and this process unable to read them: never advise deleting.
  assert "delete" not in str(e.value) and "another --model_dir" in str(e.value)
  for path in glob.glob(str(tmp_path / "checkpoints" / "ckpt-*")):
    os.remove(path)
  with pytest.raises(ConfigError, match="has a checkpoint state file but no checkpoint "
                     "files; nothing was changed there") as e:
    _train(tmp_path, 12)
  assert "delete" not in str(e.value)


def test_atomic_writes_keep_the_old_file_on_failure(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  files.write_json(str(path), {"a": 1})
  assert oct(os.stat(path).st_mode & 0o777) != "0o600"  # normal permissions, not mkstemp's

  def broken_dumps(*args, **kwargs):
    raise RuntimeError("disk full")
  monkeypatch.setattr(json, "dumps", broken_dumps)
  with pytest.raises(RuntimeError):
    files.write_json(str(path), {"a": 2})
  monkeypatch.undo()
  assert json.loads(path.read_text()) == {"a": 1}
  assert os.listdir(tmp_path) == ["results.json"]  # no temporary file left
  export.write_submission(str(tmp_path / "s.csv"), np.array([3, 1]))
  assert (tmp_path / "s.csv").read_text() == "ImageId,Label\n1,3\n2,1\n"


@pytest.mark.parametrize("name,damage,message", [
    ("flag_changes.json", '{"changes": [', "flag_changes.json is not valid JSON"),
    ("flag_changes.json", '{"changes": 3}', "flag_changes.json holds no list of changes"),
    ("flags.json", "[]", "flags.json is not valid JSON (it holds no JSON object)"),
    ("flags.json", '{"train_steps": "8"}', "flags.json records train_steps='8', not a number"),
])
def test_a_damaged_file_of_model_dir_is_named_in_one_line(tmp_path, name, damage, message):
  """Files a run cannot rebuild: refused before any work, naming the file and the fix."""
  (tmp_path / "flags.json").write_text(json.dumps(parse(*TINY, "--train_steps=8").flag_values))
  (tmp_path / name).write_text(damage)
  before = tree_digest(tmp_path)
  with pytest.raises(ConfigError, match=re.escape(message) + ".*; restore it, or use a new "
                     "--model_dir"):
    _train(tmp_path, 12)
  assert tree_digest(tmp_path) == before


def test_a_damaged_results_json_is_rebuilt(tmp_path):
  first = _train(tmp_path, 8)
  for damage in ('{"global_step": 8, "test_acc', "[]"):
    (tmp_path / "results.json").write_text(damage)
    again = _train(tmp_path, 8)  # a finished run: evaluated again, results.json rebuilt
    rebuilt = json.loads((tmp_path / "results.json").read_text())
    assert rebuilt["global_step"] == again["global_step"] == 8
    assert rebuilt["weights_digest"] == first["weights_digest"]
    assert rebuilt["test_accuracy"] == first["test_accuracy"]


def test_a_peer_gone_from_the_cluster_is_one_line_and_exit_4(monkeypatch, capsys):
  # The tasks left by one that ended fail in their next collective with TensorFlow's
  # UnavailableError: one line naming it and the rerun, not a traceback.
  def program(argv):
    del argv
    raise tf.errors.UnavailableError(None, None, "Collective ops is aborted by: failed to "
                                     "connect to all addresses\nAdditional GRPC info")

  with pytest.raises(SystemExit) as e:
    _run_app(monkeypatch, program)
  err = capsys.readouterr().err
  assert e.value.code == 4 and len(err.strip().splitlines()) == 1
  assert "UnavailableError: Collective ops is aborted" in err and "every task" in err
  # A kernel's own AbortedError (oneDNN on a shape it cannot take) is no lost peer.
  def kernel_error(argv):
    del argv
    raise tf.errors.AbortedError(None, None, "could not create a descriptor for a pooling "
                                 "forward propagation primitive")

  with pytest.raises(tf.errors.AbortedError):
    _run_app(monkeypatch, kernel_error)
