"""PyTorch backend."""

from galmorph.backends.torch.device import agree, finish, launch, replica, resolved, setup
from galmorph.backends.torch.model import build, count_params, load_network, load_weights, save_network
from galmorph.backends.torch.train import device_stats, fit, predict_proba, restore_state, save_state, step_rate

NAME = "torch"
__all__ = ["NAME", "agree", "build", "count_params", "device_stats", "finish", "fit", "launch", "load_network", "load_weights",
           "predict_proba", "replica", "resolved", "restore_state", "save_network", "save_state", "setup", "step_rate"]
