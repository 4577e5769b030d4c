"""--search=NAME=DIST:ARGS of trainer.tune: a trainer flag and the distribution of its
values, parsed and checked against the flag, and drawn for a trial."""

from __future__ import annotations

import dataclasses

from absl import flags as absl_flags

from trainer import config, options
from trainer import flags as tl_flags
from trainer.child_runs import FLAGS_LOCK
from trainer.errors import UsageError

DISTRIBUTIONS = ("uniform", "loguniform", "int", "logint", "choice")


@dataclasses.dataclass(frozen=True)
class Search:
  """One --search=NAME=DIST:ARGS: a trainer flag and the distribution of its values."""
  name: str
  dist: str
  low: float | None = None
  high: float | None = None
  choices: tuple[str, ...] = ()
  spec: str = ""  # as given, for messages

  def suggest(self, trial) -> str:
    """The trial's value of the flag, as flag text."""
    if self.dist == "choice":
      return trial.suggest_categorical(self.name, list(self.choices))
    if self.dist in ("int", "logint"):
      return str(trial.suggest_int(self.name, int(self.low), int(self.high),
                                   log=self.dist == "logint"))
    return _number(trial.suggest_float(self.name, self.low, self.high,
                                       log=self.dist == "loguniform"))

  def grid(self) -> list[str]:
    if self.dist == "choice":
      return list(self.choices)
    if self.dist == "int":
      return [str(v) for v in range(int(self.low), int(self.high) + 1)]
    raise UsageError(f"--search={self.spec}: --sampler=grid takes choice: or int: values")

  def extremes(self) -> list[str]:
    """The values that bound what a trial may get: each choice, or both ends."""
    if self.dist == "choice":
      return list(self.choices)
    if self.dist in ("int", "logint"):
      return [str(int(self.low)), str(int(self.high))]
    return [_number(self.low), _number(self.high)]


def _number(value: float) -> str:
  return repr(float(value)) if not float(value).is_integer() else str(float(value))


def parse_search(specs: list[str]) -> list[Search]:
  """--search values -> Search objects; one line naming the problem for a bad one."""
  tl_flags.define_flags()
  out, seen = [], set()
  for spec in specs:
    name, sep, rest = spec.partition("=")
    name = name.strip().lstrip("-")
    dist, colon, args = rest.partition(":")
    usage = (f"--search={spec}: expected NAME=DIST:ARGS, DIST one of "
             f"{', '.join(DISTRIBUTIONS)} (e.g. learning_rate=loguniform:1e-4:1e-2, "
             "hidden_units=choice:50|500)")
    if not sep or not colon or dist not in DISTRIBUTIONS or not args:
      raise UsageError(usage)
    if name not in tl_flags.OWN_FLAGS:
      raise UsageError(f"--search={spec}: --{name} is not a tapeloop flag (see python -m "
                      "trainer.main --help)")
    if name in seen or name in ("model_dir", "allow_changed_flags"):
      raise UsageError(f"--search={spec}: --{name} cannot be searched twice, nor model_dir")
    seen.add(name)
    kind = options.BY_NAME[name].kind
    if dist == "choice":
      choices = tuple(c.strip() for c in args.split("|") if c.strip())
      if not choices:
        raise UsageError(usage)
      search = Search(name, dist, choices=choices, spec=spec)
    else:
      if kind not in (int, float) or (kind is int and dist in ("uniform", "loguniform")):
        want = "int:/logint:/choice:" if kind is int else "choice:"
        raise UsageError(f"--search={spec}: --{name} takes {want} values")
      bounds = args.split(":")
      try:
        low, high = (float(b) for b in bounds)
      except ValueError:
        raise UsageError(usage) from None
      if len(bounds) != 2 or not low < high or (dist.startswith("log") and low <= 0):
        raise UsageError(f"--search={spec}: give LOW:HIGH with LOW < HIGH"
                        + (" and LOW > 0" if dist.startswith("log") else ""))
      if dist in ("int", "logint") and not (low.is_integer() and high.is_integer()):
        raise UsageError(f"--search={spec}: int bounds must be whole numbers")
      search = Search(name, dist, low, high, spec=spec)
    for value in search.extremes():
      try:
        absl_flags.FLAGS[name].parser.parse(value)
      except (ValueError, TypeError) as e:
        raise UsageError(f"--search={spec}: {value!r} is not a valid --{name}: {e}") from None
    out.append(search)
  if not out:
    raise UsageError("give at least one --search=NAME=DIST:ARGS")
  return out


def check_trial_flags(base: list[str], searches: list[Search]) -> None:
  """Every value a trial may get, with the base flags, as trainer.main checks them: a
  value no trial could run with is refused before any trial starts."""
  first = {s.name: s.extremes()[0] for s in searches}
  for search in searches:
    for value in search.extremes():
      values = {**first, search.name: value}
      try:
        with FLAGS_LOCK:
          config.from_args([*base, *(f"--{k}={v}" for k, v in values.items())])
      except (config.ConfigError, absl_flags.Error, ValueError) as e:
        where = f"--search={search.spec}: with --{search.name}={value}" if len(
            search.extremes()) > 1 or len(searches) > 1 else "the trial flags"
        raise UsageError(f"{where}: {str(e).strip().splitlines()[0]}") from None
