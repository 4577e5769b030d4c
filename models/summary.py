"""A model's layers, output shapes and parameter counts (like `model.summary()`, which in
Keras 3 shows "?" for the shapes of a subclassed model's layers)."""

from __future__ import annotations

import keras


def _leaves(layer):
  children = list(layer._flatten_layers(include_self=False, recursive=False))  # pylint: disable=protected-access
  if not children:
    return [layer]
  return [leaf for child in children for leaf in _leaves(child)]


def table(model) -> list[tuple[str, str, str, int]]:
  """(layer name, class, output shape without the batch, parameters) per leaf layer, in
  call order, from one forward pass of a single zero image."""
  # A functional network's InputLayer is never called: it only names the input.
  leaves = [l for l in _leaves(model)
            if l is not model and not isinstance(l, keras.layers.InputLayer)]
  shapes, order = {}, []

  def recorder(layer, call):
    def wrapped(*args, **kwargs):
      out = call(*args, **kwargs)
      if id(layer) not in shapes:
        order.append(layer)
      shapes[id(layer)] = tuple(out.shape[1:])
      return out
    return wrapped

  for layer in leaves:
    layer.call = recorder(layer, layer.call)  # an instance attribute shadows the method
  try:
    model(keras.ops.zeros((1,) + tuple(model.image_shape)), training=False)
  finally:
    for layer in leaves:
      del layer.call
  order += [l for l in leaves if id(l) not in shapes]  # layers the call did not reach
  rows = [(l.name, type(l).__name__, str(shapes.get(id(l), "?")).replace(",)", ")"),
           int(sum(w.numpy().size for w in l.weights))) for l in order]
  return rows


def console(rows) -> str:
  widths = [max(len(str(r[i])) for r in rows + [("layer", "type", "output shape", "parameters")])
            for i in range(3)]
  lines = [f"  {'layer':<{widths[0]}}  {'type':<{widths[1]}}  {'output shape':<{widths[2]}}  "
           "parameters"]
  for name, kind, shape, params in rows:
    lines.append(f"  {name:<{widths[0]}}  {kind:<{widths[1]}}  {shape:<{widths[2]}}  {params:>10,}")
  lines.append(f"  total: {sum(r[3] for r in rows):,} parameters")
  return "\n".join(lines)


def markdown(rows) -> str:
  lines = ["| layer | type | output shape | parameters |", "|---|---|---|---:|"]
  lines += [f"| {n} | {k} | {s} | {p:,} |" for n, k, s, p in rows]
  lines.append(f"| **total** | | | **{sum(r[3] for r in rows):,}** |")
  return "\n".join(lines)
