"""Makes TFDS's fashion_mnist available with no network, from Debian's dataset-fashion-mnist.

    apt-get install dataset-fashion-mnist
    python -m trainer.prepare --dataset=fashion_mnist [--data_dir=DIR]   # make data

Debian's build stripped the file name and timestamp from each gzip header, so the bytes
differ from upstream and TFDS's checksum check would reject them; the compressed payload
is identical. Restoring the header reproduces the upstream files byte for byte; they are
checked against TFDS's registered sha256, placed in manual_dir, and the dataset is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging as py_logging
import os
import shlex
import struct
import sys
import tempfile
import time

from absl import flags

# TensorFlow-free at the top: the program's flags are parsed and checked before TensorFlow
# and TFDS load (tfds_source imports TensorFlow; it is imported where it is used).
from input_pipeline.specs import DataError

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
# Upstream gzip mtimes (from the registered files): train files, then t10k files.
_MTIMES = {"train": 1504176606, "t10k": 1504176627}
_ONLY_FASHION = ("only fashion_mnist has an offline source here (Debian's "
                 "dataset-fashion-mnist); for MNIST files you downloaded use "
                 "--dataset=idx:DIR when training")
_FNAME = 0x08  # gzip header flag: an original file name follows the 10-byte header


def restore_gzip_header(data: bytes, name: str, mtime: int) -> bytes:
  """Puts back the original file name and mtime that `gzip -n` left out."""
  if data[:3] != b"\x1f\x8b\x08":
    raise DataError(f"{name}.gz is not a gzip file")
  flags_byte = data[3]
  if flags_byte & ~0x02:  # anything but FHCRC: name, comment or extra already there
    raise DataError(f"{name}.gz already has optional gzip header fields; expected "
                    "Debian's stripped header")
  header = bytes([0x1F, 0x8B, 0x08, flags_byte | _FNAME]) + struct.pack("<I", mtime) + data[8:10]
  return header + name.encode("latin-1") + b"\0" + data[10:]


def _write_atomic(path: str, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def place_manual_files(source_dir: str, manual_dir: str, url_infos) -> list[str]:
  """Restores and verifies each registered file from source_dir into manual_dir."""
  placed = []
  os.makedirs(manual_dir, exist_ok=True)
  for info in url_infos.values():
    filename = info.filename  # e.g. train-images-idx3-ubyte.gz
    target = os.path.join(manual_dir, filename)
    if os.path.exists(target) and _sha256(open(target, "rb").read()) == info.checksum:
      placed.append(target)
      continue
    source = os.path.join(source_dir, filename)
    if not os.path.exists(source):
      raise DataError(f"{shlex.quote(source)} is missing: install Debian's package with "
                      "'apt-get install dataset-fashion-mnist' (or pass --source_dir)")
    name = filename.removesuffix(".gz")
    with open(source, "rb") as f:
      restored = restore_gzip_header(f.read(), name, _MTIMES[name.split("-")[0]])
    if _sha256(restored) != info.checksum:
      raise DataError(f"{shlex.quote(source)}: after restoring its gzip header the sha256 differs from "
                      f"TFDS's registered {info.checksum[:12]}...; reinstall "
                      "dataset-fashion-mnist or download the file from upstream")
    _write_atomic(target, restored)
    placed.append(target)
  return placed


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def prepare(dataset: str, data_dir: str | None, source_dir: str) -> str:
  """Places the files and builds the TFDS dataset; returns the TFDS data_dir used."""
  if dataset != "fashion_mnist":
    raise DataError(f"{shlex.quote('--dataset=' + dataset)}: {_ONLY_FASHION}")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from input_pipeline.readers import tfds_source  # pylint: disable=g-import-not-at-top
  with _quiet_tfds():
    builder = tfds.builder(dataset, data_dir=data_dir or tfds_source.default_data_dir())
    manual_dir = tfds_source.manual_dir_for(builder, dataset)
    prepared = builder.is_prepared()
  root = os.fspath(builder.data_dir_root)
  if prepared:
    print(f"{dataset} is already prepared in {shlex.quote(root)}")
    return root
  placed = place_manual_files(source_dir, manual_dir, builder.url_infos)
  print(f"placed {len(placed)} verified files in {shlex.quote(manual_dir)}")
  print(f"preparing {dataset} {builder.version} in {shlex.quote(root)}", flush=True)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  start = time.monotonic()
  with _quiet_tfds():
    builder.download_and_prepare(download_config=config)
  for name, split in builder.info.splits.items():
    print(f"  {name}: {split.num_examples} examples")
  print(f"prepared in {time.monotonic() - start:.0f} s")
  return root


class _NotTfdsInfo(py_logging.Filter):
  """Drops TFDS's own info and warnings (each download it skips, each file it writes, a
  half-written earlier attempt it starts over): prepare() says what it did. TFDS's errors
  pass."""

  def filter(self, record):
    return (record.levelno >= py_logging.ERROR
            or f"{os.sep}tensorflow_datasets{os.sep}" not in record.pathname)


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS without its progress bars (about a hundred lines: downloads, extraction,
  examples, shuffling), its printed banners ("Downloading and preparing dataset Unknown
  size" offline) and its log lines."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  quiet, logger = _NotTfdsInfo(), py_logging.getLogger("absl")  # TFDS logs through absl
  logger.addFilter(quiet)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    logger.removeFilter(quiet)


def define_flags(flag_values=flags.FLAGS) -> None:
  """The program's flags. Defined only when run as a program: importing this module must
  not claim --dataset (trainer.main's flag)."""
  flags.DEFINE_string("dataset", "fashion_mnist", "TFDS dataset to prepare.",
                      flag_values=flag_values)
  # Checked as the flags are parsed: before TensorFlow loads.
  flags.register_validator("dataset", lambda name: name == "fashion_mnist", _ONLY_FASHION,
                           flag_values=flag_values)
  flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the trainer's, "
                      "$TFDS_DATA_DIR else ~/tensorflow_datasets).", flag_values=flag_values)
  flags.DEFINE_string("source_dir", DEBIAN_DIR,
                      "Where Debian's dataset-fashion-mnist put the gz files.",
                      flag_values=flag_values)


USAGE = ("python -m trainer.prepare --dataset=fashion_mnist [--data_dir=DIR] "
         "[--source_dir=DIR]")
FLAG_NAMES = ("dataset", "data_dir", "source_dir")


def main(argv, flag_values=flags.FLAGS):
  """The program: bad input raises DataError, which the command line (trainer/cli.py's
  run_app) prints as one line with exit status 2."""
  if len(argv) > 1:
    raise DataError(f"unexpected arguments {shlex.join(argv[1:])}: flags look like "
                    "--name=value")
  fv = flag_values
  root = prepare(fv.dataset, fv.data_dir, fv.source_dir)
  from input_pipeline.readers import tfds_source  # pylint: disable=g-import-not-at-top
  # --data_dir only where the commands would not look by default.
  elsewhere = os.path.realpath(root) != os.path.realpath(tfds_source.default_data_dir())
  print(f"{fv.dataset} is ready in {shlex.quote(root)}; train with --dataset={fv.dataset}"
        + (f" {shlex.quote('--data_dir=' + root)}" if elsewhere else ""))


if __name__ == "__main__":
  # The program lives in trainer (above input_pipeline in the layers): say so, not nothing.
  print("error: the program is python -m trainer.prepare; input_pipeline.readers.prepare is its "
        "library", file=sys.stderr)
  sys.exit(2)
