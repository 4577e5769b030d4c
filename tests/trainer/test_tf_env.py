"""Process settings applied before TensorFlow loads (trainer/process/tf_env.py)."""

import os
import subprocess
import sys

from paths import ROOT
from trainer.process import tf_env

PROBE = ("from trainer.process import tf_env; tf_env.apply(); "
         "from tensorflow.python.util import _pywrap_util_port; "
         "print(_pywrap_util_port.IsMklEnabled())")


def _onednn_enabled(**env) -> bool:
  clean = {k: v for k, v in os.environ.items() if k not in tf_env.SETTINGS}
  out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, cwd=ROOT,
                       capture_output=True, text=True, check=True, timeout=120).stdout
  return out.strip().splitlines()[-1] == "True"


def test_entry_points_turn_on_onednn_kernels():
  # TensorFlow itself enables them only on AVX-512 VNNI/BF16 or AMX CPUs.
  assert _onednn_enabled()


def test_an_explicit_setting_wins():
  assert not _onednn_enabled(TF_ENABLE_ONEDNN_OPTS="0")


def _imports(code_or_module, *args):
  """(exit status, stderr, top-level packages imported) of `python -m MODULE ARGS` (or of
  `python -c CODE ARGS`), as python -X importtime lists them."""
  how = ["-c"] if "\n" in code_or_module or ";" in code_or_module else ["-m"]
  proc = subprocess.run([sys.executable, "-X", "importtime", *how, code_or_module, *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  packages = {line.rsplit("|", 1)[1].strip().split(".")[0]
              for line in proc.stderr.splitlines() if line.startswith("import time:")}
  errors = "\n".join(l for l in proc.stderr.splitlines() if not l.startswith("import time:"))
  return proc.returncode, errors, packages


def test_flags_are_answered_before_tensorflow_loads(tmp_path):
  # --help, a mistyped flag, a missing flagfile and a bad value: answered without
  # TensorFlow's seconds of start-up, by every program and console script.
  cases = [("trainer.main", ["--help"], 0, ""),
           ("trainer.main", ["--modle=cnn"], 2, "Unknown command line flag 'modle'"),
           ("trainer.main", [f"--flagfile={tmp_path}/none.cfg"], 2,
            f"error: flagfile {tmp_path}/none.cfg: no such file"),
           ("trainer.main", ["--batch_size=0"], 2, "error: --batch_size=0 must be positive"),
           ("trainer.main", [f"--model_dir={tmp_path}/run", "--steps_per_loop=0"], 2,
            "error: --steps_per_loop=0 must be positive"),  # before its record is read
           ("trainer.main", ["--model=cnn", "--hidden_units=8"], 2,
            "--hidden_units does not apply to --model=cnn"),
           ("trainer.evaluate", ["--help"], 0, ""),
           ("trainer.evaluate", ["--spilt=test"], 2, "Unknown command line flag 'spilt'"),
           ("trainer.predict", ["--help"], 0, ""),
           ("trainer.predict", ["--image=a.png"], 2, "Unknown command line flag 'image'"),
           ("trainer.tune", ["--help"], 0, ""),
           ("trainer.tune", ["--root=r", "--trails=3"], 2, "unrecognized arguments"),
           ("trainer.prepare", ["--help"], 0, ""),
           ("trainer.prepare", ["--dataset=mnist"], 2,
            "--dataset=mnist: only fashion_mnist"),
           ("trainer.prepare", ["--data_dri=d"], 2, "Unknown command line flag")]
  import configparser  # pylint: disable=g-import-not-at-top
  setup = configparser.ConfigParser()
  setup.read(os.path.join(ROOT, "setup.cfg"))
  for line in filter(None, setup["options.entry_points"]["console_scripts"].splitlines()):
    name, target = (t.strip() for t in line.split("="))
    module, function = target.split(":")
    cases.append((f"import sys; sys.argv = [{name!r}, '--help']; "
                  f"import {module}; {module}.{function}()", [], 0, ""))
  cases += [(f"import runpy, sys; sys.argv = ['sweep.py', *{args!r}]; "
             "runpy.run_path('scripts/sweep.py', run_name='__main__')", [], status, message)
            for args, status, message in [(["--help"], 0, ""),
                                          (["--root=r", "--gird=a=1"], 2, "unrecognized")]]
  for program, args, status, message in cases:
    code, errors, packages = _imports(program, *args)
    assert (code, "tensorflow" in packages, "keras" in packages) == (status, False, False), (
        program, args, errors[-2000:])
    assert message in errors and "Traceback" not in errors, (program, args, errors)


def _start_up_stderr(**env) -> str:
  clean = {k: v for k, v in os.environ.items() if k not in tf_env.SETTINGS}
  code = ("from trainer.process import tf_env; tf_env.apply(); import sys; "
          "print('still here', file=sys.stderr)")
  return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=ROOT,
                        capture_output=True, text=True, check=True, timeout=120).stderr


def test_tensorflow_start_up_chatter_is_filtered_and_other_lines_pass():
  # TensorFlow 2.21 prints 5-7 such lines at every start (TF_CPP_MIN_LOG_LEVEL=0 shows them).
  assert _start_up_stderr() == "still here\n"
  assert tf_env.is_start_up_noise("I0000 00:00:1 12 port.cc:153] oneDNN custom operations are "
                                  "on. You may see slightly different numerical results")
  assert tf_env.is_start_up_noise("WARNING: All log messages before absl::InitializeLog() is "
                                  "called are written to STDERR")
  assert tf_env.is_start_up_noise("E0000 00:00:1 12 cuda_platform.cc:52] failed call to cuInit:"
                                   " INTERNAL: CUDA error") != os.path.exists("/dev/nvidiactl")
  assert not tf_env.is_start_up_noise("W0000 00:00:1 12 gpu_device.cc:2] Cannot dlopen some "
                                      "GPU libraries")


def test_a_dry_run_keeps_keras_from_writing_its_settings_into_home(tmp_path, monkeypatch):
  # Keras 3 writes ~/.keras/keras.json at its import when it is missing: in a dry run its
  # home is a temporary directory instead; an existing keras.json stays in use.
  import shutil  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.delenv("KERAS_HOME", raising=False)
  monkeypatch.delitem(sys.modules, "keras", raising=False)  # as before a program's first import of Keras
  tf_env.keras_writes_nothing()
  keras_home = os.environ["KERAS_HOME"]
  assert os.path.isdir(keras_home) and not keras_home.startswith(str(tmp_path))
  shutil.rmtree(keras_home)
  monkeypatch.delenv("KERAS_HOME")
  (tmp_path / ".keras").mkdir()
  (tmp_path / ".keras" / "keras.json").write_text("{}")
  tf_env.keras_writes_nothing()
  assert "KERAS_HOME" not in os.environ


def test_a_process_that_starts_trainers_leaves_them_the_gpus_memory(monkeypatch):
  # No GPU here: TensorFlow's device list and its memory-growth switch stand in.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gpus, grown = ["GPU:0", "GPU:1"], []
  monkeypatch.setattr(tf.config, "list_physical_devices",
                      lambda kind=None: gpus if kind == "GPU" else [])
  monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                      lambda device, on: grown.append((device, on)))
  tf_env.leave_gpus_to_children()
  assert grown == [("GPU:0", True), ("GPU:1", True)]
  for launcher in ("trainer/tune.py", "scripts/sweep.py"):
    with open(os.path.join(ROOT, launcher)) as f:
      source = f.read()
    assert source.index("tf_env.leave_gpus_to_children()") < source.index("def main(")
