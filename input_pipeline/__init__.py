"""Where examples come from (sources) and how they are batched (pipeline).

The names are loaded on first use: importing a TensorFlow-free part (input_pipeline.specs,
which the flags are checked with) must not load TensorFlow through this package."""

import importlib

_HOMES = {"Data": "data", "DatasetInfo": "data", "Split": "data", "DataError": "specs",
          "Augment": "specs", "PIPELINES": "specs", "eval_dataset": "pipeline",
          "train_dataset": "pipeline", "load": "sources"}

__all__ = sorted(_HOMES)


def __getattr__(name):
  if name not in _HOMES:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
