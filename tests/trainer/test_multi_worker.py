"""Two worker processes on 127.0.0.1 train together under MultiWorkerMirroredStrategy."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from datafiles import write_image_folder
from flag_helpers import parse
from paths import ROOT
from runs import read_scalars
from trainer.run import train


def test_multi_worker_without_tf_config_is_a_clear_error(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
  proc = subprocess.run([sys.executable, "-m", "trainer.main", "--strategy=multi_worker",
                         "--dataset=synthetic:train=64,test=8", f"--model_dir={tmp_path}/m"],
                        capture_output=True, text=True, timeout=120, env=env)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: --strategy=multi_worker needs TF_CONFIG")


def test_a_worker_waiting_for_its_cluster_says_so_and_a_signal_ends_it_at_once(tmp_path):
  # A chief whose other worker never comes: it names what it waits for, and SIGTERM ends
  # it at once (MultiWorkerMirroredStrategy's own wait, in C++, would swallow it).
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  import local_cluster  # pylint: disable=g-import-not-at-top
  ports = local_cluster.free_ports(2)
  proc = subprocess.Popen(
      [sys.executable, "-m", "trainer.main", "--strategy=multi_worker", "--model=mlp",
       "--hidden_units=8", "--dataset=synthetic:train=64,test=8", "--batch_size=16",
       "--train_steps=2", f"--model_dir={tmp_path}/m"],
      env=dict(os.environ, TF_CONFIG=local_cluster.tf_config(ports, 0)),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = threading.Timer(120, proc.kill)  # a worker deaf to signals would wait for ever
  deadline.start()
  try:
    lines = []
    for line in proc.stdout:
      lines.append(line)
      if f"waiting for 1 of 2 workers: 127.0.0.1:{ports[1]}" in line:
        break
    else:
      pytest.fail("".join(lines)[-3000:])
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    out = proc.communicate(timeout=30)[0]
    assert time.monotonic() - start < 5
  finally:
    deadline.cancel()
    proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
  assert out.strip().splitlines()[-1].startswith("stopped by SIGTERM before training")
  assert not os.path.exists(tmp_path / "m")


CLUSTER_RUN = ["--strategy=multi_worker", "--model=mlp", "--hidden_units=32",
               "--dataset=synthetic:shape=12x12x1,classes=4,train=640,test=70",
               "--batch_size=32", "--train_steps=100", "--steps_per_loop=2",
               "--checkpoint_every=25", "--keep_checkpoints=10", "--deterministic",
               "--eval_images=false"]


def _start_cluster(model_dir, evaluator=False, env=None):
  """The engines' layout (Kubeflow's TFJob, Vertex AI): a chief and a worker train, the
  same command line on each task; with an evaluator task, it is last."""
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  import local_cluster  # pylint: disable=g-import-not-at-top
  spec = local_cluster.cluster(1, chief=True, evaluator=evaluator)
  return [subprocess.Popen([sys.executable, "-m", "trainer.main", *CLUSTER_RUN,
                            f"--model_dir={model_dir}"],
                           env=dict(os.environ, **(env or {}),
                                    TF_CONFIG=local_cluster.tf_config(spec, i, kind)),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for kind, i in local_cluster.tasks(spec)]


def _digest(proc, outs=None):
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, out[-3000:]
  if outs is not None:
    outs.append(out)
  return re.findall(r"model weights digest at step 100: (\w+)", out)[-1]


def _eval_steps(proc):
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  return [int(s) for s in re.findall(r"eval on test at step (\d+)", out)], out


def test_chief_worker_evaluator_and_sigterm_to_one_worker_stops_training_at_one_step(tmp_path):
  """Chief + worker + evaluator on loopback: the two train to identical weights, only the
  chief writes, the evaluator (outside the collective) evaluates each checkpoint up to
  the last step. Then SIGTERM to the worker stops both training tasks at one step, and
  the rerun is bit-exact."""
  straight, scratch, outs = tmp_path / "straight", tmp_path / "tmp", []
  scratch.mkdir()
  chief, worker, evaluator = _start_cluster(straight, evaluator=True,
                                            env={"TMPDIR": str(scratch)})
  expected = {_digest(chief, outs), _digest(worker, outs)}
  assert len(expected) == 1  # identical weights
  # Only the chief wrote: one events file per run, one results.json; the worker saved into
  # a scratch directory, then removed it.
  assert len(glob.glob(str(straight / "train" / "events.out.tfevents.*"))) == 1
  assert len(glob.glob(str(straight / "eval" / "events.out.tfevents.*"))) == 1
  assert os.path.exists(straight / "export" / "saved_model.pb")
  with open(straight / "results.json") as f:
    results = json.load(f)
  assert results["replicas"] == 2 and results["chief"] and results["global_step"] == 100
  assert results["weights_digest"] in expected
  assert "worker done; the chief writes the outputs" in outs[1]
  assert re.search(r"saved checkpoint .*tapeloop-worker-", outs[1])
  assert not glob.glob(str(scratch / "tapeloop-worker-*"))
  steps, out = _eval_steps(evaluator)
  assert steps == [25, 50, 75, 100], out[-3000:]  # every checkpoint, the last one last
  assert read_scalars(tmp_path / "straight" / "eval_test")["accuracy"].keys() == {
      25, 50, 75, 100}
  assert "CollectiveAllReduce" not in out and "1 replica(s)" in out  # not a worker

  chief, other = _start_cluster(tmp_path / "preempted")
  lines = []
  for line in other.stdout:  # the non-chief reaches step 20: both are training
    lines.append(line)
    if "step 20/100" in line or "step 22/100" in line:
      break
  other.send_signal(signal.SIGTERM)
  start = time.monotonic()
  outs = [p.communicate(timeout=60)[0] for p in (chief, other)]
  assert time.monotonic() - start < 30
  assert [p.returncode for p in (chief, other)] == [128 + signal.SIGTERM] * 2, outs[0][-2000:]
  stopped = [re.search(r"stopped by SIGTERM at step (\d+)", out) for out in outs]
  assert all(stopped), outs
  step = int(stopped[0].group(1))
  assert int(stopped[1].group(1)) == step < 100
  assert "another worker was signalled" in outs[0]
  assert os.path.exists(tmp_path / "preempted" / "checkpoints" / f"ckpt-{step}.index")
  # Saved first, nothing else: no eval at the boundary where both stopped (an eval already
  # under way when the signal came may finish: a Python handler waits for TensorFlow).
  for out in outs:
    assert not re.search(rf"eval on \w+ at step {step}\b", out), out[-2000:]

  resumed = _start_cluster(tmp_path / "preempted")
  assert {_digest(p) for p in resumed} == expected


def test_two_workers_stream_their_own_parts_and_train_like_one_process(tmp_path):
  """Each worker reads and decodes only its half of every global batch from the folder;
  together they train what one process trains."""
  write_image_folder(tmp_path / "photos", per_split=(("train", 12), ("test", 5)),
                     sizes=((12, 12),))
  args = ["--model=mlp", "--hidden_units=16", f"--dataset=folder:{tmp_path / 'photos'}",
          "--pipeline=stream", "--batch_size=8", "--train_steps=6", "--steps_per_loop=3",
          "--deterministic", "--eval_images=false"]
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "local_cluster.py"), "--workers=2",
       "--timeout=240", "--", *args, f"--model_dir={tmp_path / 'two'}"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:]
  for worker in (1, 2):
    assert f"input pipeline {worker} of 2: reads its 4 examples of each global batch" in proc.stdout
  single = train.train_and_evaluate(parse(*args, f"--model_dir={tmp_path / 'one'}"))
  with open(tmp_path / "two" / "results.json") as f:
    two = json.load(f)
  assert two["pipeline"] == "stream" and two["global_step"] == 6
  assert two["test_loss"] == pytest.approx(single["test_loss"], rel=1e-5)
