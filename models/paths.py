"""Each weight of a model by its path: the attribute names from the model down to it, as a
checkpoint's object graph names it ("blocks_0/conv1/kernel"). Paths, unlike Keras's
variable names, do not depend on how many layers a process built before (Keras numbers
its default layer names per process), so they match across runs and processes."""

from __future__ import annotations

import collections

import keras
import tensorflow as tf

# The classifier head every model names `logits`: what a changed number of classes changes.
HEAD = "logits"


def variable_paths(model: keras.Model) -> dict[str, keras.Variable]:
  """{path: weight} for every weight of `model`, in model.weights' order.

  Found breadth first through the object graph, as tf.train.Checkpoint names its entries
  (an object reachable twice keeps its first path); a leading underscore of an attribute
  (Keras's `_kernel`) is dropped."""
  weights = {id(w): w for w in model.weights}
  found: dict[int, str] = {}
  view = tf.train.TrackableView(model)
  queue, seen = collections.deque([(model, ())]), {id(model)}
  while queue:
    obj, path = queue.popleft()
    for name, child in view.children(obj).items():
      if id(child) in seen:
        continue
      seen.add(id(child))
      child_path = path + (name.lstrip("_"),)
      if id(child) in weights:
        found[id(child)] = "/".join(child_path)
      else:
        queue.append((child, child_path))
  unnamed = [w.path for w in model.weights if id(w) not in found]
  if unnamed:
    raise ValueError(f"{type(model).__name__}'s weights {', '.join(unnamed)} are not in its "
                     "checkpoint's object graph")
  return {found[id(w)]: w for w in model.weights}


def checkpoint_path(key: str, root: str = "model") -> str | None:
  """The path of a checkpoint entry's key ("model/blocks_0/conv1/_kernel/.ATTRIBUTES/
  VARIABLE_VALUE" -> "blocks_0/conv1/kernel"); None for an entry outside `root` or not a
  variable's value."""
  parts = key.split("/")
  if parts[0] != root or parts[-2:] != [".ATTRIBUTES", "VARIABLE_VALUE"]:
    return None
  return "/".join(p.lstrip("_") for p in parts[1:-2])


def is_head(path: str) -> bool:
  return path.split("/", 1)[0] == HEAD
