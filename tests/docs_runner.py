"""Runs the commands README.md and docs/ show (tests/test_docs.py parses them), each in a
child forked from one process that has imported TensorFlow, Keras and the trainer once, in
a fresh directory whose HOME holds only what `make data` makes: a stand-in Fashion-MNIST
prepared by TFDS itself into ~/tensorflow_datasets (generated images, the real builder's
names and features), without network.

    python tests/docs_runner.py SPEC.json

SPEC: {"work": DIR, "home": DIR, "phases": [[CASE, ...], ...]}; the phases run one after
the other, the cases of a phase two at a time. CASE: {"kind": main|evaluate|predict|export|
tune|sweep|local_cluster|prepare|python, "mode": run|flags, "args": [...], "code": the Python
block (kind python), "out": PREFIX}. mode flags parses the command line as the program
would and runs nothing (commands marked `needs:`). Each child writes PREFIX.stdout,
PREFIX.stderr, PREFIX.status; after each phase the runner writes WORK/../tree-N.json,
every directory and file under WORK and HOME, the files with their size and mtime.
"""

import importlib.util
import json
import os
import socket
import sys
import time

_T0 = time.time()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trainer.process import tf_env  # pylint: disable=wrong-import-position

tf_env.apply()

# pylint: disable=wrong-import-position,g-import-not-at-top
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from forked_cli import run_child
import trainer.main
importlib.import_module("trainer.run.train")  # what a run imports after its flags: once, here
# pylint: enable=wrong-import-position,g-import-not-at-top

PARALLEL = 2
# The stand-in's sizes: quickstart.cfg's 6 epochs are then 102 steps, just past its 100
# warm-up steps (a shorter run is refused).
TRAIN, TEST = 2400, 100


def _refuse(*args, **kwargs):
  raise OSError("network access in a test")


def prepare_stand_in(home: str) -> None:
  """fashion_mnist prepared by TFDS in HOME/tensorflow_datasets, as `make data` leaves it,
  from generated images (the builder's download step replaced, nothing else)."""
  from tensorflow_datasets.image_classification import mnist  # pylint: disable=g-import-not-at-top

  def generate(n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      label = int(rng.integers(0, 10))
      image = rng.integers(0, 60, (28, 28, 1)).astype(np.uint8)
      image[2 * label:2 * label + 6] += 150  # learnable: the class sets a band
      yield i, {"image": image, "label": label}

  original = mnist.FashionMNIST._split_generators
  mnist.FashionMNIST._split_generators = lambda self, dl: {"train": generate(TRAIN, 0),
                                                           "test": generate(TEST, 1)}
  try:
    builder = tfds.builder("fashion_mnist", data_dir=os.path.join(home, "tensorflow_datasets"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  finally:
    mnist.FashionMNIST._split_generators = original


def _load_script(name: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _flags_only(kind: str, args: list[str]) -> None:
  """The command line parsed and checked as the program does before it starts work."""
  if kind == "main":
    from trainer.options import config  # pylint: disable=g-import-not-at-top
    config.from_args(args)
  elif kind in ("evaluate", "predict", "export"):
    module = importlib.import_module(f"trainer.{kind}")
    own = {"evaluate": "split", "predict": "images", "export": "format"}[kind]
    if own not in flags.FLAGS:  # once a process
      module.define_flags()
    flags.FLAGS.unparse_flags()  # absl keeps an earlier command's values otherwise
    flags.FLAGS(["x", *args])
    if kind in ("predict", "export"):
      module._check_flags()  # pylint: disable=protected-access
  elif kind == "tune":
    from trainer import tune  # pylint: disable=g-import-not-at-top
    tune.parse_args(tune.parse_flags(["trainer.tune", *args]))
  elif kind == "prepare":
    _prepare_flags(args)
  else:
    raise ValueError(f"no flags-only check for {kind}")


def _prepare_flags(args: list[str]):
  from input_pipeline.readers import prepare  # pylint: disable=g-import-not-at-top
  own = flags.FlagValues()  # trainer.main's flags already claim --dataset globally
  prepare.define_flags(own)
  own(["prepare", *args])
  return prepare, own


def _run(case) -> int:
  kind, args = case["kind"], case.get("args", [])
  if kind == "python":
    exec(compile(case["code"], case.get("name", "block"), "exec"), {"__name__": "__main__"})  # pylint: disable=exec-used
    return 0
  if case["mode"] == "flags":
    _flags_only(kind, args)
    return 0
  if kind in ("main", "evaluate", "predict", "export"):
    sys.argv = [f"trainer.{kind}", *args]
    importlib.import_module(f"trainer.{kind}").run()
    return 0
  if kind == "tune":
    from trainer import tune  # pylint: disable=g-import-not-at-top
    from trainer import cli  # pylint: disable=g-import-not-at-top
    return cli.call(tune.main, tune.parse_flags(["trainer.tune", *args]))
  if kind == "sweep":
    return _load_script("sweep").main(args)
  if kind == "prepare":
    prepare, own = _prepare_flags(args)
    prepare.main([], own)
    return 0
  if kind == "local_cluster":
    sys.argv = ["local_cluster.py", *args]
    return _load_script("local_cluster").main()
  raise ValueError(f"unknown kind {kind}")


def _child(case, work: str) -> None:
  os.chdir(work)
  run_child(case["out"], lambda: _run(case))


def _tree(*roots) -> dict:
  files = {}
  for root in roots:
    for directory, _, names in os.walk(root):
      files[directory + "/"] = []  # an empty directory made counts too
      for name in names:
        path = os.path.join(directory, name)
        stat = os.lstat(path)
        files[path] = [stat.st_size, stat.st_mtime_ns]
  return files


def main() -> None:
  _note("imported")
  with open(sys.argv[1]) as f:
    spec = json.load(f)
  work, home = spec["work"], spec["home"]
  os.environ["HOME"] = home
  os.environ.pop("TFDS_DATA_DIR", None)
  socket.getaddrinfo = _refuse
  socket.socket.connect = _refuse
  # In a child: TensorFlow's runtime starts at its first op, and a process forked after
  # that inherits its locks held by threads that do not exist in the child.
  pid = os.fork()
  if pid == 0:
    try:
      prepare_stand_in(home)
    finally:
      os._exit(0 if os.path.isdir(os.path.join(home, "tensorflow_datasets", "fashion_mnist")) else 1)
  _, status = os.wait()
  _note("stand-in prepared")
  if os.waitstatus_to_exitcode(status):
    raise SystemExit("the stand-in dataset was not prepared")
  for number, phase in enumerate(spec["phases"]):
    running = {}
    for case in phase:
      if len(running) >= PARALLEL:
        pid, status = os.wait()
        _write_status(running.pop(pid), status)
      _note(f"start {case['out']} {case.get('args', '')[:6]}")
      pid = os.fork()
      if pid == 0:
        _child(case, work)
      running[pid] = case["out"]
    while running:
      pid, status = os.wait()
      _write_status(running.pop(pid), status)
    with open(os.path.join(os.path.dirname(work), f"tree-{number}.json"), "w") as f:
      json.dump(_tree(work, home), f)


def _write_status(out: str, status: int) -> None:
  with open(f"{out}.status", "w") as f:
    f.write(str(os.waitstatus_to_exitcode(status)))
  _note(f"end {out}")


def _note(what: str) -> None:
  if os.environ.get("DOCS_RUNNER_TIMES"):  # where the seconds go, when asked
    with open(os.environ["DOCS_RUNNER_TIMES"], "a") as f:
      f.write(f"{time.time() - _T0:6.1f} {what}\n")


if __name__ == "__main__":
  main()
