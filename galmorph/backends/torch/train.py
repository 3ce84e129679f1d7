"""PyTorch fitting: an explicit loop over galmorph batches that calls the neutral per-epoch
reporter (early stopping and pruning decided there).

Performance settings (galmorph.core.acceleration decides what `auto` means): autocast to
bf16/fp16 (fp16 with a GradScaler), channels-last convolutions, torch.compile, batches made
by worker threads and, with a GPU, pinned and copied on a side stream while the previous
step computes; DistributedDataParallel under torchrun (backends/torch/distributed.py).
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
from torch import nn

from galmorph.backends.torch import distributed
from galmorph.backends.torch.device import AUTOCAST_DTYPES, device, replica, settings
from galmorph.backends.torch.model import FrozenBatchNorm2d, n_outputs, set_channels_last
from galmorph.core import acceleration, training
from galmorph.data import pipeline


def _optimizer(model: nn.Module, hyper: training.Hyper):
    # Weight decay is applied decoupled by hand in fit() (as Keras does for every optimiser),
    # so the optimisers themselves get none.
    lr = hyper.learning_rate
    params = [p for p in model.parameters() if p.requires_grad]  # frozen layers (fine-tuning) stay as loaded
    fused = all(p.is_cuda for p in params)  # one kernel for the whole update; same arithmetic
    if hyper.optimizer in ("adam", "adamw"):
        return torch.optim.Adam(params, lr=lr, betas=training.ADAM_BETAS, eps=training.ADAM_EPSILON, fused=fused)
    if hyper.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=training.SGD_MOMENTUM, fused=fused)
    if hyper.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=training.ADADELTA_RHO, eps=training.ADAM_EPSILON)
    raise ValueError(hyper.optimizer)


def _to_device(x: np.ndarray, dev: torch.device) -> torch.Tensor:
    t = torch.from_numpy(x)  # shares the numpy buffer: no copy on the CPU
    return t.to(dev, non_blocking=True) if dev.type != "cpu" else t


def _autocast(dev: torch.device, precision: str):
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class _Trainer:
    """fit()'s training step, set up once: the model on its device in its layout, wrapped in
    DDP when data-parallel and compiled when asked; the optimiser, loss and loss scaler."""

    def __init__(self, model: nn.Module, hyper: training.Hyper, dev: torch.device, s: acceleration.Settings):
        self.model = set_channels_last(model.to(dev), s.channels_last)
        self.model.precision = s.precision
        self.dev, self.settings = dev, s
        net = self.model
        if distributed.active():
            net = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.net = torch.compile(net) if s.compile else net
        self.opt = _optimizer(self.model, hyper)
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # no decay of frozen layers
        self.hyper = hyper
        self.set_epoch(0)
        self.weight = torch.tensor(hyper.class_weight, dtype=torch.float32, device=dev) if hyper.class_weight else None
        # reduction="none" + mean over the batch: Keras's class_weight semantics (sum(w*l) / N),
        # not torch's weighted mean (sum(w*l) / sum(w)).
        self.loss_fn = nn.CrossEntropyLoss(reduction="none", label_smoothing=hyper.label_smoothing)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=s.loss_scaling)

    def set_epoch(self, epoch: int) -> None:
        """Use the learning rate of `epoch` (training.lr_at) for the optimiser and for the
        decoupled weight decay (lr * weight_decay per step, as Keras applies it)."""
        lr = training.lr_at(epoch, self.hyper)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.decay = 1 - lr * self.hyper.weight_decay if self.hyper.weight_decay else None

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; returns (mean loss, correct predictions) as device tensors."""
        with _autocast(self.dev, self.settings.precision):
            logits = self.net(xb)
        losses = self.loss_fn(logits.float(), yb)
        if self.weight is not None:
            losses = losses * self.weight[yb]
        loss = losses.mean()
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.decay is not None:
            with torch.no_grad():
                torch._foreach_mul_(self.params, self.decay)
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.detach(), (logits.detach().argmax(1) == yb).sum()


def device_batches(stream, epoch: int, dev: torch.device, s: acceleration.Settings):
    """One epoch of `stream` as device tensors, made `s.prefetch` batches ahead by worker threads.

    With a GPU each worker pins its batch and copies it on a side stream; the training step
    waits on that copy's event only, so copies overlap the previous step's compute.
    """
    if dev.type != "cuda":
        for x, y in pipeline.stream_batches(stream, epoch, s.loader_workers, s.prefetch):
            yield torch.from_numpy(x), torch.from_numpy(y)
        return
    copier = torch.cuda.Stream(dev)

    def to_gpu(x, y):
        torch.cuda.set_device(dev)  # worker threads start on device 0
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        if s.pin_memory:
            xt, yt = xt.pin_memory(), yt.pin_memory()
        with torch.cuda.stream(copier):
            xd, yd = xt.to(dev, non_blocking=True), yt.to(dev, non_blocking=True)
            done = torch.cuda.Event()
            done.record(copier)
        return xd, yd, done

    current = torch.cuda.current_stream(dev)
    for xd, yd, done in pipeline.stream_batches(stream, epoch, s.loader_workers, s.prefetch, to_gpu):
        current.wait_event(done)
        xd.record_stream(current)  # memory made on the side stream, used on this one
        yd.record_stream(current)
        yield xd, yd


