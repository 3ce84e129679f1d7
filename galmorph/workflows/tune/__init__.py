"""Optuna studies over TrainConfig: `tune(TuneConfig) -> dict` and `retrain(RetrainConfig) -> dict`.

- Search spaces are YAML files, experiments/search_spaces/<model>.yaml; `load_space` checks
  them and `sample(trial, space)` turns a trial into TrainConfig overrides.
- The data is loaded once (`galmorph.workflows.prepare`); the objective only samples, trains
  through `galmorph.workflows.train.run` (the code of every entry point) and returns the validation
  accuracy of the restored best-validation-loss weights. The per-epoch reporter reports
  `val_accuracy` to the trial and prunes; a pruned trial becomes optuna.TrialPruned.
- MLflow: one parent run per invocation, one nested child run per trial (the trial's
  TrainConfig as params, per-epoch metrics, tags `optuna_state` = complete/pruned/failed,
  metric `optuna_value`); the parent gets the study's best value and parameters, tag
  `best_run_id` (the best child) and plots.
- Storage: any Optuna RDB URL (default sqlite:///optuna.db, apart from mlflow.db); with
  heartbeats, a trial whose worker died is failed by a surviving worker and re-queued
  (RetryHeartbeatStaleTrialCallback, the non-deprecated name of RetryFailedTrialCallback), and
  its runs are closed KILLED: the trial's child run, and the worker's study run, whose liveness
  is the worker's own beat in the study (user attr galmorph_worker:<study run id>).
  Storage URLs are shown and logged with their password replaced by ***.
- `retrain` trains the best trial's configuration on train+validation for a fixed number of
  epochs and evaluates it once on the test split, which no trial decision has used.

Neutral: no deep-learning framework is imported here (the backend is, inside train.run).

Modules, each importing only those above it: config (settings, constants), space (search
spaces), storage (Optuna storage, heartbeats), objective (one trial), summary (what a study
logs), study (`tune`), retraining (`retrain`).
"""

from galmorph.workflows.tune.config import (
    DEFAULT_STORAGE,
    DIVERGED,
    IDENTITY,
    MONITOR,
    OBJECTIVE,
    PRUNERS,
    SAMPLERS,
    TUNABLE,
    RetrainConfig,
    TuneConfig,
)
from galmorph.workflows.tune.objective import TrialFailed, make_objective, objective_value
from galmorph.workflows.tune.retraining import retrain
from galmorph.workflows.tune.space import Param, SearchSpace, load_space, sample, space_path
from galmorph.workflows.tune.storage import open_storage, postgres_driver
from galmorph.workflows.tune.study import make_pruner, make_sampler, tune
from galmorph.workflows.tune.summary import PLOTS, study_plots, summarize

__all__ = [
    "DEFAULT_STORAGE", "DIVERGED", "IDENTITY", "MONITOR", "OBJECTIVE", "PLOTS", "PRUNERS", "SAMPLERS", "TUNABLE",
    "Param", "RetrainConfig", "SearchSpace", "TrialFailed", "TuneConfig", "load_space", "make_objective",
    "make_pruner", "make_sampler", "objective_value", "open_storage", "postgres_driver", "retrain", "sample",
    "space_path", "study_plots", "summarize", "tune",
]
