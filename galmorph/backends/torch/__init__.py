"""PyTorch backend."""

from galmorph.backends.torch.model import build, count_params
from galmorph.backends.torch.train import device_stats, fit, log_model, predict_proba, setup

NAME = "torch"
__all__ = ["NAME", "build", "count_params", "device_stats", "fit", "log_model", "predict_proba", "setup"]
