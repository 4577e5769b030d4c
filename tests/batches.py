"""Training a Trainer's step on a batch a test made, through the public loop and feed."""

import tensorflow as tf

from trainer.inner.feeds import TfDataFeed
from trainer.inner.step import TrainLoop


class OneBatch(TfDataFeed):
  """A feed whose train stream is one global batch over and over, prepared as the
  trainer's own feed prepares its batches (same seed, augmentation and targets)."""

  def __init__(self, trainer, images, labels):
    own = trainer.feed
    super().__init__(trainer.strategy, None, batch=len(images), seed=own.seed,
                     augment=own.augment, targets=own.targets)
    self.dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()

  def iterator(self, position):
    return iter(self.strategy.experimental_distribute_dataset(self.dataset))


def train_on(trainer, images, labels, steps=1):
  """`steps` training steps on the batch (images, labels); the steps' loss and accuracy."""
  feed = OneBatch(trainer, images, labels)
  TrainLoop(trainer.train_step, feed)(feed.iterator(0), steps)
  return trainer.train_step.metrics()
