"""scripts/profile_step.py: the op categories, read from a real profile of a conv step."""

import glob

import pytest
import tensorflow as tf

from paths import load_script


@pytest.fixture(scope="module")
def profile_step():
  return load_script("profile_step")


def test_op_types_fall_into_convolutions_their_gradients_and_the_rest(profile_step):
  assert profile_step.category("_MklNativeFusedConv2D") == "convolutions"
  assert profile_step.category("Conv2DBackpropFilter") == "conv_gradients"
  assert profile_step.category("_MklNativeConv2DBackpropInput") == "conv_gradients"
  assert profile_step.category("MatMul") == "convolutions"  # an XLA program's kernel
  assert profile_step.category("_MklNativeMaxPoolGrad") == "rest"


def test_a_real_profile_of_a_conv_step_is_read_by_op_type(profile_step, tmp_path):
  kernel = tf.Variable(tf.random.normal([3, 3, 1, 8]))
  images = tf.random.normal([16, 12, 12, 1])

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.nn.relu(tf.nn.conv2d(images, kernel, 1, "SAME")))
    kernel.assign_sub(0.01 * tape.gradient(loss, kernel))
  step()
  tf.profiler.experimental.start(str(tmp_path))
  for _ in range(3):
    step()
  tf.profiler.experimental.stop()
  (path,) = glob.glob(str(tmp_path / "**" / "*.xplane.pb"), recursive=True)
  times = profile_step.op_times(path)
  categories = {profile_step.category(op) for op, seconds in times.items() if seconds > 0}
  assert {"convolutions", "conv_gradients", "rest"} <= categories, times
  assert not any(name.startswith(("ExecutorState", "ThunkExecutor")) for name in times)


def test_a_kernel_nested_in_another_counts_once(profile_step, tmp_path):
  # An XLA `call` contains its kernels on the same thread: each counts its own time only.
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  plane = space.planes.add(name="/host:CPU")
  for i, name in enumerate(["ThunkExecutor::Execute", "call.3", "MatMul.27", "add_fusion"], 1):
    plane.event_metadata[i].id, plane.event_metadata[i].name = i, name
  line = plane.lines.add(name="tf_numa_-1_Eigen/1")
  for metadata, offset, duration in [(1, 0, 100), (2, 10, 50), (3, 20, 30), (4, 70, 20)]:
    line.events.add(metadata_id=metadata, offset_ps=offset * 10**12, duration_ps=duration * 10**12)
  path = tmp_path / "t.xplane.pb"
  path.write_bytes(space.SerializeToString())
  assert profile_step.op_times(str(path)) == {"call": 20.0, "MatMul": 30.0, "add_fusion": 20.0}
