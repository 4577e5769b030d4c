"""Two worker processes on 127.0.0.1 train together under MultiWorkerMirroredStrategy."""

import glob
import json
import os
import re
import subprocess
import sys

from paths import ROOT


def test_two_local_workers_train_together_and_only_the_chief_writes(tmp_path):
  model_dir, scratch = tmp_path / "model", tmp_path / "tmp"
  scratch.mkdir()
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "local_cluster.py"), "--workers=2",
       "--timeout=240", "--", "--model=mlp", "--hidden_units=16",
       "--dataset=synthetic:shape=12x12x1,classes=4,train=320,test=70", "--batch_size=32",
       "--train_steps=6", "--steps_per_loop=3", f"--model_dir={model_dir}"],
      capture_output=True, text=True, timeout=300, env=dict(os.environ, TMPDIR=str(scratch)))
  assert proc.returncode == 0, proc.stdout[-3000:]
  out = proc.stdout
  digests = dict(re.findall(r"\[worker (\d)\] .*model weights digest at step 6: (\w+)", out))
  assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]  # identical weights
  assert out.count("2 replica(s), per-replica batch 16") == 2
  # Only the chief (worker 0) wrote: one events file per run, one results.json.
  assert len(glob.glob(str(model_dir / "train" / "events.out.tfevents.*"))) == 1
  assert len(glob.glob(str(model_dir / "eval" / "events.out.tfevents.*"))) == 1
  assert os.path.exists(model_dir / "export" / "saved_model.pb")
  assert os.listdir(model_dir / "checkpoints") and "ckpt-6.index" in os.listdir(
      model_dir / "checkpoints")
  with open(model_dir / "results.json") as f:
    results = json.load(f)
  assert results["replicas"] == 2 and results["chief"] and results["global_step"] == 6
  assert results["weights_digest"] == digests["0"]
  assert "[worker 1] worker done; the chief writes the outputs" in out
  # The non-chief wrote its checkpoints and export into a scratch dir, then removed it.
  assert re.search(r"\[worker 1\] .*saved checkpoint .*tapeloop-worker-", out)
  assert not glob.glob(str(scratch / "tapeloop-worker-*"))


def test_multi_worker_without_tf_config_is_a_clear_error(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
  proc = subprocess.run([sys.executable, "-m", "trainer.main", "--strategy=multi_worker",
                         "--dataset=synthetic:train=64,test=8", f"--model_dir={tmp_path}/m"],
                        capture_output=True, text=True, timeout=120, env=env)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: --strategy=multi_worker needs TF_CONFIG")
