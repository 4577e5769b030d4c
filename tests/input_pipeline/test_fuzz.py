"""Arbitrary bytes give a valid dataset or the documented DataError: no other exception,
no hang (hypothesis' deadline bounds each example)."""

import gzip
import struct

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from input_pipeline import DataError
from input_pipeline.readers import idx, kaggle_csv

SETTINGS = settings(max_examples=300, deadline=2000,
                    suppress_health_check=[HealthCheck.too_slow])
MAGICS = [idx._IMAGES_MAGIC, idx._LABELS_MAGIC]


def _idx_outcome(data, magic):
  try:
    array = idx.parse_idx(idx.gunzip(data, "fuzz"), magic, "fuzz")
  except DataError:
    event("DataError")
    return None
  event("parsed")
  assert array.dtype == np.uint8 and array.ndim == magic & 0xFF
  return array


@SETTINGS
@given(st.binary(max_size=600), st.sampled_from(MAGICS))
def test_idx_arbitrary_bytes(data, magic):
  _idx_outcome(data, magic)


@SETTINGS
@given(st.data(), st.sampled_from(MAGICS), st.booleans())
def test_idx_plausible_headers(data, magic, compress):
  # A valid magic and random dimensions; the body fits them about half of the time.
  dims = data.draw(st.lists(st.integers(0, 12), min_size=magic & 0xFF, max_size=magic & 0xFF))
  size = int(np.prod(dims))
  body = data.draw(st.one_of(st.binary(min_size=size, max_size=size), st.binary(max_size=600)))
  raw = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + body
  array = _idx_outcome(gzip.compress(raw) if compress else raw, magic)
  if array is not None:
    assert array.shape == tuple(dims) and array.tobytes() == body


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([b"\x1f\x8b", b"\x1f\x8b\x08\x00"]))
def test_idx_broken_gzip(data, prefix):
  _idx_outcome(prefix + data, idx._LABELS_MAGIC)


def _csv_outcome(raw):
  try:
    split = kaggle_csv.parse(raw, "fuzz.csv", 10)
  except DataError:
    event("DataError")
    return None
  event("parsed")
  assert split.images.dtype == np.uint8 and split.images.ndim == 4 and len(split) > 0
  assert split.labels is None or ((split.labels >= 0) & (split.labels < 10)).all()
  return split


@SETTINGS
@given(st.binary(max_size=400))
def test_csv_arbitrary_bytes(raw):
  _csv_outcome(raw)


PIXEL = st.integers(0, 255).map(str)
ODD = st.one_of(st.integers(-300, 300).map(str), st.sampled_from(
    ["", " ", "x", "1.5", "0x1", "1e3", "99999999999999999999999", "\t7", "+3", "-0", "nan",
     '"5"', "#"]))


@SETTINGS
@given(st.data(), st.booleans(), st.integers(1, 3), st.sampled_from(["\n", "\r\n", "\r"]))
def test_csv_plausible_files(data, labeled, side, newline):
  # Mostly well-formed rows with some odd cells and lengths mixed in.
  ncols = side * side + labeled
  cell = st.one_of(PIXEL, PIXEL, PIXEL, ODD) if data.draw(st.booleans()) else PIXEL
  row = st.one_of(st.lists(cell, min_size=ncols, max_size=ncols),
                  st.lists(cell, min_size=0, max_size=ncols + 2))
  rows = data.draw(st.lists(row, min_size=0, max_size=5))
  header = (["label"] if labeled else []) + [f"pixel{i}" for i in range(side * side)]
  text = newline.join([",".join(header)] + [",".join(r) for r in rows]) + newline
  split = _csv_outcome(text.encode())
  if split is not None:
    assert split.images.shape[1:] == (side, side, 1)
