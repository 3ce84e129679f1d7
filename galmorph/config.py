"""The one parameter set of every training run.

`TrainConfig` is the contract shared by the CLI (`galmorph train`), the MLproject entry
points (tests check that MLproject lists exactly these parameters with these defaults),
Optuna trials and the Python API (`galmorph.train.run(config)`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from galmorph.errors import GalmorphError

BACKENDS = ("keras", "torch")
OPTIMIZERS = ("adam", "adamw", "sgd", "adadelta")
CLASS_WEIGHTS = ("none", "balanced")


def _p(default, help, choices=None, mlproject=True):
    return field(default=default, metadata={"help": help, "choices": choices, "mlproject": mlproject})


@dataclass
class TrainConfig:
    model: str = _p("c2", "network: c1 or c2 (experiments/architectures.yaml)")
    backend: str = _p("keras", "deep-learning backend", BACKENDS)
    dataset: str = _p("synthetic", "galaxy10, synthetic, nair2010, or the path of a Galaxy10-format .h5 file")
    scheme: str = _p("default", "class scheme of experiments/schemes.yaml (native, 4way, phys449_4way, ...); default: the dataset's")
    band: str = _p("g", "SDSS band(s) fed to the network: g (the paper's), r, i (what PHYS449 used) or gri", ("g", "r", "i", "gri"))
    augment: str = _p("random", "training augmentation: paper40 (all 40 views per epoch), random (one of the 40 per image and epoch) or none", ("paper40", "random", "none"))
    epochs: int = _p(30, "maximum number of epochs (the paper: up to 100, with early stopping)")
    batch_size: int = _p(64, "training batch size (the paper: 400 at 100x100)")
    learning_rate: float = _p(2e-4, "optimiser learning rate (the paper: Adam 2e-4 for C2)")
    patience: int = _p(5, "early stopping: epochs without a lower validation loss before stopping (0 = never stop early); the best weights are restored")
    seed: int = _p(0, "seed of the split, the augmentation order and the weights")
    max_images: int = _p(0, "use a stratified subset of at most this many images (0 = all)")
    val_fraction: float = _p(0.15, "fraction of galaxies in the validation split")
    test_fraction: float = _p(0.15, "fraction of galaxies in the test split")
    crop_fraction: float = _p(100 / 110, "side of the crops relative to the image (the paper: 100 of 110 px)")
    optimizer: str = _p("adam", "optimiser", OPTIMIZERS)
    weight_decay: float = _p(0.0, "decoupled weight decay (AdamW-style) for any optimiser")
    label_smoothing: float = _p(0.0, "label smoothing of the cross-entropy loss")
    class_weights: str = _p("none", "weight the loss by class: none or balanced (inverse class frequency of the training split)", CLASS_WEIGHTS)
    width: float = _p(1.0, "multiplier of the convolution filters")
    dense_units: int = _p(0, "units of each hidden dense layer (0 = the architecture's, 256)")
    dropout: float = _p(-1.0, "dropout rate (-1 = the architecture's, 0.5)")
    batchnorm: str = _p("default", "C1 batch normalisation: true, false or default (true)", ("default", "true", "false"))
    tta: bool = _p(False, "also report test metrics averaged over the 40 views (test-time augmentation)")
    synthetic_n: int = _p(2000, "number of images when dataset=synthetic")
    synthetic_noise: float = _p(1.0, "noise level (difficulty) when dataset=synthetic")
    split_file: str = _p("", "reuse the split of this splits.json (logged by an earlier run) instead of making one")
    schemes_file: str = _p("", "extra YAML file of class schemes (layout of experiments/schemes.yaml)")
    eval_batch_size: int = _p(512, "batch size for validation, test and prediction")
    threads: int = _p(0, "CPU threads for the framework (0 = all cores)")
    log_model: bool = _p(True, "log the trained model to MLflow")
    experiment: str = _p("galmorph", "MLflow experiment name for runs started outside `mlflow run`", mlproject=False)
    run_name: str = _p("", "MLflow run name (default: <model>-<backend>-<dataset>)", mlproject=False)

    @classmethod
    def param_fields(cls):
        return fields(cls)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def arch_kwargs(self) -> dict:
        """Keyword arguments of galmorph.specs.resolve for this run."""
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
        from galmorph import augment, bands, specs, splits

        if self.model not in specs.available():
            raise GalmorphError(f"unknown model {self.model!r}; choose one of {', '.join(specs.available())}")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise GalmorphError(f"unknown {f.name} {getattr(self, f.name)!r}; choose one of {', '.join(choices)}")
        bands.channels(self.band)
        augment.check_mode(self.augment)
        for name in ("epochs", "batch_size", "eval_batch_size", "synthetic_n"):
            if getattr(self, name) < 1:
                raise GalmorphError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("patience", "max_images", "threads", "dense_units"):
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
