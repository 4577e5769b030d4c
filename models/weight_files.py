"""What a Keras weights file holds, by variable path (models.paths): a Keras 3 `.weights.h5`
file, or the legacy `.h5` layout keras.applications publishes its ImageNet weights in."""

from __future__ import annotations

import dataclasses

import h5py
import keras
import numpy as np
from keras.src.legacy.saving import legacy_h5_format
from keras.src.saving import saving_lib

from models import paths

# pylint: disable=protected-access
# Keras's own saving walk and legacy weight order, which say where each variable is in a file:
# the pairing is exact only with them.


class NoBackbone(ValueError):
  """A legacy .h5 file for a model without a functional network to load it into."""


@dataclasses.dataclass
class WeightFile:
  """values: by variable path; names: each value's entry in the file; unused: the file's
  entries no variable took; legacy: the keras.applications layout; note: how its layers
  were paired where not by name."""
  values: dict[str, np.ndarray]
  names: dict[str, str]
  unused: list[str]
  legacy: bool = False
  note: str = ""


def read(path: str, model: keras.Model) -> WeightFile:
  """The file at `path` matched to `model`'s variables; OSError for a file that is not
  HDF5, NoBackbone for a legacy file and a model it cannot go into."""
  with h5py.File(path, "r") as f:
    if any(name.startswith("layer_names") for name in f.attrs) or "model_weights" in f:
      return _legacy_h5(f, model)
    return _keras_weights(f, model)


def _keras_weights(f: h5py.File, model: keras.Model) -> WeightFile:
  """A Keras 3 weights file: its entries are where saving_lib's walk over the model's
  attributes puts each variable; that walk, recorded in memory, pairs them exactly."""
  store = saving_lib.NpzIOStore("unwritten", mode="w")  # holds what it is given in .contents
  saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="",
                         visited_saveables=set())
  path_of = {id(w): p for p, w in paths.variable_paths(model).items()}
  values, names = {}, {}
  for inner, stored in store.contents.items():
    group = "vars" if inner == "__root__" else f"{inner}/vars"
    for index, variable in stored.items():
      key = f"{group}/{index}"
      path = path_of.get(id(variable))
      if path is not None and key in f:
        values[path], names[path] = np.asarray(f[key]), key
  taken = set(names.values())
  unused = []
  f.visititems(lambda key, item: unused.append(key)
               if isinstance(item, h5py.Dataset) and key not in taken else None)
  return WeightFile(values, names, unused)


def _legacy_h5(f: h5py.File, model: keras.Model) -> WeightFile:
  """keras.applications' published layout: the file's layers by name, each one's weights in
  its weight_names' order, into the same-named layers of the model's functional `backbone`
  (each layer's weights in the order Keras's legacy writer lists them). A file none of
  whose names the network has, with as many layers holding weights, pairs them in order,
  as Keras's own load_weights does (keras.applications renamed some networks' layers in
  Keras 3, MobileNetV3's among them, and loads their published files so)."""
  network = getattr(model, "backbone", None)
  if network is None and getattr(model, "_is_graph_network", False):
    network = model  # a functional or Sequential model itself
  if not isinstance(network, keras.Model):
    raise NoBackbone(type(model).__name__)
  group = f["model_weights"] if "model_weights" in f else f
  stored = [(name, legacy_h5_format.load_attributes_from_hdf5_group(group[name], "weight_names"))
            for name in legacy_h5_format.load_attributes_from_hdf5_group(group, "layer_names")]
  stored = [(name, weights) for name, weights in stored if weights]
  layers = {layer.name: layer for layer in network.layers}
  weighted = [layer for layer in network.layers if legacy_order(layer)]
  in_order = (not any(name in layers for name, _ in stored) and len(stored) == len(weighted))
  pairs = (zip(stored, weighted) if in_order
           else [((name, weights), layers.get(name)) for name, weights in stored])
  path_of = {id(w): p for p, w in paths.variable_paths(model).items()}
  values, names, unused = {}, {}, []
  for (layer_name, weight_names), layer in pairs:
    weights = legacy_order(layer) if layer is not None else []
    for i, weight_name in enumerate(weight_names):
      name = f"{layer_name}/{weight_name}"
      path = path_of.get(id(weights[i])) if i < len(weights) else None
      if path is None:
        unused.append(name)
      else:
        values[path], names[path] = np.asarray(group[layer_name][weight_name]), name
  return WeightFile(values, names, unused, legacy=True,
                    note=" (its layers' names differ: paired in order)" if in_order else "")


def legacy_order(layer: keras.layers.Layer) -> list:
  """A layer's weights in the order Keras's legacy writer lists them, its trainable ones
  first, as they were created: Keras's own order (legacy_h5_format._legacy_weights) reads
  the current trainability, which --freeze changes (a frozen gamma would come after beta)."""
  created_trainable = {id(v) for sub in layer._flatten_layers()
                       for v in sub._trainable_variables}
  weights = layer.weights
  return ([w for w in weights if id(w) in created_trainable]
          + [w for w in weights if id(w) not in created_trainable])
