"""Subclassed keras.Model image classifiers and a registry by name."""

from models.cnn import CNN
from models.mlp import MLP
from models.registry import MODELS, create, get_class, hyperparameters
from models.resnet import ResNet

__all__ = ["CNN", "MLP", "MODELS", "ResNet", "create", "get_class", "hyperparameters"]
