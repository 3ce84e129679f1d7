"""The settings of `galmorph tune` and `galmorph retrain`, and the constants that define a study:
which TrainConfig fields a search space may set (TUNABLE), what makes two invocations the same
study (IDENTITY), and the names of the objective and of the per-epoch metric."""

from __future__ import annotations

from dataclasses import dataclass

from galmorph import presets
from galmorph.config import TrainConfig, build, check_choices, nested, option, option_of
from galmorph.core.errors import GalmorphError
from galmorph.tracking.tags import run_name
from galmorph.workflows import resume
from galmorph.workflows.prepare import check_data_settings

SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband", "none")
DEFAULT_STORAGE = "sqlite:///optuna.db"
OBJECTIVE = "best_val_accuracy"  # what train.run returns and the study maximises
MONITOR = "val_accuracy"  # what the reporter reports to the trial each epoch
DIVERGED = "training diverged"  # how training.EpochReporter words a NaN/inf loss
BASELINE = "galmorph_baseline"  # user attr (and run tag) of trial 0, the base configuration itself
UNEXPRESSED = "galmorph_unexpressed"  # user attr of trial 0: {param: base value} the space cannot express
# TrainConfig fields a search space may set. Everything else defines the data, the split
# or the bookkeeping, which must stay fixed within a study (the data is loaded once).
TUNABLE = ("learning_rate", "batch_size", "optimizer", "weight_decay", "label_smoothing", "class_weights",
           "width", "dense_units", "dropout", "batchnorm", "augment")
# What makes two invocations the same study: resuming with any of these changed would mix
# values measured on different data or budgets. The dataset is compared by content digest,
# so workers on other machines may keep the file at another path.
IDENTITY = ("model", "backend", "scheme", "band", "max_images", "seed", "val_fraction", "test_fraction",
            "epochs", "crop_fraction", "dataset_digest")


@dataclass
class TuneConfig:
    """Settings of one `galmorph tune` invocation (CLI flags and MLproject `tune` parameters):
    the TrainConfig every trial starts from (`base`, its settings as flags of their own) and
    the study's settings. The search space overrides some of base's settings per trial."""

    base: TrainConfig = nested(TrainConfig, exclude=("log_model", "tta", "explain", "experiment", "run_name",
                                                     "register_as", "alias"),
                               defaults={"epochs": 10, "log_model": False, "tta": "false"})
    n_trials: int = option(20, "trials this invocation runs (a resumed study adds this many; 0 = until --timeout)")
    timeout: float = option(0.0, "stop starting new trials after this many seconds (0 = no limit)")
    study_name: str = option("", "Optuna study name; rerunning with the same name and storage continues the study (default: <model>-<backend>-<dataset>-<scheme>)")
    storage: str = option("", f"Optuna storage URL: an SQLite file or a PostgreSQL URL shared by workers (default: {DEFAULT_STORAGE}, apart from mlflow.db); give a password via PGPASSWORD or ~/.pgpass rather than in the URL")
    sampler: str = option("tpe", "sampler: tpe (default), random, or cmaes (CMA-ES on the numeric parameters, the rest sampled independently)", SAMPLERS)
    sampler_seed: int = option(-1, "seed of the sampler, combined with the number of trials already in the study so that a resumed study draws new points (-1: also mixed with the process id, so that workers started together differ)")
    cv_folds: int = option(0, "objective over K cross-validation folds of the non-test galaxies: the mean of the folds' best validation accuracies (their std logged per trial), pruned on the running mean after each fold (0 = the one validation split)")
    pruner: str = option("median", "pruner, asked once per epoch with the validation accuracy (with cv_folds: once per fold, with the running mean over the folds so far): median, hyperband or none", PRUNERS)
    n_startup_trials: int = option(5, "median pruner: trials that finish unpruned before pruning starts")
    n_warmup_steps: int = option(1, "median pruner: epochs (folds, with cv_folds) of each trial that are never pruned")
    search_space: str = option("", "search space YAML (default: experiments/search_spaces/<model>.yaml)")
    heartbeat_interval: int = option(60, "seconds between a running trial's heartbeats in the storage (0 = no heartbeats, no retries)")
    grace_period: int = option(0, "seconds without a heartbeat after which a trial counts as dead, is failed and retried (0 = 2 x heartbeat_interval)")
    max_retry: int = option(3, "how many times a dead worker's trial is re-queued")
    experiment: str = option("galmorph-tune", "MLflow experiment name for runs started outside `mlflow run`", mlproject=False)
    run_name: str = option("", "MLflow name of the study run (default: tune-<study name>)", mlproject=False)

    @classmethod
    def of(cls, **values) -> "TuneConfig":
        """From flat settings, as the CLI gives them: `TuneConfig.of(backend="torch", n_trials=3)`."""
        return build(cls, values)

    def resolved_study_name(self) -> str:
        b = self.base
        return self.study_name or run_name(b.model, b.backend, b.dataset, b.scheme)

    def resolved_storage(self) -> str:
        return self.storage or DEFAULT_STORAGE

    def train_config(self) -> TrainConfig:
        """The TrainConfig every trial starts from (before the sampled overrides)."""
        return self.base.replace(experiment=self.experiment)

    def validate(self) -> "TuneConfig":
        check_choices(self)
        if self.cv_folds == 1 or self.cv_folds < 0:
            raise GalmorphError(f"cv_folds must be 0 (no cross-validation) or at least 2, got {self.cv_folds}")
        for name in ("n_trials", "n_startup_trials", "n_warmup_steps", "heartbeat_interval", "grace_period", "max_retry"):
            if getattr(self, name) < 0:
                raise GalmorphError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.timeout < 0:
            raise GalmorphError(f"timeout must be 0 or more, got {self.timeout}")
        if self.n_trials == 0 and self.timeout == 0:
            raise GalmorphError("n_trials 0 runs until --timeout; give a timeout too, or a number of trials")
        if self.grace_period and not self.heartbeat_interval:
            raise GalmorphError("grace_period needs heartbeats; set heartbeat_interval too")
        if self.grace_period and self.grace_period <= self.heartbeat_interval:
            raise GalmorphError(f"grace_period ({self.grace_period} s) must exceed heartbeat_interval "
                                f"({self.heartbeat_interval} s), or a live trial would be failed")
        presets.check_name(self.base.preset)
        resume.only_in_train(self.base, "a study")
        check_data_settings(self.train_config().validate())
        return self


@dataclass
class RetrainConfig:
    """Settings of `galmorph retrain`: the best trial of a study, trained on train+validation."""

    study_name: str = option("", "the Optuna study to take the trial from (required)")
    trial: int = option(-1, "the trial to retrain: -1 the best; 0 the base configuration every study starts with, "
                            "to compare the two on the same test split")
    storage: str = option("", f"its Optuna storage URL (default: {DEFAULT_STORAGE})")
    epochs: int = option(0, "epochs on train+validation (0 = the trial's best epoch + 1, where its validation loss was lowest)")
    dataset: str = option("", "the dataset path, where it differs from the one the study recorded (same content required)")
    threads: int = option(0, "CPU threads for the framework (0 = all cores)")
    tta: str = option_of(TrainConfig, "tta")
    log_model: bool = option(True, "log the retrained model to MLflow")
    register_as: str = option_of(TrainConfig, "register_as")
    alias: str = option_of(TrainConfig, "alias")
    experiment: str = option("galmorph-tune", "MLflow experiment name for runs started outside `mlflow run`", mlproject=False)
    run_name: str = option("", "MLflow run name (default: <study>-retrain-trial-<n>)", mlproject=False)
