"""--search=NAME=DIST:ARGS of trainer.tune: a trainer flag and the distribution of its
values, parsed and checked against the flag, and drawn for a trial."""

from __future__ import annotations

import dataclasses
import itertools
import math

from absl import flags as absl_flags
import tensorflow as tf

from input_pipeline.readers import tfds_source
from trainer.options import command_line, config, declared
from trainer.process.errors import UsageError
from trainer.run import distribute, dry_run, planning, run_files
from trainer.run.child_runs import FLAGS_LOCK
from trainer.tuning import trial

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
  command_line.define_flags()
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
    if name not in command_line.OWN_FLAGS:
      raise UsageError(f"--search={spec}: --{name} is not a tapeloop flag (see python -m "
                      "trainer.main --help)")
    if name in seen or name in ("model_dir", "allow_changed_flags"):
      raise UsageError(f"--search={spec}: --{name} cannot be searched twice, nor model_dir")
    seen.add(name)
    kind = declared.BY_NAME[name].kind
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
      if not math.isfinite(high - low):  # inf, nan, 1e400, or a range beyond floats
        raise UsageError(f"--search={spec}: LOW and HIGH must be finite numbers, and "
                        "HIGH - LOW too")
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


# Beyond this many combinations of the searches' extreme values, each search's values are
# checked with the others at their first only.
_MAX_COMBINATIONS = 256


def check_trial_flags(base: list[str], searches: list[Search]) -> None:
  """Every value a trial may get, with the base flags, checked as a trial checks them:
  trainer.options.config's checks, a trial's own (trainer/tuning/trial.py: one process, a
  validation split), its strategy, its model built (on the CPU, for the shape checks) with its
  --freeze and --init_from checked on it (dry_run.check_model) and its plan on its data
  (trainer/run/planning.py), so that a value no trial could run with is refused before any
  trial starts. Each search's values first (the others at their first), then every combination
  of them; the data is read, the strategy made and the model built once per distinct flags of
  each."""
  first = {s.name: s.extremes()[0] for s in searches}
  combos = [{**first, s.name: value} for s in searches for value in s.extremes()]
  if math.prod(len(s.extremes()) for s in searches) <= _MAX_COMBINATIONS:
    combos += [dict(zip(first, values))
               for values in itertools.product(*(s.extremes() for s in searches))]
  loaded, strategies, built, checked = {}, {}, set(), set()
  for values in combos:
    key = tuple(values.items())
    if key in checked:
      continue
    checked.add(key)
    try:
      with FLAGS_LOCK:
        cfg = config.from_args([*base, *(f"--{k}={v}" for k, v in values.items())],
                               run_files.read_record)
      trial.check_config(cfg)
      strategy_key = (cfg.strategy, cfg.devices, cfg.cpu_devices)
      if strategy_key not in strategies:
        strategies[strategy_key] = _strategy(cfg)
      distribute.check_replicas(cfg, strategies[strategy_key])
      data_key = repr([getattr(cfg, name) for name in config.DATA_FLAGS])
      if data_key not in loaded:
        try:
          loaded[data_key] = run_files.load_data(cfg)
        except tfds_source.NotPrepared:  # a dry run's: the run would download it
          loaded[data_key] = None
      data = loaded[data_key]
      if data is None:
        continue
      model_key = repr([cfg.model, sorted(cfg.model_hparams.items()), data.info.image_shape,
                        data.info.num_classes, cfg.freeze, cfg.init_from])
      if model_key not in built:
        built.add(model_key)
        dry_run.check_model(cfg, data.info)  # its --freeze and --init_from too
      plan = planning.resolve(cfg, data, strategies[strategy_key])
      trial.check_eval_split(plan.eval_split)
    except (config.ConfigError, absl_flags.Error, ValueError) as e:  # DataError too
      raise UsageError(f"{_which(values, first, searches)}: "
                       f"{str(e).strip().splitlines()[0]}") from None


def _strategy(cfg: config.Config) -> tf.distribute.Strategy:
  """The trial's strategy as its process would make it (distribute.create_strategy), with
  its replicas; but this process's CPU is not split (its devices are fixed by now):
  --cpu_devices=N under --strategy=mirrored stands for its N CPU devices."""
  if (cfg.cpu_devices and cfg.strategy == "mirrored" and not cfg.devices
      and not tf.config.list_logical_devices("GPU")):
    cfg = dataclasses.replace(cfg, devices=tuple(f"/cpu:{i}" for i in range(cfg.cpu_devices)))
  return distribute.create_strategy(dataclasses.replace(cfg, cpu_devices=None,
                                                        intra_op_threads=None))


def _which(values: dict, first: dict, searches: list[Search]) -> str:
  """The trial values a problem comes with, as the message names them."""
  drawn = [s for s in searches if values[s.name] != first[s.name]]
  if len(drawn) > 1:
    return "a trial with " + " ".join(f"--{s.name}={values[s.name]}" for s in drawn)
  search = drawn[0] if drawn else searches[0]
  if len(search.extremes()) > 1 or len(searches) > 1:
    return f"--search={search.spec}: with --{search.name}={values[search.name]}"
  return "the trial flags"
