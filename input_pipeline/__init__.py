"""Where examples come from (sources) and how they are batched (pipeline)."""

from input_pipeline.data import Data, DataError, DatasetInfo, Split
from input_pipeline.pipeline import eval_dataset, train_dataset
from input_pipeline.preprocess import Augment
from input_pipeline.sources import PIPELINES, load

__all__ = ["Augment", "Data", "DataError", "DatasetInfo", "PIPELINES", "Split", "eval_dataset",
           "load", "train_dataset"]
