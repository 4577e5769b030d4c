"""Process-wide TensorFlow settings (and onnxruntime's), set before TensorFlow is imported:
TensorFlow reads these environment variables once, at import, so they cannot be flags
applied later.
An explicitly set variable is never overridden."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import sys
import tempfile

SETTINGS = {
    # TensorFlow's C++ start-up chatter (CPU features, CUDA probing) is console noise.
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # oneDNN's convolution, pooling and matmul kernels. Since TF 2.9 they are on by
    # default only on CPUs with AVX-512 VNNI/BF16 or AMX; elsewhere (AVX2 CPUs, many cloud
    # VMs) convolutions fall back to Eigen, which ran the tutorial CNN at half the speed
    # (3.7k vs 7.8k examples/s on 2 AVX2 cores; make bench measures it).
    "TF_ENABLE_ONEDNN_OPTS": "1",
    # onnxruntime (trainer.export, predict --model=FILE.onnx) otherwise records a device id
    # and queues usage events under ~/.cache/Microsoft at its import, to send them home.
    "ORT_DISABLE_TELEMETRY": "1",
}


# TensorFlow 2.21's start-up lines, printed by C++ before its logging is set up (so
# TF_CPP_MIN_LOG_LEVEL does not hide them), on every import: CPU features, oneDNN, and the
# CUDA probe, which on a machine without a GPU says "failed call to cuInit: ... CUDA error".
_START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|\] oneDNN custom operations are on"
    r"|cudart_stub\.cc.*Could not find cuda drivers|cpu_feature_guard\.cc"
    r"|To enable the following instructions|This TensorFlow binary is optimized"
    r"|cuda_platform\.cc.*failed call to cuInit")


def is_start_up_noise(line: str) -> bool:
  """A start-up line that says nothing on this machine. cuInit's failure matters where an
  NVIDIA driver is installed (a GPU VM whose GPU TensorFlow cannot use): kept there."""
  if "cuInit" in line and os.path.exists("/dev/nvidiactl"):
    return False
  return bool(_START_UP_NOISE.search(line))


def keras_writes_nothing() -> None:
  """For a dry run, which writes nothing, before Keras is imported: Keras 3 writes
  KERAS_HOME/keras.json (default ~/.keras) at its import when the file is missing. Then
  KERAS_HOME is a temporary directory, removed at exit: the settings Keras would have
  written are its defaults anyway. An existing keras.json, only read, is kept in use."""
  if "KERAS_HOME" in os.environ or "keras" in sys.modules:
    return
  home = os.path.expanduser("~")
  home = home if os.access(home, os.W_OK) else "/tmp"  # Keras's own fallback
  if os.path.exists(os.path.join(home, ".keras", "keras.json")):
    return
  os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="tapeloop-keras-")
  atexit.register(shutil.rmtree, os.environ["KERAS_HOME"], ignore_errors=True)


# Set by trainer/run/child_runs.py in a trainer it starts: the parent's process id.
PARENT_ENV = "TAPELOOP_PARENT_PID"


def end_with_parent() -> None:
  """In a trainer a sweep or tuner started: SIGTERM to this process when its parent dies
  (Linux's PR_SET_PDEATHSIG), so that a parent killed with kill -9 leaves no trainer
  running on; the trainer saves its checkpoint and exits as on preemption, and the rerun
  resumes it."""
  parent = os.environ.pop(PARENT_ENV, None)
  if not parent or not sys.platform.startswith("linux"):
    return
  try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return
  if str(os.getppid()) != parent:  # the parent died before prctl took effect
    os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def _signals_held():
  """SIGTERM and SIGINT blocked in this thread meanwhile (held back, not lost): threads
  started meanwhile (TensorFlow's, at import) never take them, they stay for the main
  thread (and trainer/outer/preemption.py's). Where Python has no pthread_sigmask (Windows),
  nothing is blocked."""
  if not hasattr(signal, "pthread_sigmask"):
    yield
    return
  mask = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def leave_gpus_to_children() -> None:
  """In a process that starts trainers and checks their flags and data itself (the tuner,
  the sweep): TensorFlow reserves nearly all of every GPU's memory at the process's first
  op unless memory growth is on, which would leave the trainers it starts none. Call
  after apply(), before the first op; too late, it changes nothing."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for gpu in tf.config.list_physical_devices("GPU"):
    try:
      tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # the runtime has started: its memory is reserved already
      return


def apply() -> None:
  """Call before the first `import tensorflow` of the process: sets the variables, then
  imports TensorFlow and probes its devices with the C++ start-up noise filtered out of
  stderr (every other line is passed on). Also end_with_parent()."""
  end_with_parent()
  if "tensorflow" in sys.modules:
    return  # too late to matter; a library user who imported TensorFlow first keeps theirs
  for name, value in SETTINGS.items():
    os.environ.setdefault(name, value)
  if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
    with _signals_held():
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    return  # the user asked for everything
  with native_stderr(is_start_up_noise), _signals_held():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices("GPU")  # the CUDA probe logs here, once per process


@contextlib.contextmanager
def native_stderr(is_noise):
  """Within the block, what C++ libraries print on file descriptor 2 (which Python's
  sys.stderr does not see) is captured, and passed on at its end without the lines
  is_noise(line) is true of."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
              if not is_noise(line)]
      sys.stderr.write("".join(kept))
      sys.stderr.flush()
