"""The one parameter set of every training run.

`TrainConfig` is the contract shared by the CLI (`galmorph train`), the MLproject entry
points (tests check that MLproject lists exactly these parameters with these defaults),
Optuna trials and the Python API (`galmorph.workflows.train.run(config)`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from galmorph.core import specs
from galmorph.core.errors import GalmorphError
from galmorph.data import augment, bands, splits

BACKENDS = ("keras", "torch")
OPTIMIZERS = ("adam", "adamw", "sgd", "adadelta")
CLASS_WEIGHTS = ("none", "balanced")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SWITCH = ("auto", "true", "false")


def option(default, help, choices=None, mlproject=True):
    """A config field with its CLI help, allowed values, and whether the MLproject exposes it."""
    return field(default=default, metadata={"help": help, "choices": choices, "mlproject": mlproject})


@dataclass
class TrainConfig:
    model: str = option("c2", "network: c1 or c2 (experiments/architectures.yaml)")
    backend: str = option("keras", "deep-learning backend", BACKENDS)
    dataset: str = option("synthetic", "galaxy10, synthetic, nair2010, or the path of a Galaxy10-format .h5 file")
    scheme: str = option("default", "class scheme of experiments/schemes.yaml (native, 4way, phys449_4way, ...); default: the dataset's")
    band: str = option("g", "SDSS band(s) fed to the network: g (the paper's), r, i (what PHYS449 used) or gri", ("g", "r", "i", "gri"))
    augment: str = option("random", "training augmentation: paper40 (all 40 views per epoch), random (one of the 40 per image and epoch) or none", ("paper40", "random", "none"))
    epochs: int = option(30, "maximum number of epochs (the paper: up to 100, with early stopping)")
    batch_size: int = option(64, "training batch size (the paper: 400 at 100x100)")
    learning_rate: float = option(2e-4, "optimiser learning rate (the paper: Adam 2e-4 for C2)")
    patience: int = option(5, "early stopping: epochs without a lower validation loss before stopping (0 = never stop early); the best weights are restored")
    seed: int = option(0, "seed of the split, the augmentation order and the weights")
    max_images: int = option(0, "use a stratified subset of at most this many images (0 = all)")
    val_fraction: float = option(0.15, "fraction of galaxies in the validation split")
    test_fraction: float = option(0.15, "fraction of galaxies in the test split")
    crop_fraction: float = option(100 / 110, "side of the crops relative to the image (the paper: 100 of 110 px)")
    optimizer: str = option("adam", "optimiser", OPTIMIZERS)
    weight_decay: float = option(0.0, "decoupled weight decay (AdamW-style) for any optimiser")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy loss")
    class_weights: str = option("none", "weight the loss by class: none or balanced (inverse class frequency of the training split)", CLASS_WEIGHTS)
    width: float = option(1.0, "multiplier of the convolution filters")
    dense_units: int = option(0, "units of each hidden dense layer (0 = the architecture's, 256)")
    dropout: float = option(-1.0, "dropout rate (-1 = the architecture's, 0.5)")
    batchnorm: str = option("default", "C1 batch normalisation: true, false or default (true)", ("default", "true", "false"))
    tta: bool = option(False, "also report test metrics averaged over the 40 views (test-time augmentation)")
    synthetic_n: int = option(2000, "number of images when dataset=synthetic")
    synthetic_noise: float = option(1.0, "noise level (difficulty) when dataset=synthetic")
    split_file: str = option("", "reuse the split of this splits.json (logged by an earlier run) instead of making one")
    schemes_file: str = option("", "extra YAML file of class schemes (layout of experiments/schemes.yaml)")
    eval_batch_size: int = option(512, "batch size for validation, test and prediction")
    threads: int = option(0, "CPU threads for the framework (0 = all cores)")
    log_model: bool = option(True, "log the trained model to MLflow")
    explain: bool = option(False, "log feature maps of the first convolutions and Grad-CAM saliency of a few test galaxies per class (galmorph.workflows.explain)")
    precision: str = option("auto", "arithmetic of training and inference: fp32, bf16 or fp16 mixed precision (fp16 with dynamic loss scaling); auto = bf16 on a GPU that supports it, fp32 on the CPU", PRECISIONS)
    compile: str = option("auto", "compile the network: XLA jit_compile (Keras) or torch.compile (PyTorch); auto = on a GPU only", SWITCH)
    channels_last: str = option("auto", "channels-last (NHWC) memory layout for the convolutions (PyTorch; Keras is always NHWC); auto = on a GPU only", SWITCH)
    loader_workers: int = option(0, "threads that make augmented batches ahead of the training step (0 = auto: 1 on the CPU, 4 with a GPU)")
    prefetch: int = option(4, "batches made ahead of the training step (0 = make each batch when the step needs it)")
    pin_memory: str = option("auto", "page-locked batches copied to the GPU on a side stream, overlapping compute (PyTorch); auto = with a GPU", SWITCH)
    devices: int = option(1, "devices to train on, data-parallel (PyTorch: DistributedDataParallel, one torchrun process per device; Keras: tf.distribute.MirroredStrategy); batch_size is the global batch. On a machine without GPUs, N CPU replicas (for testing)")
    experiment: str = option("galmorph", "MLflow experiment name for runs started outside `mlflow run`", mlproject=False)
    run_name: str = option("", "MLflow run name (default: <model>-<backend>-<dataset>)", mlproject=False)

    @classmethod
    def param_fields(cls):
        return fields(cls)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_argv(self) -> list[str]:
        """`galmorph train` arguments that recreate this config (e.g. for a torchrun relaunch)."""
        argv = ["train"]
        for f in fields(self):
            value = getattr(self, f.name)
            argv += ["--" + f.name.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
        return argv

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def arch_kwargs(self) -> dict:
        """Keyword arguments of galmorph.core.specs.resolve for this run."""
        kw = {"width": self.width}
        if self.dense_units > 0:
            kw["dense_units"] = self.dense_units
        if self.dropout >= 0:
            kw["dropout"] = self.dropout
        if self.batchnorm != "default":
            kw["batchnorm"] = self.batchnorm == "true"
        return kw

    def validate(self) -> "TrainConfig":
        """Check every setting; raise a one-line GalmorphError for the first bad one."""

        if self.model not in specs.available():
            raise GalmorphError(f"unknown model {self.model!r}; choose one of {', '.join(specs.available())}")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise GalmorphError(f"unknown {f.name} {getattr(self, f.name)!r}; choose one of {', '.join(choices)}")
        bands.channels(self.band)
        augment.check_mode(self.augment)
        for name in ("epochs", "batch_size", "eval_batch_size", "synthetic_n", "devices"):
            if getattr(self, name) < 1:
                raise GalmorphError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("patience", "max_images", "threads", "dense_units", "loader_workers", "prefetch"):
            if getattr(self, name) < 0:
                raise GalmorphError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise GalmorphError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise GalmorphError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise GalmorphError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not (self.dropout == -1 or 0 <= self.dropout < 1):
            raise GalmorphError(f"dropout must be in [0, 1) or -1 for the architecture's, got {self.dropout}")
        if self.synthetic_noise < 0:
            raise GalmorphError(f"synthetic_noise must be 0 or more, got {self.synthetic_noise}")
        if self.batchnorm != "default" and self.model != "c1":
            raise GalmorphError(f"batchnorm applies to c1 only ({self.model} always has it); leave it at default")
        if self.batch_size % self.devices:
            raise GalmorphError(f"batch_size {self.batch_size} (the global batch) must be a multiple of devices {self.devices}")
        augment.crop_size(69, self.crop_fraction)
        splits.check_fractions(self.val_fraction, self.test_fraction)
        return self


def parse_bool(text) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise GalmorphError(f"expected true or false, got {text!r}")
