"""What a person sees of training, fed by the one per-epoch reporter (galmorph.core.training).

On a terminal: a tqdm bar per epoch (images/s, ETA) that clears itself, then the epoch's line.
Elsewhere (logs, `mlflow run`, CI): only one plain line per epoch, e.g.

    epoch 3/30  train loss 0.512 acc 0.812  val loss 0.467 acc 0.839  34.9 s  (best)

Nested runs (multiseed children, Optuna trials, hierarchy nodes) prefix their lines with
the run name, so that a sweep stays readable.
"""

from __future__ import annotations

import sys
import threading
import time


def epoch_line(epoch: int, epochs: int, train_loss: float, train_accuracy: float, val_loss: float,
               val_accuracy: float, seconds: float, best: bool) -> str:
    """The plain per-epoch line (epoch is 0-based, printed 1-based)."""
    return (f"epoch {epoch + 1}/{epochs}  train loss {train_loss:.3f} acc {train_accuracy:.3f}  "
            f"val loss {val_loss:.3f} acc {val_accuracy:.3f}  {seconds:.1f} s" + ("  (best)" if best else ""))


class EpochProgress:
    """Per-epoch console output: `start(epoch)`, `advance(n_images)` per batch, `line(text)`.

    `bar`: draw a tqdm bar during each epoch (default: when `stream` is a terminal). Batches
    may be reported from another thread (Keras dispatches batch callbacks to a thread pool).
    """

    def __init__(self, epochs: int, images_per_epoch: int, *, prefix: str = "", stream=None,
                 bar: bool | None = None):
        self.epochs, self.images_per_epoch = epochs, images_per_epoch
        self.prefix = f"{prefix}  " if prefix else ""
        self.stream = stream or sys.stdout
        self.bar = _is_terminal(self.stream) if bar is None else bar
        self._tqdm = None
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()

    def start(self, epoch: int) -> None:
        self._t0 = time.perf_counter()
        if self.bar:
            from tqdm import tqdm

            self._close()
            self._tqdm = tqdm(total=self.images_per_epoch, desc=f"{self.prefix}epoch {epoch + 1}/{self.epochs}",
                              unit="img", unit_scale=True, leave=False, file=self.stream, dynamic_ncols=True)

    def advance(self, n_images: int) -> None:
        bar = self._tqdm
        if bar is not None:
            with self._lock:  # tqdm's counters are not thread-safe
                bar.update(n_images)

    def seconds(self) -> float:
        """Wall time since start(): the whole epoch, validation included."""
        return time.perf_counter() - self._t0

    def line(self, text: str) -> None:
        """One line (the bar, if any, is cleared first), flushed at once: under `mlflow run`
        stdout is a pipe, and a buffered line would arrive only at the end of the run."""
        self._close()
        print(f"{self.prefix}{text}", file=self.stream, flush=True)

    def _close(self) -> None:
        with self._lock:
            if self._tqdm is not None:
                self._tqdm.close()
                self._tqdm = None


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