def fit(model: nn.Module, stream, val_batches, hyper: training.Hyper, reporter: training.EpochReporter,
        checkpoints=None):
    """Train `model` on `stream` for up to hyper.epochs; restore the best validation-loss weights.

    Data-parallel (under torchrun): every rank trains its Shard of each epoch; rank 0 alone
    evaluates and calls the reporter, and its improved/stop decision is broadcast.
    With `checkpoints` (galmorph.core.checkpoints.Checkpointer) rank 0 saves the state after
    every epoch, and a `checkpoints.resume` checkpoint is continued from (the reporter is
    restored by the caller).
    """
    dev = device()
    trainer = _Trainer(model, hyper, dev, settings(hyper))
    model = trainer.model
    rank, world = replica()
    if world > 1:
        stream = pipeline.Shard(stream, rank, world)
    best_state, start = None, 0
    resume = checkpoints.resume if checkpoints is not None else None
    if resume is not None:
        if resume.best is not None:
            restore_state(model, trainer, resume.best)
            best_state = copy.deepcopy(model.state_dict())
        restore_state(model, trainer, resume.state)
        start = resume.next_epoch(hyper.epochs)
    for epoch in range(start, hyper.epochs):
        trainer.set_epoch(epoch)
        reporter.start_epoch(trainer.opt.param_groups[0]["lr"])
        model.train()
        sums = torch.zeros(2, device=dev, dtype=torch.float64)  # loss sum, correct: no sync per step
        seen = 0
        for xb, yb in device_batches(stream, epoch, dev, trainer.settings):
            loss, correct = trainer.step(xb, yb)
            sums += torch.stack([loss.double() * yb.shape[0], correct.double()])
            seen += yb.shape[0]
            reporter.batch_done(yb.shape[0] * world)  # every replica's share of the global batch
        replicas = None
        if world > 1:  # and each rank's own seconds and images: every node's timings reach MLflow
            sums, seen, replicas = distributed.epoch_totals(sums, seen, reporter.elapsed())
        loss_sum, correct = sums.tolist()  # waits for the GPU
        train_time = reporter.elapsed()
        recalibrate_bn(model, training.recalibration_batches(stream, epoch))
        improved = stop = False
        if rank == 0:
            proba = predict_proba(model, val_batches())
            decision = reporter.end_epoch(epoch, loss_sum / seen, correct / seen, proba, int(seen),
                                          epoch_time_s=train_time, replicas=replicas)
            improved, stop = decision.improved, decision.stop
        improved, stop = distributed.broadcast_flags(improved, stop)
        if improved:
            best_state = copy.deepcopy(model.state_dict())
        if checkpoints is not None and rank == 0:
            checkpoints.save(epoch, reporter, improved, stop, lambda path: save_state(model, trainer, path))
        if stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model


def save_state(model: nn.Module, trainer: _Trainer, path) -> None:
    """Write to `path` what continuing fit() needs: the weights (batch-norm statistics
    included), the optimiser's and the loss scaler's state and the RNG states (dropout)."""
    state = {"model": model.state_dict(), "optimizer": trainer.opt.state_dict(), "scaler": trainer.scaler.state_dict(),
             "rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save(state, path)


def restore_state(model: nn.Module, trainer: _Trainer, path) -> None:
    """Load into `model` and `trainer` (fit's optimiser and scaler) a `save_state` file."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    trainer.opt.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
    trainer.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def step_rate(model: nn.Module, hyper: training.Hyper, x: np.ndarray, y: np.ndarray, steps: int,
              warmup: int = 3, blocks: int = 1) -> list[float]:
    """Images/s of fit()'s training step on one batch already on the device, for each of
    `blocks` timed blocks of `steps` steps: the compute-only ceiling of the input pipeline
    (same model set-up, optimiser, loss, precision and compilation as fit)."""
    dev = device()
    trainer = _Trainer(model, hyper, dev, settings(hyper))
    trainer.model.train()
    xb, yb = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    sums = torch.zeros(2, device=dev, dtype=torch.float64)

    def run(n):
        for _ in range(n):
            loss, correct = trainer.step(xb, yb)
            sums.add_(torch.stack([loss.double() * yb.shape[0], correct.double()]))
        sums.tolist()  # waits for the device

    return training.block_rates(run, steps, x.shape[0], warmup, blocks)


@torch.no_grad()
def predict_proba(model: nn.Module, batches) -> np.ndarray:
    """Class probabilities (float32 numpy) on the model's device, in its training precision."""
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    with _autocast(dev, getattr(model, "precision", "fp32")):
        for x in batches:
            out.append(torch.softmax(model(_to_device(x, dev)).float(), dim=1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, n_outputs(model)), np.float32)


def device_stats() -> dict:
    if not torch.cuda.is_available():
        return {}
    return {"gpu_peak_memory_mb": torch.cuda.max_memory_allocated(device()) / 2**20}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> None:
    """Re-estimate every BatchNorm's statistics as the plain average over `batches`
    (NHWC float32 arrays) with the current weights (see training.BN_RECALIBRATION_BATCHES)."""
    bns = [m for m in model.modules()  # frozen ones (fine-tuning) keep the source's statistics
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, FrozenBatchNorm2d)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    dev = next(model.parameters()).device
    try:
        for x in batches:
            model(torch.from_numpy(x).to(dev))
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
