"""Each weight of a model by its path: the attribute names from the model down to it, as a
checkpoint's object graph names it ("blocks_0/conv1/kernel"). Paths, unlike Keras's
variable names, do not depend on how many layers a process built before (Keras numbers
its default layer names per process), so they match across runs and processes."""

from __future__ import annotations

import collections

import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

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


def checkpoint_keys(reader, root: str = "model") -> dict[str, str] | None:
  """{path: checkpoint key} of every variable under the checkpoint's `root` object (the
  model), by the object graph the checkpoint saved; None when it has no `root`.

  A key names a variable by its first path from the checkpoint's root, breadth first,
  which need not pass through the model: a variable the optimizer also holds
  (optimizer/_trainable_variables/5) gets that shorter path once the model is deeper. The
  graph's named edges from the model down give every variable its path here all the same."""
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  start = next((c.node_id for c in graph.nodes[0].children if c.local_name == root), None)
  if start is None:
    return None
  keys: dict[str, str] = {}
  queue, seen = collections.deque([(start, ())]), {start}
  while queue:
    node, path = queue.popleft()
    for attribute in graph.nodes[node].attributes:
      if attribute.name == "VARIABLE_VALUE":
        keys["/".join(path)] = attribute.checkpoint_key
    for child in graph.nodes[node].children:
      if child.node_id not in seen:
        seen.add(child.node_id)
        queue.append((child.node_id, path + (child.local_name.lstrip("_"),)))
  return keys


def is_head(path: str) -> bool:
  return path.split("/", 1)[0] == HEAD
