"""What the data options' values mean, read without TensorFlow, so that the flags are
checked (and --help answered) before TensorFlow loads: --dataset's spec, --image_size,
--pipeline, --augment and --tta."""

from __future__ import annotations

import dataclasses
import re

from absl import logging


class DataError(ValueError):
  """Bad data or a bad data spec; the message names the file or value and the fix."""


_PREFIXES = ("tfds", "folder", "idx", "csv", "synthetic")
# --pipeline values: auto chooses in_memory or stream by the decoded size.
PIPELINES = ("auto", "in_memory", "tf_data", "stream")


def parse_spec(spec: str) -> tuple[str, str]:
  """Splits '--dataset' into (kind, argument); a bare name is a TFDS name."""
  spec = spec.strip()
  kind, sep, arg = spec.partition(":")
  if not sep:
    if spec == "synthetic":
      return "synthetic", ""
    kind, arg = "tfds", spec
  if kind not in _PREFIXES:
    raise DataError(f"unknown data source prefix {kind + ':'!r} in {spec!r}; use tfds:NAME "
                    "(or a TFDS name), folder:DIR, idx:DIR, csv:PATH or synthetic")
  if kind != "synthetic" and not arg:
    what = {"idx": "directory", "folder": "directory", "csv": "path"}.get(kind, "dataset")
    raise DataError(f"{spec!r} names no {what}")
  if kind == "tfds" and not re.fullmatch(r"[a-z0-9_]+(/[\w.-]+)?(:[\d.*]+)?", arg):
    raise DataError(f"{arg!r} is not a TFDS dataset name (lower-case, like mnist or "
                    "fashion_mnist)")
  return kind, arg


def parse_image_size(text: str | None) -> tuple[int, int] | None:
  """'64' or '64x48' (height x width) -> (64, 64) or (64, 48); None/'' -> None."""
  if not text:
    return None
  try:
    size = tuple(int(v) for v in text.lower().split("x"))
  except ValueError:
    size = ()
  if len(size) == 1:
    size = size * 2
  if len(size) != 2 or min(size) < 1:
    raise DataError(f"--image_size={text}: give H or HxW in pixels, e.g. 64 or 64x48")
  return size


# Random-resized crops keep at least this fraction of the image's area by default.
DEFAULT_CROP = 0.25
# Datasets of characters: a mirrored 2, 7 or 'b' is another class or no class at all.
NO_FLIP_DATASETS = ("mnist", "emnist", "kmnist", "binarized_mnist", "svhn_cropped", "csv")


@dataclasses.dataclass(frozen=True)
class Augment:
  """translate: max shift in pixels (--augment's crop=PIXELS too: padding by PIXELS and a
  random crop of the original size is the same draw); flip: random horizontal flip;
  alternating (with flip): each example flipped every other epoch instead, from a random
  first epoch (airbench's derandomized flips; the in-memory feed draws them); erase: probability of
  blanking a random rectangle (random erasing); resized_crop: random-resized crop, its
  smallest area fraction (None: not given; with --image_size it defaults to DEFAULT_CROP)."""
  translate: int = 0
  flip: bool = False
  alternating: bool = False
  erase: float = 0.0
  resized_crop: float | None = None

  @property
  def enabled(self) -> bool:
    return bool(self.translate or self.flip or self.erase or self.resized_crop)

  def with_default_crop(self) -> Augment:
    """Random-resized crops unless --augment set resized_crop (resized_crop=0: none)."""
    return (self if self.resized_crop is not None
            else dataclasses.replace(self, resized_crop=DEFAULT_CROP))

  @classmethod
  def parse(cls, text: str, dataset: str = "") -> Augment:
    """Parses e.g. 'translate=2,erase=0.25' or 'none'; refuses flip on character datasets."""
    kwargs = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
      if item == "none":
        continue
      key, sep, value = item.partition("=")
      if key in ("translate", "crop") and "translate" in kwargs:
        raise DataError(f"--augment={text}: crop and translate are the same augmentation "
                        "(pad, then crop at a random offset); give one")
      try:
        if key in ("translate", "crop"):
          kwargs["translate"] = int(value) if sep else (4 if key == "crop" else 2)
        elif key == "flip" and value in ("", "alternating"):
          kwargs["flip"], kwargs["alternating"] = True, bool(value)
        elif key == "erase":
          kwargs[key] = float(value) if sep else 0.5
        elif key == "resized_crop":
          kwargs[key] = float(value) if sep else DEFAULT_CROP
        else:
          raise ValueError
      except ValueError:
        raise DataError(f"--augment: cannot read {item!r}; use none or a comma list of "
                        "crop[=PIXELS], translate[=PIXELS], flip[=alternating], "
                        "erase[=PROBABILITY], "
                        "resized_crop[=MIN_AREA]") from None
    augment = cls(**kwargs)
    if (augment.translate < 0 or not 0.0 <= augment.erase <= 1.0
        or not 0.0 <= (augment.resized_crop or 0.0) < 1.0):
      raise DataError(f"--augment={text}: translate must be >= 0, erase in [0, 1] and "
                      "resized_crop in [0, 1) (0: none)")
    if augment.flip:
      check_flip(f"--augment={text}", dataset)
    return augment


def check_flip(flag: str, dataset: str) -> None:
  """Refuses mirrored images (flag: the flag that asks for them) on datasets of characters,
  where a mirrored 2, 7 or 'b' is another class or none; warns on idx:, which cannot tell."""
  base = dataset.removeprefix("tfds:").split(":")[0].split("/")[0]
  if base in NO_FLIP_DATASETS:
    raise DataError(f"{flag} flips images, but on {dataset} mirrored characters change "
                    "meaning; drop flip")
  if base == "idx":
    # IDX files hold digits and letters (MNIST, EMNIST, KMNIST) but also Fashion-MNIST:
    # the format cannot tell, so the user is told instead of refused.
    logging.warning("%s on %s: if these images are digits or letters (MNIST, EMNIST, "
                    "KMNIST), mirrored characters change meaning: drop flip; for clothes "
                    "(Fashion-MNIST) flips are fine", flag, dataset)


TTA_VIEWS = ("flip", "translate")


def parse_tta(text: str | None, dataset: str = "") -> tuple[str, ...]:
  """--tta: 'none', 'flip', 'translate' or 'flip,translate' -> the views' names, in
  TTA_VIEWS order; ValueError naming the flag on others, and on flips of characters."""
  items = {t.strip() for t in (text or "").split(",")} - {"", "none"}
  unknown = sorted(items - set(TTA_VIEWS))
  if unknown:
    raise ValueError(f"--tta={text}: cannot read {unknown[0]!r}; use none, flip, translate or "
                     "flip,translate")
  views = tuple(v for v in TTA_VIEWS if v in items)
  if "flip" in views:
    check_flip(f"--tta={text}", dataset)
  return views
