"""Test setup: 4 logical CPU devices for distribution tests, no network."""

import socket

from trainer.process import tf_env

tf_env.apply()  # the process settings of tapeloop's entry points, before TensorFlow loads

import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

# Must run before TensorFlow initializes its devices, i.e. before any test touches TF.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 4)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Tests never touch the network: any name lookup or connection fails at once."""
  def refuse(*args, **kwargs):
    raise OSError("network access in a test")
  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  monkeypatch.setattr(socket.socket, "connect", refuse)

# Tests build MirroredStrategies over 2 and 4 devices in one process. Each would start its
# collective group and instance keys at 1 and collide with the others' collectives ("is
# joining a group with size 4, but that group has size 2"). TensorFlow's test hook
# `_collective_key_base` gives every strategy its own key range.
_mirrored_init = tf.distribute.MirroredStrategy.__init__


def _mirrored_with_own_keys(self, *args, **kwargs):
  type(self)._collective_key_base += 10_000
  _mirrored_init(self, *args, **kwargs)


tf.distribute.MirroredStrategy.__init__ = _mirrored_with_own_keys
