"""The contract every backend module satisfies (a `typing.Protocol`; tests check both).

A backend is a package whose top-level functions are these. It builds a framework model
from a neutral `NetworkSpec`, fits it on galmorph's batches while calling the neutral
per-epoch reporter, predicts probabilities and saves and loads the network (the MLflow
model around it is neutral: galmorph.inference.pyfunc); everything else (data,
splits, metrics, early stopping, MLflow bookkeeping) is backend-neutral and lives outside.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from galmorph.core.checkpoints import Checkpointer
from galmorph.core.specs import NetworkSpec
from galmorph.core.training import EpochReporter, Hyper

Batches = Iterable[np.ndarray]  # float32 NHWC image batches


@runtime_checkable
class Backend(Protocol):
    NAME: str

    def setup(self, seed: int, threads: int = 0, devices: int = 1) -> dict:
        """Seed, threads and (data-parallel) process group; returns device, device_name, framework
        and, where several processes train together, replicas (each rank's rank, node, local_rank, host)."""

    def build(self, spec: NetworkSpec, hyper: Hyper | None = None) -> Any:
        """The framework model of `spec` (float32 NHWC in, probabilities or logits out)."""

    def load_weights(self, model: Any, uri: str, freeze: str = "none") -> list[str]:
        """Copy into `model` the weights of every layer of the model logged at `uri` whose shapes
        match; with freeze "conv" the convolutions and batch normalisation then stay fixed in
        training. Returns the layers left as built (shapes differ, e.g. another class count)."""

    def count_params(self, model: Any) -> tuple[int, int]:
        """(trainable, total) parameters, counted as Keras counts them."""

    def fit(self, model: Any, stream: Any, val_batches: Callable[[], Iterator[np.ndarray]], hyper: Hyper,
            reporter: EpochReporter, checkpoints: Checkpointer | None = None) -> Any:
        """Train on `stream` (galmorph.data.augment.TrainStream), calling reporter.start_epoch,
        reporter.batch_done(n_images) after every training batch and reporter.end_epoch once per
        epoch; return the model with the best epoch's weights restored. With `checkpoints`, call
        checkpoints.save(epoch, reporter, improved, stop, write_state) after every end_epoch
        (write_state: save_state to a path), and first continue from `checkpoints.resume` (its
        best and latest state files, at its next epoch) when there is one."""

    def save_state(self, model: Any, trainer: Any, path: Path) -> None:
        """Write to the file `path` what continuing fit() needs: `model`'s weights and `trainer`'s
        state (fit's optimiser, loss scaling) and the framework RNG state that training draws from."""

    def restore_state(self, model: Any, trainer: Any, path: Path) -> None:
        """Load a save_state file into `model` and `trainer`, and the RNG state it recorded."""

    def predict_proba(self, model: Any, batches: Batches) -> np.ndarray:
        """Class probabilities (N, n_classes), float64, of the images in `batches`."""

    def save_network(self, model: Any, directory: str) -> list[str]:
        """Write the network inside `model` into the existing folder `directory` (one member of a
        logged galmorph model, galmorph.inference.pyfunc); return the pip requirements to load it."""

    def load_network(self, directory: str) -> Any:
        """The network save_network wrote to `directory`, ready for predict_proba (inference mode)."""

    def device_stats(self) -> dict:
        """Peak device memory and the like, for the run's metrics (empty on the CPU)."""

    def resolved(self, hyper: Hyper) -> dict:
        """The performance settings applied for `hyper` (galmorph.core.acceleration), as params."""

    def step_rate(self, model: Any, hyper: Hyper, x: np.ndarray, y: np.ndarray, steps: int, warmup: int = 3,
                  blocks: int = 1) -> list[float]:
        """Training images/s of steps on one batch already on the device (the pipeline's ceiling)."""

    def replica(self) -> tuple[int, int]:
        """(rank, world size) of this process; (0, 1) outside data-parallel training."""

    def launch(self, argv: list[str], devices: int) -> dict | None:
        """Start a multi-process run and return rank 0's metrics, or None to train in this process."""

    def agree(self, value: Any, devices: int) -> Any:
        """Rank 0's `value` in every process of a data-parallel run that a launcher started
        (joining its process group first); `value` itself in a process that trains alone."""

    def finish(self, metrics: dict) -> None:
        """End of a run in this process."""


@runtime_checkable
class Explainer(Protocol):
    """A backend's explain.py: what a network's convolutions see, for galmorph.workflows.explain."""

    def feature_maps(self, model: Any, x: np.ndarray, layer_index: int = 0) -> np.ndarray:
        """Activations (N, H, W, C) of convolution `layer_index` (after its ReLU) for images x."""

    def conv_gradients(self, model: Any, x: np.ndarray, class_index, layer_index: int = -1
                       ) -> tuple[np.ndarray, np.ndarray]:
        """(activations, gradients of the class scores) at convolution `layer_index`, for Grad-CAM."""

    def load_logged_model(self, uri: str) -> Any:
        """The framework model logged at an MLflow model URI."""
