import gzip
import hashlib
import io
import os
import types

import pytest

from input_pipeline import DataError
from input_pipeline.readers import prepare


def _upstream_gz(name, payload, mtime):
  """A gzip file as upstream made it: the original name and mtime in the header."""
  buf = io.BytesIO()
  with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, mtime=mtime) as f:
    f.write(payload)
  return buf.getvalue()


def _debian_strip(data):
  """What Debian's build did: drop FNAME and its name from the header."""
  end = data.index(b"\0", 10) + 1
  return data[:3] + bytes([data[3] & ~0x08]) + data[4:10] + data[end:]


def _fake_registry(tmp_path, names):
  """Upstream-style files, their Debian-stripped copies, and TFDS-style url_infos."""
  src = tmp_path / "debian"
  src.mkdir()
  infos = {}
  for name in names:
    mtime = prepare._MTIMES[name.split("-")[0]]
    upstream = _upstream_gz(name, os.urandom(300), mtime)
    (src / f"{name}.gz").write_bytes(_debian_strip(upstream))
    infos[f"http://example/{name}.gz"] = types.SimpleNamespace(
        filename=f"{name}.gz", checksum=hashlib.sha256(upstream).hexdigest())
  return src, infos


NAMES = ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def test_restores_upstream_bytes_and_places_them(tmp_path):
  src, infos = _fake_registry(tmp_path, NAMES)
  manual = tmp_path / "manual"
  placed = prepare.place_manual_files(str(src), str(manual), infos)
  assert sorted(os.listdir(manual)) == sorted(f"{n}.gz" for n in NAMES) and len(placed) == 2
  for info in infos.values():
    data = (manual / info.filename).read_bytes()
    assert hashlib.sha256(data).hexdigest() == info.checksum
    gzip.decompress(data)  # still a valid gzip


def test_refuses_a_checksum_mismatch_and_leaves_nothing(tmp_path):
  src, infos = _fake_registry(tmp_path, NAMES)
  (src / "t10k-labels-idx1-ubyte.gz").write_bytes(
      _debian_strip(_upstream_gz("t10k-labels-idx1-ubyte", b"other", 1)))
  manual = tmp_path / "manual"
  with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: after restoring .* sha256"):
    prepare.place_manual_files(str(src), str(manual), infos)
  assert "t10k-labels-idx1-ubyte.gz" not in os.listdir(manual)
  assert not [n for n in os.listdir(manual) if n.startswith(".tmp")]


def test_missing_files_say_how_to_get_them(tmp_path):
  _, infos = _fake_registry(tmp_path, NAMES)
  with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
    prepare.place_manual_files(str(tmp_path / "nowhere"), str(tmp_path / "m"), infos)


def test_not_a_debian_gzip(tmp_path):
  with pytest.raises(DataError, match="not a gzip"):
    prepare.restore_gzip_header(b"plain", "x", 0)
  with pytest.raises(DataError, match="already has optional"):
    prepare.restore_gzip_header(_upstream_gz("x", b"a", 0), "x", 0)


def test_registered_fashion_mnist_files_are_the_four_idx_files():
  import tensorflow_datasets as tfds
  names = sorted(i.filename for i in tfds.builder_cls("fashion_mnist").url_infos.values())
  assert names == sorted(f"{p}-{k}.gz" for p, k in [
      ("t10k", "images-idx3-ubyte"), ("t10k", "labels-idx1-ubyte"),
      ("train", "images-idx3-ubyte"), ("train", "labels-idx1-ubyte")])


def test_only_fashion_mnist(tmp_path):
  with pytest.raises(DataError, match="only fashion_mnist"):
    prepare.prepare("mnist", str(tmp_path), str(tmp_path))


def test_tfds_prepares_quietly(tmp_path, capfd):
  # TFDS prints about a hundred lines of progress bars, banners and log lines while it
  # prepares a dataset; prepare() prints one line per split instead.
  from absl import logging  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.testing import DummyMnist  # pylint: disable=g-import-not-at-top
  builder = DummyMnist(data_dir=str(tmp_path))
  level = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)
  try:
    capfd.readouterr()
    with prepare._quiet_tfds():
      builder.download_and_prepare()
    out, err = capfd.readouterr()
  finally:
    logging.set_verbosity(level)
  assert builder.is_prepared()
  assert out + err == "", (out + err)[:2000]


def test_the_last_line_names_data_dir_only_where_it_is_not_the_default(tmp_path, monkeypatch,
                                                                      capsys):
  from absl import flags  # pylint: disable=g-import-not-at-top
  default, elsewhere = tmp_path / "tfds", tmp_path / "my data"
  monkeypatch.setenv("TFDS_DATA_DIR", str(default))
  monkeypatch.setattr(prepare, "prepare", lambda dataset, data_dir, source: data_dir)
  lines = []
  for data_dir in (default, elsewhere):
    own = flags.FlagValues()
    prepare.define_flags(own)
    own(["prepare", f"--data_dir={data_dir}"])
    prepare.main([], own)
    lines.append(capsys.readouterr().out.strip())
  assert lines[0] == (f"fashion_mnist is ready in {default}; train with "
                      "--dataset=fashion_mnist")
  assert lines[1].endswith(f"--dataset=fashion_mnist '--data_dir={elsewhere}'")
