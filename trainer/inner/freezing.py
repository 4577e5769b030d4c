"""--freeze: which of a model's variables training holds fixed, and the switch between the
frozen stage and the whole network (--unfreeze_at_epoch).

Variables are chosen by their checkpoint path (models.paths). A frozen variable has
trainable=False, so the step computes no gradient for it and the optimizer, built over the
trainable ones, holds no slot for it. A layer whose weights are all frozen is made
non-trainable itself: Keras's BatchNormalization then normalizes with its moving statistics
and leaves them as they are (its rule for a layer with trainable=False)."""

from __future__ import annotations

import re
import shlex

import keras
import numpy as np

from models import paths
from trainer.process.errors import ConfigError

BACKBONE = "backbone"  # --freeze's name for every variable but the head


def _parameters(variables) -> int:
  return int(sum(np.prod(v.shape) for v in variables))


class Freezing:
  """What `--freeze=pattern` holds fixed in `model` (ConfigError when it matches no trainable
  variable, or the head); `freeze()` and `unfreeze()` switch between the stages, and
  `frozen` says which one the model is in. Unfreezing gives every layer and variable the
  trainable flag it had before (a weight the model keeps fixed itself stays fixed)."""

  def __init__(self, model: keras.Model, pattern: str):
    self.model, self.pattern, self.frozen = model, pattern, False
    by_path = paths.variable_paths(model)
    if pattern == BACKBONE:
      matched = {p for p in by_path if not paths.is_head(p)}
    else:
      regex = re.compile(pattern)
      matched = {p for p in by_path if regex.search(p)}
    flag = f"--freeze={shlex.quote(pattern)}"
    head = sorted(p for p in matched if paths.is_head(p))
    if head:
      raise ConfigError(f"{flag} matches the classifier head ({', '.join(head)}), which must "
                        "train: narrow the pattern, or use --freeze=backbone")
    self.variables = [v for p, v in by_path.items() if p in matched and v.trainable]
    if not self.variables:
      trainable = [p for p, v in by_path.items() if v.trainable]
      raise ConfigError(f"{flag} matches no trainable variable (the model's paths are "
                        f"such as {', '.join(trainable[:3])}): give --freeze=backbone or a "
                        "pattern of these paths")
    frozen_ids = {id(by_path[p]) for p in matched}
    # Layers with weights, all of them matched (a block, its convolution, its batch norm).
    self.layers = [layer for layer in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
                   if layer.weights and all(id(w) in frozen_ids for w in layer.weights)]
    # Parents before their children (_flatten_layers' order): restoring them in this order
    # gives each sublayer its own flag back after its parent's setter set it.
    self._layer_flags = [(layer, layer.trainable)
                         for layer in model._flatten_layers(include_self=False)]  # pylint: disable=protected-access
    self._variable_flags = [(v, v.trainable) for v in model.weights]

  def freeze(self) -> None:
    for layer in self.layers:
      layer.trainable = False
    for variable in self.variables:
      variable.trainable = False
    self.frozen = True

  def unfreeze(self) -> None:
    for layer, trainable in self._layer_flags:
      layer.trainable = trainable
    for variable, trainable in self._variable_flags:
      variable.trainable = trainable
    self.frozen = False

  def describe(self) -> str:
    """How much is frozen and how much trains, for the log."""
    trainable = self.model.trainable_variables
    norms = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in self.layers)
    return (f"--freeze={shlex.quote(self.pattern)}: {len(self.variables)} variables "
            f"({_parameters(self.variables):,} parameters) frozen, {len(trainable)} "
            f"({_parameters(trainable):,} parameters) train"
            + (f"; {norms} batch norm layers use their moving statistics" if norms else ""))
