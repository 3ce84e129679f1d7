"""Backend-neutral training semantics: optimiser settings, class weights, and the one
per-epoch reporter that both backends call (metrics, early stopping, Optuna pruning).

A backend's fit loop does only this per epoch: call `reporter.start_epoch()`, train on the
stream's batches (calling `reporter.batch_done(n_images)` after each, for the progress bar),
measure its own train loss/accuracy, predict validation probabilities, and call
`reporter.end_epoch(...)`, whose decision says whether the weights improved (snapshot
them) and whether to stop. Everything that could drift between backends lives here,
what the console shows included (galmorph.core.progress).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from galmorph.core import metrics
from galmorph.core.errors import GalmorphError
from galmorph.core.progress import epoch_line

OPTIMIZERS = ("adam", "adamw", "sgd", "adadelta")  # sgd: with momentum SGD_MOMENTUM
CLASS_WEIGHTS = ("none", "balanced")  # balanced: inverse class frequency of the training split

# Constants both backends use, so that the two builds of a network are the same network.
ADAM_EPSILON = 1e-7
ADAM_BETAS = (0.9, 0.999)
SGD_MOMENTUM = 0.9
ADADELTA_RHO = 0.95
BN_MOMENTUM = 0.9  # Keras convention: running = m * running + (1 - m) * batch  (torch: 1 - m)
BN_EPSILON = 1e-3
# "Precise BN" (Wu & Johnson 2021, Rethinking "Batch" in BatchNorm): before each validation,
# batch-norm statistics are re-estimated with the epoch's final weights over this many
# training batches (a plain average). The running averages otherwise lag the fast-moving
# early weights: measured here, C2 on the synthetic set predicted one class in eval mode
# after 2 epochs (25 % validation accuracy) while its batch statistics gave 65 %; with
# re-estimated statistics, 71 %. Gradients and training are unchanged.
BN_RECALIBRATION_BATCHES = 8


def recalibration_batches(stream, epoch: int, n: int = BN_RECALIBRATION_BATCHES):
    """The training images (float32 NHWC) both backends use to re-estimate BN statistics."""
    plan = stream.plan(epoch)
    for i in range(min(n, len(stream))):
        yield stream.get(plan, i)[0]


@dataclass(frozen=True)
class Hyper:
    """What a backend reads to fit and predict, beyond the network spec and the batches.

    Built from a TrainConfig by `galmorph.workflows.prepare.hyper_from`: every field but
    `class_weight` is the TrainConfig setting of the same name, with its meaning and default
    there (the performance settings' `auto` rules are in galmorph.core.acceleration).
    """

    epochs: int
    learning_rate: float
    optimizer: str
    weight_decay: float
    label_smoothing: float
    class_weight: tuple[float, ...] | None  # per class, or None for unweighted
    eval_batch_size: int
    precision: str
    compile: str
    channels_last: str
    loader_workers: int
    prefetch: int
    pin_memory: str
    devices: int


def block_rates(run, steps: int, batch_images: int, warmup: int = 3, blocks: int = 1) -> list[float]:
    """Images/s of `run(n)` (n training steps of `batch_images` images that return only once
    the device is done) for each of `blocks` timed blocks of `steps` steps, after `warmup`."""
    run(warmup)
    rates = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        run(steps)
        rates.append(steps * batch_images / (time.perf_counter() - t0))
    return rates


def balanced_class_weight(labels: np.ndarray, n_classes: int) -> tuple[float, ...]:
    """n / (K * count_k) per class (sklearn's 'balanced'); absent classes get weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    with np.errstate(divide="ignore"):
        w = np.where(counts > 0, labels.size / (n_classes * counts), 0.0)
    return tuple(float(x) for x in w)


class Pruned(Exception):
    """Raised by the reporter when an Optuna trial should stop (becomes optuna.TrialPruned)."""


@dataclass
class Decision:
    improved: bool
    stop: bool


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    epoch_time_s: float
    train_images_per_s: float


@dataclass
class EpochReporter:
    """Called once per epoch by every backend.

    Computes validation loss/accuracy from probabilities (one implementation for both
    backends), logs the epoch's metrics through `log` (e.g. mlflow.log_metrics), applies
    early stopping on validation loss, and reports `prune_metric` to an Optuna trial,
    raising `Pruned` when the pruner says so. With a `progress`
    (galmorph.core.progress.EpochProgress) it shows each epoch, and says when it stops early
    or is pruned; without one (--quiet, replicas) it prints nothing.
    """

    val_labels: np.ndarray
    patience: int = 0
    log: object = None  # callable(metrics: dict, step: int)
    trial: object = None  # optuna.Trial or None
    prune_metric: str = "val_accuracy"
    progress: object = None  # galmorph.core.progress.EpochProgress or None
    history: list[EpochRecord] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = -1
    _since_best: int = 0
    _t0: float | None = None

    def start_epoch(self) -> None:
        self._t0 = time.perf_counter()
        if self.progress is not None:
            self.progress.start(len(self.history))

    def batch_done(self, n_images: int) -> None:
        """A training batch of `n_images` is done (moves the progress bar, if any)."""
        if self.progress is not None:
            self.progress.advance(n_images)

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.line(text)

    def elapsed(self) -> float:
        """Seconds since start_epoch(): the training part of the epoch, before validation."""
        return time.perf_counter() - self._t0

    def end_epoch(self, epoch: int, train_loss: float, train_accuracy: float, val_proba: np.ndarray,
                  n_train_images: int, epoch_time_s: float | None = None) -> Decision:
        if epoch_time_s is None:
            if self._t0 is None:
                raise RuntimeError("call start_epoch() before end_epoch() or pass epoch_time_s")
            epoch_time_s = time.perf_counter() - self._t0
        val_loss = metrics.cross_entropy(self.val_labels, val_proba)
        val_acc = metrics.accuracy(self.val_labels, val_proba)
        rec = EpochRecord(epoch, float(train_loss), float(train_accuracy), val_loss, val_acc,
                          float(epoch_time_s), n_train_images / max(epoch_time_s, 1e-9))
        self.history.append(rec)
        if self.log is not None:
            self.log({k: v for k, v in rec.__dict__.items() if k != "epoch"}, epoch)
        if not math.isfinite(rec.train_loss):
            raise GalmorphError(
                f"training diverged (loss {rec.train_loss}) in epoch {epoch}; lower the learning rate"
            )
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch, self._since_best = val_loss, epoch, 0
        else:
            self._since_best += 1
        if self.trial is not None:
            value = getattr(rec, self.prune_metric, None)
            if value is None:
                raise GalmorphError(
                    f"cannot prune on {self.prune_metric!r}: the reporter records "
                    f"{', '.join(k for k in rec.__dict__ if k != 'epoch')}"
                )
            self.trial.report(value, epoch)
            if self.trial.should_prune():
                self._show(rec, improved)
                self._say(f"pruned by Optuna after epoch {epoch + 1} ({self.prune_metric} {value:.3f})")
                raise Pruned(f"pruned at epoch {epoch} ({self.prune_metric}={value:.4f})")
        self._show(rec, improved)
        stop = self.patience > 0 and self._since_best >= self.patience
        if stop:
            self._say(f"early stopping after epoch {epoch + 1}: no lower validation loss for {self.patience} epochs; "
                      f"keeping epoch {self.best_epoch + 1}")
        return Decision(improved, stop)

    def _show(self, rec: EpochRecord, improved: bool) -> None:
        if self.progress is not None:
            self._say(epoch_line(rec.epoch, self.progress.epochs, rec.train_loss, rec.train_accuracy,
                                 rec.val_loss, rec.val_accuracy, self.progress.seconds(), improved))

    def state(self) -> dict:
        """What a checkpoint keeps of the reporter (JSON-ready): history, best epoch and loss,
        and the epochs since the best (early stopping's count)."""
        return {"history": [r.__dict__ for r in self.history], "best_val_loss": self.best_val_loss,
                "best_epoch": self.best_epoch, "since_best": self._since_best}

    def restore(self, state: dict) -> None:
        """Continue from `state()` of an earlier process (a resumed run)."""
        self.history = [EpochRecord(**r) for r in state["history"]]
        self.best_val_loss = float(state["best_val_loss"])
        self.best_epoch = int(state["best_epoch"])
        self._since_best = int(state["since_best"])

    def timing(self) -> dict[str, float]:
        """First epoch (warm-up, graph building) apart from the steady-state epochs."""
        if not self.history:
            return {}
        out = {"first_epoch_time_s": self.history[0].epoch_time_s,
               "epochs_run": float(len(self.history)), "best_epoch": float(self.best_epoch)}
        steady = self.history[1:]
        if steady:
            out["steady_epoch_time_s"] = float(np.mean([r.epoch_time_s for r in steady]))
            out["steady_train_images_per_s"] = float(np.mean([r.train_images_per_s for r in steady]))
        return out
