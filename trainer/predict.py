"""Class predictions from an exported model, as a Kaggle Digit Recognizer submission.

    python -m trainer.predict --model_dir=DIR --dataset=csv:test.csv --output=submission.csv
"""

import os

from trainer import tf_env

tf_env.apply()  # before anything imports TensorFlow

from absl import flags, logging  # pylint: disable=g-import-not-at-top

from trainer import cli  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS


HELP_GROUPS = {"Prediction": ["model_dir", "dataset", "output", "batch_size"]}


def define_flags() -> None:
  # Defined only when run as a program: importing must not clash with trainer's flags.
  flags.DEFINE_string("model_dir", None, "The trained run (its export/ is used).")
  flags.DEFINE_string("dataset", None, "Images to classify: csv:test.csv, idx:DIR, ... "
                      "(the test split).")
  flags.DEFINE_string("output", "submission.csv", "Where to write ImageId,Label.")
  flags.DEFINE_integer("batch_size", 1024, "Images per prediction call.")


def load_serving(export_dir: str):
  """The export's uint8 signature, its image shape and its number of classes."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serve = tf.saved_model.load(export_dir).signatures["serving_default"]
  shape = tuple(serve.structured_input_signature[1]["images"].shape[1:])
  return serve, shape, serve.structured_outputs["probabilities"].shape[-1]


def check_data(split, image_shape, num_classes) -> None:
  """An export labels only images of its own shape: refuse others, and labeled data with
  classes the model does not know (an unlabeled CSV's class count is unknown)."""
  if tuple(split.images.shape[1:]) != tuple(image_shape):
    raise cli.UsageError(f"--dataset={FLAGS.dataset} has images of shape "
                         f"{'x'.join(map(str, split.images.shape[1:]))} but the model in "
                         f"{FLAGS.model_dir} takes {'x'.join(map(str, image_shape))}: "
                         "predict with a model trained on this kind of data")
  if split.labels is not None and len(split.labels) and split.labels.max() >= num_classes:
    raise cli.UsageError(f"--dataset={FLAGS.dataset} has labels up to {split.labels.max()} "
                         f"but the model in {FLAGS.model_dir} predicts {num_classes} classes: "
                         "predict with a model trained on these classes")


def predict_classes(serve, images, batch_size: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  parts = [serve(images=tf.constant(images[i:i + batch_size]))["classes"].numpy()
           for i in range(0, len(images), batch_size)]
  return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def main(argv):
  del argv
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from trainer import export  # pylint: disable=g-import-not-at-top
  if not FLAGS.model_dir or not FLAGS.dataset:
    raise cli.UsageError("--model_dir and --dataset are required")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  export_dir = os.path.join(FLAGS.model_dir, "export")
  if not tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
    raise cli.UsageError(f"no exported model in {export_dir}: train first with "
                       f"python -m trainer.main --model_dir={FLAGS.model_dir}")
  serve, image_shape, num_classes = load_serving(export_dir)
  # A folder's photos come in any size: fitted to the export's, as training fitted them.
  size = image_shape[:2] if FLAGS.dataset.startswith("folder:") else None
  data = input_pipeline.load(FLAGS.dataset, image_size=size)
  split = data.splits.get("test")
  if split is None:
    raise cli.UsageError(f"--dataset={FLAGS.dataset} has no test split to predict")
  check_data(split, image_shape, num_classes)
  classes = predict_classes(serve, split.images, FLAGS.batch_size)
  export.write_submission(FLAGS.output, classes)
  logging.info("wrote %d predictions to %s", len(classes), FLAGS.output)
  print(f"wrote {len(classes)} predictions to {FLAGS.output}")


def run():
  """Console script entry point (tapeloop-predict)."""
  define_flags()
  cli.run_app(main, "python -m trainer.predict --model_dir=DIR --dataset=csv:test.csv "
              "[--output=submission.csv]", HELP_GROUPS)


if __name__ == "__main__":
  run()
