"""Keras 3 backend (TensorFlow underneath, as the paper used)."""

import os

# Keras reads its backend once, at first import: set it before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from galmorph.backends.keras.device import finish, launch, replica, resolved, setup  # noqa: E402
from galmorph.backends.keras.model import build, count_params, load_weights  # noqa: E402
from galmorph.backends.keras.train import device_stats, fit, log_model, predict_proba, step_rate  # noqa: E402

NAME = "keras"
__all__ = ["NAME", "build", "count_params", "device_stats", "finish", "fit", "launch", "load_weights", "log_model",
           "predict_proba", "replica", "resolved", "setup", "step_rate"]
