"""Exports a run's model to the formats it is served in (LiteRT, ONNX), runs them in their
own runtimes and checks them against the run's SavedModel before they are published."""
