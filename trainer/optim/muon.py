"""Muon for conv filters, momentum SGD for everything else: airbench's optimizer split
(KellerJordan/cifar10-zoo, airbench94_muon.py).

keras.optimizers.Muon is not used as is: it sends every variable that is not 2-D, conv
filters included, to its AdamW branch, and its other branch is AdamW, not SGD. Its
Newton-Schulz iteration is the same as here (tests/trainer/test_muon.py checks them equal).
"""

from __future__ import annotations

import tensorflow as tf

from trainer.optim import fused_optimizers

# Keller Jordan's quintic coefficients, as in keras.optimizers.Muon's defaults.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalize(g: tf.Tensor, steps: int = NS_STEPS) -> tf.Tensor:
  """About U V^T of g's SVD, by a quintic Newton-Schulz iteration: the singular values
  come out near 1 (0.7-1.2 after 5 steps), not exactly 1."""
  a, b, c = NS_COEFFICIENTS
  tall = g.shape[0] > g.shape[1]  # work on the wide side: x x^T is the smaller product
  x = tf.transpose(g) if tall else g
  x = x / (tf.norm(x) + 1e-7)  # the spectral norm at most 1
  for _ in range(steps):
    xx = tf.matmul(x, x, transpose_b=True)
    x = a * x + tf.matmul(b * xx + c * tf.matmul(xx, xx), x)
  return tf.transpose(x) if tall else x


def normalized_filters(var_list) -> list:
  """The conv filters (Keras's are (height, width, in, out)) with no bias of their own:
  those a batch norm follows, whose scale is then free (resnet's and airbench's, not
  the CNN's or airbench's --whiten=0 stem)."""
  biased = {v.path.rpartition("/")[0] for v in var_list if v.path.endswith("/bias")}
  return [v for v in var_list
          if len(v.shape) == 4 and v.path.rpartition("/")[0] not in biased]


class MuonSGD(fused_optimizers.SGD):
  """Momentum SGD, except for the conv filters batch norm follows: per airbench's Muon
  step, the momentum of the gradient (Nesterov's with --nesterov, as airbench's) is
  orthogonalized (as a matrix of one row per output channel), the filter is rescaled to
  norm sqrt(out channels) (batch norm makes its scale free; decoupled weight decay on it
  is undone) and then stepped by muon_ratio x the scheduled rate. Both use --momentum's
  buffer and coefficient."""

  def __init__(self, *, muon_ratio: float, **kwargs):
    super().__init__(**kwargs)
    self.muon_ratio = muon_ratio

  def build(self, var_list):
    super().build(var_list)
    self._muon_indices = {self._get_variable_index(v) for v in normalized_filters(var_list)}

  def update_step(self, gradient, variable, learning_rate):
    if self._get_variable_index(variable) not in self._muon_indices:
      return super().update_step(gradient, variable, learning_rate)
    dtype = variable.dtype
    gradient = tf.cast(gradient, dtype)
    buffer = self.momentums[self._get_variable_index(variable)]
    momentum = tf.cast(self.momentum, dtype)
    self.assign(buffer, momentum * buffer + gradient)
    g = gradient + momentum * buffer if self.nesterov else buffer
    out = variable.shape[-1]
    # One row per output channel: (out, height * width * in), as torch's g.view(len(g), -1).
    rows = tf.transpose(tf.reshape(g, (-1, out)))
    update = tf.reshape(tf.transpose(orthogonalize(rows)), variable.shape)
    w = tf.convert_to_tensor(variable)
    w = w * (float(out) ** 0.5 / tf.norm(w))
    self.assign(variable, w - tf.cast(learning_rate, dtype) * self.muon_ratio * update)
