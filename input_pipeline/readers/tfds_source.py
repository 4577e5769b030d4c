"""TFDS image-classification datasets: decoded whole into memory (small data), or
streamed from their prepared record shards (stream.py)."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shlex
import socket
import urllib.parse

import numpy as np
import tensorflow as tf
from absl import logging

from input_pipeline.data import DataError, Split, check_labels, fill
from input_pipeline.readers import decoded_cache
from input_pipeline.records import ShardRecords, fit
from input_pipeline.stream import StreamSplit

_SPLITS = ("train", "validation", "test")
# Decoded splits are kept beside the dataset's shards (data_dir/NAME/VERSION/), up to this
# size each: Fashion-MNIST's 70k PNG decodes take ~5 s, reading them back ~0.1 s.
CACHE_DIR = "tapeloop_decoded"
CACHE_LIMIT = 2 * 1024**3
# Set by --dry_run: an unprepared dataset is named instead of prepared, and decoded splits
# are not cached, so that a dry run writes nothing.
READ_ONLY = False


class NotPrepared(DataError):
  """A dataset a run would download and prepare (the network may be there), met by a dry
  run (READ_ONLY): its name and the data_dir it would be prepared in."""

  def __init__(self, name: str, data_dir: str):
    self.name, self.data_dir = name, data_dir
    super().__init__(f"TFDS dataset {name!r} is not prepared in {shlex.quote(data_dir)} "
                     "(--data_dir): a run without --dry_run downloads and prepares it there")


def default_data_dir() -> str:
  """Where TFDS datasets are when --data_dir is not given, and where `make data` prepares
  Fashion-MNIST: TFDS's own default, $TFDS_DATA_DIR else ~/tensorflow_datasets, read when
  used (TFDS reads it once, at its import)."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"),
                                                          "tensorflow_datasets")


def _tfds():
  # Imported lazily: tensorflow_datasets takes seconds to import and most runs never need it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _host_resolves(url: str) -> bool:
  try:
    socket.getaddrinfo(urllib.parse.urlparse(url).hostname, 443)
    return True
  except (OSError, UnicodeError):
    return False


