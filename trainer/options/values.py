"""How option values are checked, read and compared: the pieces trainer/options/declared.py's
declarations are made of: checks (each returns the problem, or None), readers, and the
forms in which values of one meaning are equal for the rerun rule (run_record.py)."""

from __future__ import annotations

import math
import os
import shlex

from input_pipeline.specs import parse_spec


def finite(value) -> str | None:
  """Every float option's first check: inf, -inf and nan (1e400 reads as inf) are no
  setting of any (a rate, a fraction, a factor, a size)."""
  return None if value is None or math.isfinite(value) else "must be a finite number"


def positive(value) -> str | None:
  return None if value is None or value > 0 else "must be positive"


def at_least_zero(value) -> str | None:
  return None if value >= 0 else "must be >= 0"


def within(low: float, high: float, *, low_open=False, high_open=True, note=""):
  """A check of low <= value < high (open/closed ends as given)."""
  def check(value):
    if value is None:
      return None
    ok = (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    text = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return None if ok else f"must be in {text}{note}"
  return check


def one_of(choices, joiner=", "):
  def check(value):
    return None if value is None or value in choices else (
        f"is unknown; use {joiner.join(choices)}")
  return check


def as_text(value) -> str:
  """A value as a flag is written: a list as its comma list (messages, logs)."""
  return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def short(value, figure: bool = False) -> str:
  """A value as a table shows it: a float to 4 significant digits (0.0002523, not
  0.00025226105656484053; a figure keeps its zeros: 1.000, 0.9100), anything else
  as_text."""
  if isinstance(value, float):
    return f"{value:#.4g}" if figure else f"{value:.4g}"
  return as_text(value)


def ints(name: str):
  """A comma list of positive integers as a tuple."""
  def parse(values):
    if not values:  # unset, or given empty (--lr_boundaries=)
      return None
    try:
      out = tuple(int(v) for v in values)
    except ValueError:
      raise ValueError(f"--{name}={','.join(values)}: expected comma-separated integers") from None
    if not out or min(out) < 1:
      raise ValueError(f"--{name}={','.join(values)}: values must be positive")
    return out
  return parse


def absolute_path(path: str | None) -> str | None:
  """A path as the user means it: a local one made absolute against the current directory
  (~ expanded, file:// dropped), a URL (gs://, ram://) as it is. How a run records paths,
  and how the scripts hand them to the trainers they start."""
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path.removeprefix("file://")))


def absolute_spec(spec: str) -> str:
  """--dataset with a local file or directory made absolute (idx:, csv:, folder:)."""
  kind, arg = parse_spec(spec)
  return f"{kind}:{absolute_path(arg)}" if kind in ("idx", "csv", "folder") else spec


def dataset_meaning(spec: str) -> tuple[str, str]:
  """--dataset as (kind, argument), a local path made absolute as this directory sees it
  (older records hold relative ones): mnist and tfds:mnist are one dataset."""
  kind, arg = parse_spec(spec)
  return kind, (absolute_path(arg) if kind in ("idx", "csv", "folder") else arg)


def class_ids(values) -> tuple[int, ...] | None:
  """--classes: distinct class ids (integers >= 0), at least two, as a tuple."""
  if not values:
    return None
  text = ",".join(map(str, values))
  try:
    out = tuple(int(v) for v in values)
  except ValueError:
    raise ValueError(f"--classes={text}: expected comma-separated class ids, e.g. 5,6,7"
                     ) from None
  if min(out) < 0 or len(set(out)) != len(out) or len(out) < 2:
    raise ValueError(f"--classes={text}: give two or more distinct class ids (0 or more)")
  return out


def int_list(values) -> tuple:
  """A list flag's values with integers compared as integers: 050 is 50."""
  return tuple(int(v) if str(v).strip().lstrip("-").isdigit() else str(v).strip()
               for v in values)


def flag_arg(name: str, value) -> str:
  """--name=value as one shell word (shlex-quoted as a whole, the value as as_text writes
  it): a printed command or error showing a flag with a path can be pasted into a shell."""
  return shlex.quote(f"--{name}={value if isinstance(value, str) else as_text(value)}")
