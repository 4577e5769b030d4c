"""Test setup: 4 logical CPU devices for distribution tests, no network."""

import socket

import pytest
import tensorflow as tf

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
