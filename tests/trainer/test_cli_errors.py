"""Bad invocations: exit 2, one line naming the problem, no traceback, model_dir untouched."""

import os
import subprocess
import sys

from datafiles import write_mnist_dir

GOOD = ["--model=mlp", "--hidden_units=8", "--dataset=synthetic:train=64,test=8",
        "--batch_size=16", "--train_steps=2"]


def _cases(tmp):
  write_mnist_dir(os.path.join(tmp, "bad_idx"))
  with open(os.path.join(tmp, "bad_idx", "train-labels-idx1-ubyte.gz"), "wb") as f:
    f.write(b"\x1f\x8b\x08\0broken")
  with open(os.path.join(tmp, "unknown.cfg"), "w") as f:
    f.write("--model=mlp\n--colour=blue\n")
  with open(os.path.join(tmp, "file"), "w") as f:
    f.write("x")
  return [
      (["--model=vgg"], "--model=vgg is unknown"),
      (["--optimizer=adagrad"], "--optimizer=adagrad is unknown"),
      (["--batch_size=0"], "--batch_size=0 must be positive"),
      (["--epochs=2", "--train_steps=5"], "--epochs and --train_steps both given"),
      (["--dataset=ftp:x"], "unknown data source prefix"),
      ([f"--dataset=idx:{tmp}/nowhere"], "no such directory"),
      ([f"--dataset=idx:{tmp}/bad_idx"], "train-labels-idx1-ubyte.gz is not a valid gzip"),
      (["--flagfile=/nonexistent.cfg"], "nonexistent.cfg"),
      ([f"--flagfile={tmp}/unknown.cfg"], "colour"),
      (["--learning_rate=abc"], "learning_rate"),
      (["--batch_size=1000"], "--batch_size=1000 is larger than the 64 training examples"),
      ([f"--model_dir={tmp}/file/run"], "is a file, not a directory"),
      (["positional"], "unexpected arguments positional"),
  ]


def test_bad_invocations_exit_2_with_one_line(tmp_path):
  failures = []
  for extra, message in _cases(str(tmp_path)):
    model_dir = tmp_path / "model_dir"
    args = GOOD + [f"--model_dir={model_dir}"] + extra
    proc = subprocess.run([sys.executable, "-m", "trainer.main", *args], capture_output=True,
                          text=True, timeout=120)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    if (proc.returncode != 2 or message not in last or not last.startswith("error: ")
        or "Traceback" in proc.stderr or model_dir.exists()):
      failures.append((extra, proc.returncode, last, proc.stderr[-500:]))
  assert not failures, failures


def test_verbosity_shows_the_traceback(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "trainer.main", *GOOD, "--batch_size=1000",
                         f"--model_dir={tmp_path}/m", "--verbosity=1"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "Traceback" in proc.stderr
