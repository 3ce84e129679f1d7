"""PyTorch backend."""

from galmorph.backends.torch.model import build, count_params
from galmorph.backends.torch.train import (device_stats, finish, fit, launch, log_model, predict_proba, replica,
                                           resolved, setup, step_rate)

NAME = "torch"
__all__ = ["NAME", "build", "count_params", "device_stats", "finish", "fit", "launch", "log_model", "predict_proba",
           "replica", "resolved", "setup", "step_rate"]
