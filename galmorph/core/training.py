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
# balanced: inverse class frequency of the training split; sqrt: its square root (milder for a
# class 20x rarer than the commonest, as cigar-shaped smooth galaxies are in Galaxy10)
CLASS_WEIGHTS = ("none", "balanced", "sqrt")
LR_SCHEDULES = ("constant", "cosine", "onecycle")  # see lr_at
ONECYCLE_START = 25.0  # onecycle starts at learning_rate / 25 (torch OneCycleLR's div_factor) ...
ONECYCLE_END = 1e4  # ... and anneals towards that start / 1e4 (its final_div_factor)
ONECYCLE_RISE = 0.3  # the rise's share of the epochs when warmup_epochs is 0 (its pct_start)

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
    lr_schedule: str
    warmup_epochs: int
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
    pretrained: str = "none"  # a zoo network's start: none (from scratch) or imagenet (the zoo's weights)


def lr_at(epoch: int, hyper: Hyper) -> float:
    """The learning rate of (0-based) `epoch`, held for the whole epoch; both backends set it
    before the epoch's first step (Keras: optimizer.learning_rate; PyTorch: each param_group's
    lr) and apply the decoupled weight decay with it (lr * weight_decay per step, as Keras does).

    Per epoch, not per step: one Python formula evaluated the same way by both backends, with
    no copy inside a compiled Keras graph and no dependence on step counts (which differ under
    data-parallel sharding or skipped fp16 steps); at 10-100 epochs a step changes the rate by
    a few per cent at most.

    - constant: `learning_rate` every epoch.
    - cosine: a linear warm-up over W = min(warmup_epochs, epochs - 1) epochs
      (lr * (e + 1) / (W + 1)), then cosine decay over the n = epochs - W remaining ones,
      lr * (1 + cos(pi * k / n)) / 2 for k = e - W: full rate at the first of them, reaching 0
      at the end of the last epoch (the last epoch itself trains at a small positive rate).
    - onecycle (Smith & Topin 2019, without momentum cycling): a cosine rise from
      lr / ONECYCLE_START to lr over W epochs (warmup_epochs, or ONECYCLE_RISE of the epochs
      when 0), then cosine annealing towards lr / ONECYCLE_START / ONECYCLE_END.
    """
    base, schedule, epochs = hyper.learning_rate, hyper.lr_schedule, hyper.epochs
    if schedule == "constant":
        return float(base)
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}")
    rise = hyper.warmup_epochs
    if schedule == "onecycle" and rise == 0:
        rise = max(1, round(ONECYCLE_RISE * epochs))
    rise = min(rise, epochs - 1)
    if schedule == "cosine":
        if epoch < rise:
            return float(base * (epoch + 1) / (rise + 1))
        return float(base * 0.5 * (1 + math.cos(math.pi * (epoch - rise) / (epochs - rise))))
    start = base / ONECYCLE_START
    if epoch < rise:
        return float(start + (base - start) * 0.5 * (1 - math.cos(math.pi * epoch / rise)))
    end = start / ONECYCLE_END
    return float(end + (base - end) * 0.5 * (1 + math.cos(math.pi * (epoch - rise) / (epochs - rise))))


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


def class_weight(labels: np.ndarray, n_classes: int, power: float = 1.0) -> tuple[float, ...]:
    """count_k ** -power per class, scaled so that the training galaxies' weights sum to their
    number (the loss keeps its scale): power 1 is n / (K * count_k), sklearn's 'balanced';
    power 0.5 weighs by the inverse square root of the frequency. Absent classes get 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    raw = np.zeros(n_classes)
    raw[present] = counts[present] ** -power
    total = float(np.sum(counts * raw))
    w = raw * labels.size / total if total > 0 else raw
    return tuple(float(x) for x in w)


CLASS_WEIGHT_POWER = {"balanced": 1.0, "sqrt": 0.5}


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
    learning_rate: float | None = None  # what the backend's optimiser held this epoch


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
    _lr: float | None = None

    def start_epoch(self, learning_rate: float | None = None) -> None:
        """An epoch starts; `learning_rate`: the rate the backend's optimiser holds for it, read
        back from the optimiser (logged as the epoch's `learning_rate` metric)."""
        self._t0 = time.perf_counter()
        self._lr = None if learning_rate is None else float(learning_rate)
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
                  n_train_images: int, epoch_time_s: float | None = None,
                  replicas: list[tuple[float, int]] | None = None) -> Decision:
        """`replicas`: in data-parallel training, each rank's (seconds, images) of this epoch,
        logged as rank{r}_epoch_time_s and rank{r}_train_images_per_s (not kept in the history)."""
        if epoch_time_s is None:
            if self._t0 is None:
                raise RuntimeError("call start_epoch() before end_epoch() or pass epoch_time_s")
            epoch_time_s = time.perf_counter() - self._t0
        val_loss = metrics.cross_entropy(self.val_labels, val_proba)
        val_acc = metrics.accuracy(self.val_labels, val_proba)
        rec = EpochRecord(epoch, float(train_loss), float(train_accuracy), val_loss, val_acc,
                          float(epoch_time_s), n_train_images / max(epoch_time_s, 1e-9), self._lr)
        self.history.append(rec)
        if self.log is not None:
            logged = {k: v for k, v in rec.__dict__.items() if k != "epoch" and v is not None}
            for r, (seconds, images) in enumerate(replicas or ()):
                logged.update({f"rank{r}_epoch_time_s": seconds,
                               f"rank{r}_train_images_per_s": images / max(seconds, 1e-9)})
            self.log(logged, epoch)
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
                    f"{', '.join(k for k in rec.__dict__ if k not in ('epoch', 'learning_rate'))}"
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
