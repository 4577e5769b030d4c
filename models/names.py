"""The models' names, precision policies and hyperparameters (with their defaults), known
without TensorFlow, so that the flags are checked before it loads. registry.py holds the
classes; tests/models/test_models.py checks that their signatures say the same."""

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")

HYPERPARAMETERS: dict[str, dict[str, object]] = {
    "mlp": {"hidden_units": (500,), "activation": "relu", "dropout": 0.0, "l2": 0.0},
    "cnn": {"filters": (25, 25, 25), "kernel_sizes": (5, 5, 4), "dense_units": (50,),
            "dropout": 0.0, "l2": 0.0},
    "resnet": {"widths": (32, 64, 128), "blocks_per_stage": 2, "dropout": 0.0, "l2": 0.0,
               "sync_batch_norm": False, "bn_momentum": 0.99},
    "airbench": {"widths": (64, 128, 256), "whiten": 2, "bn_momentum": 0.4, "l2": 0.0,
                 "sync_batch_norm": False, "identity_init": True},
    # keras.applications' networks; bn_momentum: each network's own batch norm momentum
    "resnet50": {"dropout": 0.0, "l2": 0.0, "sync_batch_norm": False, "bn_momentum": 0.99},
    "mobilenet_v3_small": {"dropout": 0.0, "l2": 0.0, "sync_batch_norm": False,
                           "bn_momentum": 0.999},
    "efficientnet_v2_b0": {"dropout": 0.0, "l2": 0.0, "sync_batch_norm": False,
                           "bn_momentum": 0.9},
}
MODEL_NAMES: tuple[str, ...] = tuple(HYPERPARAMETERS)


def hyperparameters(name: str) -> dict[str, object]:
  """The hyperparameters model `name` accepts, with their defaults."""
  try:
    return dict(HYPERPARAMETERS[name])
  except KeyError:
    raise ValueError(f"unknown model {name!r}; known models: "
                     f"{', '.join(sorted(HYPERPARAMETERS))}") from None
