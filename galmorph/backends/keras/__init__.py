"""Keras 3 backend (TensorFlow underneath, as the paper used)."""

import os

from galmorph.core.console import native_log_filter

# Keras reads its backend once, at first import: set it before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ log lines: none but fatal ones (a user may set a lower level to see them).
# Its loading notices bypass this level (galmorph.core.console), hence the filter around the
# import. The oneDNN notice is filtered, not silenced with TF_ENABLE_ONEDNN_OPTS=0: that
# would turn off the oneDNN kernels that every measured CPU number here was made with.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_LEVEL = int(os.environ["TF_CPP_MIN_LOG_LEVEL"]) if os.environ["TF_CPP_MIN_LOG_LEVEL"].isdigit() else 3

with native_log_filter(_LEVEL):
    import keras  # noqa: E402,F401  (loads TensorFlow)

if _LEVEL >= 2:  # TensorFlow's and Keras's Python-side absl messages alike
    import absl.logging  # noqa: E402

    absl.logging.set_verbosity(absl.logging.ERROR)

from galmorph.backends.keras.device import agree, finish, launch, replica, resolved, setup  # noqa: E402
from galmorph.backends.keras.model import build, count_params, load_network, load_weights, save_network  # noqa: E402
from galmorph.backends.keras.train import device_stats, fit, predict_proba, restore_state, save_state, step_rate  # noqa: E402

NAME = "keras"
__all__ = ["NAME", "agree", "build", "count_params", "device_stats", "finish", "fit", "launch", "load_network", "load_weights",
           "predict_proba", "replica", "resolved", "restore_state", "save_network", "save_state", "setup", "step_rate"]
