"""Process settings applied before TensorFlow loads (trainer/tf_env.py)."""

import os
import subprocess
import sys

from paths import ROOT
from trainer import tf_env

PROBE = ("from trainer import tf_env; tf_env.apply(); "
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


def test_entry_points_apply_it_before_importing_tensorflow():
  for module in ("trainer/main.py", "trainer/predict.py"):
    source = open(os.path.join(ROOT, module)).read()
    assert source.index("tf_env.apply()") < source.index("from absl import")


def _start_up_stderr(**env) -> str:
  clean = {k: v for k, v in os.environ.items() if k not in tf_env.SETTINGS}
  code = ("from trainer import tf_env; tf_env.apply(); import sys; "
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
