"""Process-wide TensorFlow settings, set before TensorFlow is imported: TensorFlow reads
these environment variables once, at import, so they cannot be flags applied later.
An explicitly set variable is never overridden."""

from __future__ import annotations

import os
import sys

SETTINGS = {
    # TensorFlow's C++ start-up chatter (CPU features, CUDA probing) is console noise.
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # oneDNN's convolution, pooling and matmul kernels. Since TF 2.9 they are on by
    # default only on CPUs with AVX-512 VNNI/BF16 or AMX; elsewhere (AVX2 CPUs, many cloud
    # VMs) convolutions fall back to Eigen, which ran the tutorial CNN at half the speed
    # (3.7k vs 7.8k examples/s on 2 AVX2 cores; make bench measures it).
    "TF_ENABLE_ONEDNN_OPTS": "1",
}


def apply() -> None:
  """Call before the first `import tensorflow` of the process."""
  if "tensorflow" in sys.modules:
    return  # too late to matter; a library user who imported TensorFlow first keeps theirs
  for name, value in SETTINGS.items():
    os.environ.setdefault(name, value)