def _builder(name: str, data_dir: str | None):
  tfds = _tfds()
  try:
    return tfds.builder(name, data_dir=data_dir or default_data_dir())
  except tfds.core.registered.DatasetNotFoundError:
    close = difflib.get_close_matches(name, tfds.list_builders(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise DataError(f"unknown TFDS dataset {name!r}{hint}; or use idx:DIR, csv:PATH "
                    "or synthetic") from None


def manual_dir_for(builder, name: str) -> str:
  """Each dataset's own manual_dir: mnist and fashion_mnist register the same four file
  names, so one shared directory would hand one dataset the other's files."""
  return os.path.join(builder.data_dir_root, "downloads", "manual", name)


def _prepare(builder, name: str, manual_dir: str | None) -> None:
  """Builds the dataset once; files in manual_dir are used without network."""
  if builder.is_prepared():
    return
  tfds = _tfds()
  manual_dir = manual_dir or manual_dir_for(builder, name)
  urls = builder.url_infos or {}
  missing = []
  for url, info in urls.items():
    path = os.path.join(manual_dir, info.filename or "")
    if not os.path.exists(path):
      missing.append(url)
    elif info.checksum and _sha256(path) != info.checksum:
      # Named before TFDS sees it: this file, shown not to be the registered one.
      raise DataError(f"{path} is not {name}'s {info.filename} (its sha256 differs from the "
                      f"one TFDS registers): it is another dataset's file or damaged; put "
                      f"{name}'s original file there")
  # Without network TFDS retries each download for minutes before failing: fail fast
  # when the files are not in manual_dir and the host does not even resolve.
  where = shlex.quote(str(builder.data_dir_root))
  if missing and not _host_resolves(missing[0]):
    files = ", ".join(sorted(urls[u].filename for u in missing))
    make = ("make data" if str(builder.data_dir_root) == default_data_dir()
            else f"make data DATA_DIR={where}")
    # `make data` prepares it from Debian's dataset-fashion-mnist (python -m trainer.prepare).
    fix = (f"run `{make}` (python -m trainer.prepare), "
           if name == "fashion_mnist" else "")
    raise DataError(f"TFDS dataset {name!r} is not prepared in {where} (--data_dir) and "
                    f"there is no network to download it: {fix}give --data_dir=DIR where it "
                    f"is prepared, or put {files} in {shlex.quote(str(manual_dir))}"
                    + ("" if fix else ", or use idx:DIR (docs/data.md)"))
  if READ_ONLY:
    raise NotPrepared(name, str(builder.data_dir_root))
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=config)
  except tfds.core.download.download_manager.NonMatchingChecksumError as e:
    raise DataError(f"TFDS dataset {name!r}: a downloaded file's checksum differs from the "
                    f"registered one ({str(e).splitlines()[0][:200]}); try again") from None
  except Exception as e:  # pylint: disable=broad-except
    # Download failures surface as many unrelated types (requests, OSError, AssertionError).
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise DataError(f"cannot prepare TFDS dataset {name!r}: {first}") from None


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _to_numpy(builder, split: str, image_size):
  """The split decoded into arrays allocated once (memory peaks at the decoded size, not
  twice it); images fitted to image_size when given."""
  tfds = _tfds()
  # Not batch_size=-1: under tfds.testing.mock_data that requests a batch of 2**63 and
  # aborts the process.
  ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
  if image_size:
    ds = ds.map(lambda x, y: (fit(x, image_size), y), num_parallel_calls=tf.data.AUTOTUNE)
  # The split's size is unknown under mock_data.
  n = builder.info.splits[split].num_examples if split in builder.info.splits else None
  return fill(tfds.as_numpy(ds.batch(8192)), n)


def class_names(name: str, data_dir: str | None) -> tuple[str, ...]:
  """The label feature's class names (e.g. Fashion-MNIST's "T-shirt/top"); () if none."""
  builder = _builder(name, data_dir)
  _, label = builder.info.supervised_keys
  names = tuple(getattr(builder.info.features[label], "names", None) or ())
  # TFDS names classes without their own names "0", "1", ...: the default anyway.
  return () if names == tuple(str(i) for i in range(len(names))) else names


def _checked_builder(name: str, data_dir: str | None, num_classes: int | None,
                     image_size):
  """The builder of an image-classification dataset, its (image, label) keys and classes."""
  builder = _builder(name, data_dir)
  features = builder.info.features
  image, label = builder.info.supervised_keys or (None, None)
  if not (image and label and getattr(features[label], "num_classes", None)
          and len(getattr(features[image], "shape", ())) == 3):
    raise DataError(f"TFDS dataset {name!r} is not an image-classification dataset "
                    "(needs supervised (image, class label) pairs)")
  if None in features[image].shape[:2] and not image_size:
    raise DataError(f"TFDS dataset {name!r} has images of varying size "
                    f"{features[image].shape}: pass --image_size=HxW to resize them")
  registered = features[label].num_classes
  if num_classes is not None and num_classes != registered:
    raise DataError(f"--num_classes={num_classes} but TFDS dataset {name!r} has "
                    f"{registered} classes; drop --num_classes")
  return builder, image, label, registered


def _split_names(builder) -> list[str]:
  # Under mock_data info.splits is empty; the standard names are tried then.
  return [s for s in _SPLITS if s in builder.info.splits] or ["train", "test"]


def prepare(name: str, data_dir: str | None, manual_dir: str | None,
            num_classes: int | None, image_size) -> None:
  """Checks the dataset and prepares it (once): its size is known only then."""
  builder, _, _, _ = _checked_builder(name, data_dir, num_classes, image_size)
  _prepare(builder, name, manual_dir)


def decoded_bytes(name: str, data_dir: str | None, image_size) -> int | None:
  """What holding every split decoded in memory takes; None when unknown (not prepared,
  or mock data)."""
  builder, image, _, _ = _checked_builder(name, data_dir, None, image_size)
  if not builder.is_prepared():
    return None
  h, w, c = builder.info.features[image].shape
  if image_size:
    h, w = image_size
  n = sum(builder.info.splits[s].num_examples for s in _split_names(builder)
          if s in builder.info.splits)
  return n * h * w * (c or 3)


def _cache_path(builder, split: str, image_size) -> str:
  size = f"_{image_size[0]}x{image_size[1]}" if image_size else ""
  return os.path.join(builder.data_dir, CACHE_DIR, f"{split}{size}.npz")


def _cache_key(builder, split: str, image_size) -> str:
  """What the cached arrays were decoded from: the dataset's version, the split's shard
  files and their sizes, the image size."""
  files = builder.info.splits[split].filepaths
  return json.dumps({"format": 1, "dataset": builder.info.full_name, "split": split,
                     "image_size": list(image_size) if image_size else None,
                     "shards": [[os.path.basename(f), tf.io.gfile.stat(f).length]
                                for f in files]})


def _decoded(builder, split: str, image_size):
  """The split's arrays, from the decoded cache when it is current, else decoded (and
  cached when small enough)."""
  if split not in builder.info.splits:  # mock data: nothing on disk to key a cache by
    return _to_numpy(builder, split, image_size)
  path, key = _cache_path(builder, split, image_size), _cache_key(builder, split, image_size)
  cached = decoded_cache.read(path, key)
  if cached is not None:
    logging.info("%s/%s: decoded images read from %s", builder.name, split, path)
    return cached
  images, labels = _to_numpy(builder, split, image_size)
  if images.nbytes <= CACHE_LIMIT and not READ_ONLY:
    decoded_cache.write(path, key, images, labels)
  return images, labels


def load(name: str, data_dir: str | None, manual_dir: str | None,
         num_classes: int | None, image_size=None) -> tuple[dict[str, Split], int]:
  """Returns the splits decoded into memory and the number of classes."""
  builder, _, _, registered = _checked_builder(name, data_dir, num_classes, image_size)
  _prepare(builder, name, manual_dir)
  splits = {}
  for split in _split_names(builder):
    images, labels = _decoded(builder, split, image_size)
    labels = check_labels(labels, registered, lambda i, s=split: f"example {i} of {name}/{s}")
    splits[split] = Split(images=images.astype(np.uint8, copy=False), labels=labels)
  return splits, registered


def streams(name: str, data_dir: str | None, manual_dir: str | None,
            num_classes: int | None, image_size=None) -> tuple[dict[str, StreamSplit], int]:
  """Returns the splits as streams over the prepared record shards, and the classes."""
  builder, image, label, registered = _checked_builder(name, data_dir, num_classes,
                                                       image_size)
  _prepare(builder, name, manual_dir)
  if builder.info.file_format.value != "tfrecord":
    raise DataError(f"TFDS dataset {name!r} is stored as {builder.info.file_format.value}; "
                    "streaming reads tfrecord shards: prepare it with the default format")
  h, w, c = builder.info.features[image].shape
  c = c or 3
  shape = (*(image_size or (h, w)), c)
  splits = {}
  for split in _split_names(builder):
    info = builder.info.splits[split]
    records = ShardRecords(info.filepaths, info.shard_lengths, builder.info.features,
                           image, label, c)
    splits[split] = StreamSplit(records, shape, labeled=True, resize=bool(image_size))
  return splits, registered
