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
