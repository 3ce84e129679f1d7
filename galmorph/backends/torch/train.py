"""PyTorch fitting: an explicit loop over galmorph batches that calls the neutral per-epoch
reporter (early stopping and pruning decided there)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from galmorph import system, training
from galmorph.backends.torch.model import Probabilities


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(seed: int, threads: int = 0) -> dict:
    torch.set_num_threads(threads or system.cpu_count())
    torch.manual_seed(seed)
    dev = device()
    info = {"device": "GPU" if dev.type == "cuda" else "CPU", "framework": f"torch {torch.__version__}"}
    if dev.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
        torch.cuda.reset_peak_memory_stats()
    else:
        info["device_name"] = system.cpu_name()
    return info


def _optimizer(model: nn.Module, hyper: training.Hyper):
    # Weight decay is applied decoupled by hand in fit() (as Keras does for every optimiser),
    # so the optimisers themselves get none.
    lr = hyper.learning_rate
    params = model.parameters()
    if hyper.optimizer in ("adam", "adamw"):
        return torch.optim.Adam(params, lr=lr, betas=training.ADAM_BETAS, eps=training.ADAM_EPSILON)
    if hyper.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=training.SGD_MOMENTUM)
    if hyper.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=training.ADADELTA_RHO, eps=training.ADAM_EPSILON)
    raise ValueError(hyper.optimizer)


def _to_device(x: np.ndarray, dev: torch.device) -> torch.Tensor:
    t = torch.from_numpy(x)
    return t.to(dev, non_blocking=True) if dev.type != "cpu" else t


def fit(model: nn.Module, stream, val_batches, hyper: training.Hyper, reporter: training.EpochReporter):
    """Train `model` on `stream` for up to hyper.epochs; restore the best validation-loss weights."""
    dev = device()
    model.to(dev)
    opt = _optimizer(model, hyper)
    weight = torch.tensor(hyper.class_weight, dtype=torch.float32, device=dev) if hyper.class_weight else None
    # reduction="none" + mean over the batch: Keras's class_weight semantics (sum(w*l) / N),
    # not torch's weighted mean (sum(w*l) / sum(w)).
    loss_fn = nn.CrossEntropyLoss(reduction="none", label_smoothing=hyper.label_smoothing)
    best_state = None
    for epoch in range(hyper.epochs):
        reporter.start_epoch()
        model.train()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        seen = 0
        for x, y in stream.epoch(epoch):
            xb, yb = _to_device(x, dev), _to_device(y, dev)
            logits = model(xb)
            losses = loss_fn(logits, yb)
            if weight is not None:
                losses = losses * weight[yb]
            loss = losses.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hyper.weight_decay:
                with torch.no_grad():
                    for p in model.parameters():
                        p.mul_(1 - hyper.learning_rate * hyper.weight_decay)
            opt.step()
            loss_sum += loss.detach() * yb.shape[0]
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += yb.shape[0]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_time = reporter.elapsed()
        proba = predict_proba(model, val_batches())
        decision = reporter.end_epoch(epoch, float(loss_sum) / seen, float(correct) / seen, proba, seen,
                                      epoch_time_s=train_time)
        if decision.improved:
            best_state = copy.deepcopy(model.state_dict())
        if decision.stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model


@torch.no_grad()
def predict_proba(model: nn.Module, batches) -> np.ndarray:
    dev = device()
    was_training = model.training
    model.eval()
    out = [torch.softmax(model(_to_device(x, dev)), dim=1).float().cpu().numpy() for x in batches]
    model.train(was_training)
    n_classes = model.body[-1].out_features
    return np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)


def device_stats() -> dict:
    if not torch.cuda.is_available():
        return {}
    return {"gpu_peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20}


def log_model(model: nn.Module, name: str, input_example: np.ndarray) -> str:
    import mlflow
    from mlflow.models import infer_signature

    import galmorph

    wrapped = Probabilities(model).to("cpu").eval()
    signature = infer_signature(input_example, predict_proba(model.to("cpu"), [input_example]))
    info = mlflow.pytorch.log_model(
        wrapped, name=name, signature=signature, input_example=input_example,
        code_paths=[str(_package_dir(galmorph))],
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
    )
    return info.model_uri


def _package_dir(pkg):
    from pathlib import Path

    return Path(pkg.__file__).resolve().parent
