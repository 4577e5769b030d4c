"""The tuner's named choices, TensorFlow-free: python -m trainer.tune answers a bad
--sampler, --pruner or --objective before TensorFlow loads."""

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
# The validation figure a trial reports, and which way is better.
OBJECTIVES = {"accuracy": "maximize", "loss": "minimize"}
