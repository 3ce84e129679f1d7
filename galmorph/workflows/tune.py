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
  (RetryHeartbeatStaleTrialCallback, the non-deprecated name of RetryFailedTrialCallback).
  Storage URLs are shown and logged with their password replaced by ***.
- `retrain` trains the best trial's configuration on train+validation for a fixed number of
  epochs and evaluates it once on the test split, which no trial decision has used.

Neutral: no deep-learning framework is imported here (the backend is, inside train.run).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

from galmorph import tracking
from galmorph.config import TrainConfig, build, check_choices, flat, nested, option
from galmorph.core import training
from galmorph.core.errors import GalmorphError
from galmorph.core.paths import experiments_dir
from galmorph.tracking import figures as plots
from galmorph.tracking import redact
from galmorph.tracking.tags import ROLE, run_name
from galmorph.workflows import prepare, train

SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband", "none")
DEFAULT_STORAGE = "sqlite:///optuna.db"
OBJECTIVE = "best_val_accuracy"  # what train.run returns and the study maximises
MONITOR = "val_accuracy"  # what the reporter reports to the trial each epoch
DIVERGED = "training diverged"  # how training.EpochReporter words a NaN/inf loss
# TrainConfig fields a search space may set. Everything else defines the data, the split
# or the bookkeeping, which must stay fixed within a study (the data is loaded once).
TUNABLE = ("learning_rate", "batch_size", "optimizer", "weight_decay", "label_smoothing", "class_weights",
           "width", "dense_units", "dropout", "batchnorm", "augment")
# What makes two invocations the same study: resuming with any of these changed would mix
# values measured on different data or budgets. The dataset is compared by content digest,
# so workers on other machines may keep the file at another path.
IDENTITY = ("model", "backend", "scheme", "band", "max_images", "seed", "val_fraction", "test_fraction",
            "epochs", "crop_fraction", "dataset_digest")


class TrialFailed(GalmorphError):
    """A trial that failed on its own (its sampled settings diverged): the study goes on.
    Any other error stops the study, since every later trial would hit it too."""


@dataclass
class TuneConfig:
    """Settings of one `galmorph tune` invocation (CLI flags and MLproject `tune` parameters):
    the TrainConfig every trial starts from (`base`, its settings as flags of their own) and
    the study's settings. The search space overrides some of base's settings per trial."""

    base: TrainConfig = nested(TrainConfig, exclude=("log_model", "tta", "explain", "experiment", "run_name"),
                               defaults={"epochs": 10, "log_model": False, "tta": False})
    n_trials: int = option(20, "trials this invocation runs (a resumed study adds this many; 0 = until --timeout)")
    timeout: float = option(0.0, "stop starting new trials after this many seconds (0 = no limit)")
    study_name: str = option("", "Optuna study name; rerunning with the same name and storage continues the study (default: <model>-<backend>-<dataset>-<scheme>)")
    storage: str = option("", f"Optuna storage URL: an SQLite file or a PostgreSQL URL shared by workers (default: {DEFAULT_STORAGE}, apart from mlflow.db); give a password via PGPASSWORD or ~/.pgpass rather than in the URL")
    sampler: str = option("tpe", "sampler: tpe (default), random, or cmaes (CMA-ES on the numeric parameters, the rest sampled independently)", SAMPLERS)
    sampler_seed: int = option(-1, "seed of the sampler, combined with the number of trials already in the study so that a resumed study draws new points (-1: also mixed with the process id, so that workers started together differ)")
    pruner: str = option("median", "pruner, asked once per epoch with the validation accuracy: median, hyperband or none", PRUNERS)
    n_startup_trials: int = option(5, "median pruner: trials that finish unpruned before pruning starts")
    n_warmup_steps: int = option(1, "median pruner: epochs of each trial that are never pruned")
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
        self.train_config().validate()
        return self


@dataclass
class RetrainConfig:
    """Settings of `galmorph retrain`: the best trial of a study, trained on train+validation."""

    study_name: str = option("", "the Optuna study to take the best trial from (required)")
    storage: str = option("", f"its Optuna storage URL (default: {DEFAULT_STORAGE})")
    epochs: int = option(0, "epochs on train+validation (0 = the best trial's best epoch + 1, where its validation loss was lowest)")
    dataset: str = option("", "the dataset path, where it differs from the one the study recorded (same content required)")
    threads: int = option(0, "CPU threads for the framework (0 = all cores)")
    tta: bool = option(False, "also report test metrics averaged over the 40 views")
    log_model: bool = option(True, "log the retrained model to MLflow")
    experiment: str = option("galmorph-tune", "MLflow experiment name for runs started outside `mlflow run`", mlproject=False)
    run_name: str = option("", "MLflow run name (default: <study>-retrain-trial-<n>)", mlproject=False)


# ---------------------------------------------------------------------------------------
# search spaces


@dataclass(frozen=True)
class Param:
    """One entry of a search space: an Optuna parameter that sets one TrainConfig field."""

    name: str
    field: str
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: tuple = ()  # ((param name, (allowed values...)), ...)

    def candidates(self) -> list:
        """Values that bound this parameter: checked against TrainConfig.validate()."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    model: str
    params: tuple[Param, ...]
    path: Path
    text: str

    def fields(self) -> list[str]:
        return sorted({p.field for p in self.params})


_PARAM_KEYS = {"type", "field", "low", "high", "log", "step", "choices", "when"}


def space_path(model: str, search_space: str = "") -> Path:
    if search_space:
        path = Path(search_space).expanduser()
    else:
        path = experiments_dir() / "search_spaces" / f"{model}.yaml"
    if not path.is_file():
        raise GalmorphError(f"search space {path} does not exist; write one like experiments/search_spaces/c2.yaml")
    return path


def load_space(model: str, search_space: str = "") -> SearchSpace:
    """Read and check a search space YAML file; raise a one-line GalmorphError on the first problem."""
    import yaml

    path = space_path(model, search_space)
    text = path.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GalmorphError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    where = path.name
    if not isinstance(doc, dict) or not isinstance(doc.get("params"), dict) or not doc["params"]:
        raise GalmorphError(f"{where}: expected a mapping with `model` and a non-empty `params` mapping")
    unknown = set(doc) - {"model", "params", "description"}
    if unknown:
        raise GalmorphError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; allowed: model, params, description")
    if doc.get("model") != model:
        raise GalmorphError(f"{where} is a search space for model {doc.get('model')!r}, not {model!r}")
    config_fields = {f.name: f for f in fields(TrainConfig)}
    params: list[Param] = []
    for name, raw in doc["params"].items():
        params.append(_parse_param(where, str(name), raw, config_fields, {p.name: p for p in params}))
    _check_fields_set_once(where, params)
    base = TrainConfig(model=model)
    for p in params:
        for value in p.candidates():
            try:
                base.replace(**{p.field: value}).validate()
            except GalmorphError as exc:
                raise GalmorphError(f"{where}: {p.name} = {value!r} is not a valid {p.field}: {exc}") from None
    return SearchSpace(model, tuple(params), path, text)


def _parse_param(where, name, raw, config_fields, earlier) -> Param:
    if not isinstance(raw, dict):
        raise GalmorphError(f"{where}: {name} must be a mapping with a `type`")
    unknown = set(raw) - _PARAM_KEYS
    if unknown:
        raise GalmorphError(f"{where}: {name} has unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_PARAM_KEYS))}")
    target = raw.get("field", name)
    if target not in config_fields:
        raise GalmorphError(f"{where}: {name} sets {target!r}, which is no TrainConfig field")
    if target not in TUNABLE:
        raise GalmorphError(f"{where}: {target} cannot be tuned (it fixes the data or the bookkeeping of a study); "
                            f"tunable: {', '.join(TUNABLE)}")
    kind = raw.get("type")
    field_type = config_fields[target].type
    field_type = field_type if isinstance(field_type, str) else field_type.__name__
    when = _parse_when(where, name, raw.get("when"), earlier)
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise GalmorphError(f"{where}: {name} is categorical and needs a non-empty list `choices`")
        if len(set(map(repr, choices))) != len(choices):
            raise GalmorphError(f"{where}: {name} lists a choice twice")
        for c in choices:
            if not isinstance(c, (str, int, float, bool)) or not _fits(field_type, c):
                raise GalmorphError(f"{where}: {name} choice {c!r} is not a {field_type} (field {target})")
        extra = set(raw) - {"type", "field", "choices", "when"}
        if extra:
            raise GalmorphError(f"{where}: {name} is categorical; {', '.join(sorted(extra))} do not apply")
        return Param(name, target, kind, choices=tuple(choices), when=when)
    if kind in ("float", "int"):
        if field_type == "str" or (kind == "float" and field_type == "int"):
            raise GalmorphError(f"{where}: {name} is a {kind} but {target} is a {field_type}")
        low, high = raw.get("low"), raw.get("high")
        for key, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and not isinstance(value, int)):
                raise GalmorphError(f"{where}: {name} needs a numeric `{key}` ({kind}), got {value!r}")
        if not low < high:
            raise GalmorphError(f"{where}: {name} needs low < high, got {low} and {high}")
        log, step = bool(raw.get("log", False)), raw.get("step")
        if log and low <= 0:
            raise GalmorphError(f"{where}: {name} is log-scaled and needs low > 0, got {low}")
        if log and step is not None:
            raise GalmorphError(f"{where}: {name}: `log` and `step` cannot be combined")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
            raise GalmorphError(f"{where}: {name} needs a positive `step`, got {step!r}")
        return Param(name, target, kind, low=low, high=high, log=log, step=step, when=when)
    raise GalmorphError(f"{where}: {name} has type {kind!r}; use float, int or categorical")


def _fits(field_type: str, value) -> bool:
    if field_type == "str":
        return isinstance(value, str)
    if field_type == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if field_type == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, bool)


def _parse_when(where, name, raw, earlier) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise GalmorphError(f"{where}: {name}: `when` must map an earlier parameter to a list of its values")
    out = []
    for parent, allowed in raw.items():
        if parent not in earlier:
            raise GalmorphError(f"{where}: {name} depends on {parent!r}, which is not a parameter listed before it")
        if earlier[parent].kind != "categorical":
            raise GalmorphError(f"{where}: {name} depends on {parent}, which must be categorical")
        allowed = allowed if isinstance(allowed, list) else [allowed]
        bad = [a for a in allowed if a not in earlier[parent].choices]
        if bad or not allowed:
            raise GalmorphError(f"{where}: {name} depends on {parent} taking {bad or allowed}, not among its choices "
                                f"{list(earlier[parent].choices)}")
        out.append((parent, tuple(allowed)))
    return tuple(out)


def _check_fields_set_once(where, params: list[Param]) -> None:
    """Several entries may set one field only when conditions on one parameter keep them apart."""
    by_field: dict[str, list[Param]] = {}
    for p in params:
        by_field.setdefault(p.field, []).append(p)
    for target, group in by_field.items():
        if len(group) < 2:
            continue
        parents = {tuple(k for k, _ in p.when) for p in group}
        if any(not p.when for p in group) or len(parents) != 1 or len(next(iter(parents))) != 1:
            raise GalmorphError(f"{where}: {', '.join(p.name for p in group)} all set {target}; give each a `when` "
                                "on the same parameter so that only one applies")
        seen: set = set()
        for p in group:
            values = set(p.when[0][1])
            if seen & values:
                raise GalmorphError(f"{where}: {', '.join(p.name for p in group)} set {target} for overlapping "
                                    f"values {sorted(map(str, seen & values))} of {p.when[0][0]}")
            seen |= values


def sample(trial, space: SearchSpace) -> dict:
    """Suggest every applicable parameter of `space`; return TrainConfig overrides {field: value}."""
    chosen: dict = {}
    overrides: dict = {}
    for p in space.params:
        if any(parent not in chosen or chosen[parent] not in allowed for parent, allowed in p.when):
            continue
        if p.kind == "categorical":
            value = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            value = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=int(p.step or 1))
        else:
            value = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        chosen[p.name] = value
        overrides[p.field] = value
    return overrides


# ---------------------------------------------------------------------------------------
# storage, sampler, pruner


def _quiet_optuna():
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(url: str, heartbeat_interval: int = 0, grace_period: int = 0, max_retry: int = 3):
    """An Optuna RDBStorage for `url`; with heartbeats, dead workers' trials are failed and re-queued."""
    optuna = _quiet_optuna()
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    class RetryStale(RetryHeartbeatStaleTrialCallback):
        """Re-queue a dead worker's trial, and close the MLflow run it left RUNNING."""

        def __call__(self, study, trial):
            _close_stale_child(trial)
            super().__call__(study, trial)

    kwargs = {}
    if heartbeat_interval:
        kwargs = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period or None,
                  "heartbeat_stale_trial_callback": RetryStale(max_retry=max_retry)}
    engine_kwargs = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(postgres_driver(url), engine_kwargs=engine_kwargs, **kwargs)
        except Exception as exc:  # unreachable server, bad URL, missing driver: a user's problem
            text = str(exc)
            # workers started together on an empty database race to create Optuna's tables;
            # the loser finds them made a moment later
            if attempt < 3 and ("already exists" in text or "duplicate key" in text):
                time.sleep(0.5 + random.random())
                continue
            reason = redact(text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
            raise GalmorphError(f"cannot open the Optuna storage {redact(url)}: {reason}") from None


def postgres_driver(url: str) -> str:
    """postgresql://... with the driver that is installed: SQLAlchemy 2.1 takes a bare
    postgresql:// to mean psycopg (3), while galmorph[postgres] installs psycopg2."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def _close_stale_child(trial) -> None:
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        return
    with contextlib.suppress(Exception):
        import mlflow

        client = mlflow.MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "optuna_state", "failed")
            client.set_tag(run_id, "failure_reason", "the worker stopped sending heartbeats (killed or lost); "
                                                     "the trial was failed and re-queued")
            client.set_terminated(run_id, "KILLED")


def make_sampler(config: TuneConfig, space: SearchSpace, seed: int):
    optuna = _quiet_optuna()
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    tpe = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if config.sampler == "tpe":
        return tpe
    if not any(p.kind in ("float", "int") for p in space.params):
        raise GalmorphError(f"CMA-ES samples numeric parameters and {space.path.name} has none; use --sampler tpe")
    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise GalmorphError("the cmaes sampler needs the cmaes package: pip install cmaes") from None
    # CMA-ES where it applies (the numeric parameters present in every trial); the
    # categorical and conditional ones go to TPE.
    return optuna.samplers.CmaEsSampler(seed=seed, independent_sampler=tpe, warn_independent_sampling=False)


def make_pruner(config: TuneConfig):
    optuna = _quiet_optuna()
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_steps)
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=config.base.epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------------------------------
# the objective


class _ReportingTrial:
    """The trial as the per-epoch reporter sees it (report, should_prune). `started` records
    the MLflow child run id on the trial as soon as the run exists, so that a surviving worker
    can close the run of a worker that died mid-trial."""

    def __init__(self, trial):
        self.trial = trial
        self.n_reports = 0
        self.last_value = None
        self.run_id = None

    def started(self, run_id: str) -> None:
        self.run_id = run_id
        self.trial.set_user_attr("mlflow_run_id", run_id)

    def report(self, value: float, step: int) -> None:
        self.trial.report(value, step)
        self.n_reports += 1
        self.last_value = float(value)

    def should_prune(self) -> bool:
        return self.trial.should_prune()


def objective_value(result: dict) -> float:
    """The study's objective from train.run's metrics; a missing or NaN value is an error."""
    if OBJECTIVE not in result:
        raise GalmorphError(f"the run returned no {OBJECTIVE} (it has {', '.join(sorted(result)) or 'nothing'})")
    return tracking.require_finite(OBJECTIVE, float(result[OBJECTIVE]))


def make_objective(base: TrainConfig, space: SearchSpace, prepared, study_name: str):
    """objective(trial) -> validation accuracy; everything but sampling is train.run's."""
    import optuna

    def objective(trial) -> float:
        overrides = sample(trial, space)
        trial.set_user_attr("config_overrides", overrides)
        trial.set_user_attr("epochs_max", base.epochs)
        trial.set_user_attr("mlflow_run_id", "")  # a retried trial inherits the dead one's attrs
        config = base.replace(**overrides, run_name=f"{study_name}-trial-{trial.number}")
        tags = {"optuna_study": study_name, "optuna_trial_number": str(trial.number), ROLE: "trial",
                "mlflow.runName": config.run_name}  # tracking.run names only top-level runs
        retry_of = _retried_trial_number(trial)
        if retry_of is not None:
            tags["optuna_retry_of"] = str(retry_of)
        reporting = _ReportingTrial(trial)
        try:
            result = train.run(config, prepared=prepared, trial=reporting, nested=True, extra_tags=tags,
                               started=reporting.started)
            if reporting.n_reports == 0:
                raise GalmorphError(f"the {base.backend} backend reported no {MONITOR} per epoch; "
                                    "pruning would silently never happen")
            value = objective_value(result)
        except training.Pruned as exc:
            _finish_child(reporting.run_id, "pruned", reporting.last_value, reason=str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        except BaseException as exc:
            _finish_child(reporting.run_id, "failed", None,
                          reason=redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            if isinstance(exc, GalmorphError) and str(exc).startswith(DIVERGED):
                raise TrialFailed(str(exc)) from None
            raise
        trial.set_user_attr("best_epoch", int(result.get("best_epoch", -1)))
        trial.set_user_attr("epochs_run", int(result.get("epochs_run", reporting.n_reports)))
        _finish_child(reporting.run_id, "complete", value)
        return value

    return objective


def _retried_trial_number(trial) -> int | None:
    """The number of the dead trial this one re-runs (Trial has no system_attrs in Optuna 5)."""
    from optuna.trial import TrialState

    for frozen in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number == trial.number:
            return frozen.system_attrs.get("failed_trial")  # set by RetryHeartbeatStaleTrialCallback
    return None


def _finish_child(run_id: str | None, state: str, value: float | None, reason: str = "") -> None:
    """Record the trial's state and value on its child run. A pruned trial stopped on
    purpose: its run (ended FAILED by the Pruned exception) becomes FINISHED."""
    if not run_id:
        return
    import mlflow

    client = mlflow.MlflowClient()
    client.set_tag(run_id, "optuna_state", state)
    if value is not None and math.isfinite(value):
        client.log_metric(run_id, "optuna_value", value)
    if state == "pruned":
        client.set_tag(run_id, "pruned_reason", reason)
        with contextlib.suppress(Exception):
            client.delete_tag(run_id, "failure_reason")
        client.set_terminated(run_id, "FINISHED")


# ---------------------------------------------------------------------------------------
# tune


def tune(config: TuneConfig, *, pruner=None, sampler=None) -> dict:
    """Run (or continue) a study; log it as one MLflow parent run with a child run per trial.

    `pruner` / `sampler` replace the ones config names (Python API, e.g. a test's pruner).
    Returns the study summary: best_value, best_trial, best_params, best_run_id,
    parent_run_id, trial counts by state and the epoch accounting of pruning.
    """
    import mlflow
    import numpy as np

    optuna = _quiet_optuna()

    study_name, storage_url = config.resolved_study_name(), config.resolved_storage()
    base = config.train_config()
    tracking.configure(config.experiment)
    tags = {"optuna_study": study_name, "optuna_storage": redact(storage_url), ROLE: "study",
            "model": config.base.model, "backend": config.base.backend, "dataset": config.base.dataset}
    with tracking.run(config.run_name or f"tune-{study_name}", tags=tags) as parent:
        config.validate()  # inside the run: bad settings end it FAILED with the reason, like train.run
        space = load_space(config.base.model, config.search_space)
        tracking.log_params({**flat(config),
                             "storage": redact(storage_url), "study_name": study_name,
                             "search_space_file": str(space.path)})
        storage = open_storage(storage_url, config.heartbeat_interval, config.grace_period, config.max_retry)
        prepared = prepare.prepare(base)  # once, for every trial of this invocation
        identity = {**{k: getattr(base, k) for k in IDENTITY if k != "dataset_digest"},
                    "dataset_digest": prepared.data.digest()}
        pruner = pruner or make_pruner(config)
        study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                    load_if_exists=True, pruner=pruner)
        known = study.user_attrs.get("galmorph_identity")
        if known is None:
            study.set_user_attr("galmorph_identity", identity)
            study.set_user_attr("galmorph_base_config", base.to_dict())
            study.set_user_attr("search_space", space.text)
        elif known != identity:
            diff = ", ".join(f"{k}: {known.get(k)!r} -> {v!r}" for k, v in identity.items() if known.get(k) != v)
            raise GalmorphError(f"study {study_name!r} was run with other settings ({diff}); "
                                "use another --study-name or the study's settings")
        n_before = len(study.trials)
        # a resumed study must not redraw the points it started with, hence n_before
        entropy = [config.sampler_seed, n_before] if config.sampler_seed >= 0 else [config.base.seed, n_before, os.getpid()]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        study.sampler = sampler or make_sampler(config, space, seed)
        mlflow.set_tags({"optuna_trials_before": str(n_before), "optuna_sampler_seed": str(seed),
                         "dataset_digest": identity["dataset_digest"]})
        print(f"study {study_name} in {redact(storage_url)}: {n_before} trials so far; "
              f"{config.n_trials or 'unlimited'} more, {config.sampler} sampler, {config.pruner} pruner",
              file=sys.stderr)
        parent_id = parent.info.run_id
        objective = make_objective(base, space, prepared, study_name)
        study.optimize(objective, n_trials=config.n_trials or None, timeout=config.timeout or None,
                       catch=(TrialFailed,), callbacks=[_progress(parent_id)], gc_after_trial=True)
        summary = summarize(study, n_before)
        summary["parent_run_id"] = parent_id
        _log_study(study, summary, space, parent_id)
    _print_summary(summary)
    return summary


def _progress(parent_id: str):
    """After each trial: the study's best value so far on the parent, step = trial number."""

    def callback(study, trial) -> None:
        import mlflow

        with contextlib.suppress(ValueError):  # no complete trial yet
            mlflow.MlflowClient().log_metric(parent_id, "best_value_so_far", study.best_value, step=trial.number)

    return callback


def summarize(study, n_before: int = 0) -> dict:
    """Counts by state and the epoch accounting of the whole study (all invocations)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    by_state = {s: [t for t in trials if t.state == s] for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}

    def ran(t) -> int:
        return len(t.intermediate_values)

    def budget(t) -> int:
        return int(t.user_attrs.get("epochs_max", 0)) or ran(t)

    saved_pruning = sum(budget(t) - ran(t) for t in by_state[TrialState.PRUNED])
    saved_early = sum(budget(t) - ran(t) for t in by_state[TrialState.COMPLETE])
    per_epoch = [t.duration.total_seconds() / ran(t) for t in by_state[TrialState.COMPLETE] if t.duration and ran(t)]
    epoch_s = float(sorted(per_epoch)[len(per_epoch) // 2]) if per_epoch else float("nan")
    out = {
        "study_name": study.study_name, "n_trials": len(trials), "n_trials_this_run": len(trials) - n_before,
        "n_complete": len(by_state[TrialState.COMPLETE]), "n_pruned": len(by_state[TrialState.PRUNED]),
        "n_failed": len(by_state[TrialState.FAIL]),
        "epochs_run": sum(ran(t) for t in done), "epochs_budget": sum(budget(t) for t in done),
        "epochs_saved_by_pruning": saved_pruning, "epochs_saved_by_early_stopping": saved_early,
        "median_epoch_time_s": epoch_s, "time_saved_by_pruning_s": saved_pruning * epoch_s,
        "trial_time_s": sum(t.duration.total_seconds() for t in done if t.duration),
        "best_value": None, "best_trial": None, "best_params": {}, "best_run_id": None, "best_config": {},
    }
    out["epochs_saved_fraction"] = 1 - out["epochs_run"] / out["epochs_budget"] if out["epochs_budget"] else 0.0
    with contextlib.suppress(ValueError):
        best = study.best_trial
        out.update(best_value=best.value, best_trial=best.number, best_params=dict(best.params),
                   best_run_id=best.user_attrs.get("mlflow_run_id") or None,
                   best_config=dict(best.user_attrs.get("config_overrides", {})))
    return out


def _log_study(study, summary: dict, space: SearchSpace, parent_id: str) -> None:
    import mlflow
    import yaml

    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and v is not None and math.isfinite(float(v)) and k != "best_trial"}
    mlflow.log_metrics({k: float(v) for k, v in numbers.items()})
    if summary["best_trial"] is not None:
        mlflow.set_tags({"best_trial_number": str(summary["best_trial"]), "best_run_id": summary["best_run_id"] or ""})
        tracking.log_params({f"best_{k}": v for k, v in summary["best_params"].items()})
    else:
        mlflow.set_tag("best_trial_number", "none")
    skipped = []
    with tracking.artifact_dir() as out:
        (out / "search_space.yaml").write_text(space.text)
        (out / "study_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if summary["best_config"]:
            (out / "best_config.yaml").write_text(yaml.safe_dump(summary["best_config"], sort_keys=False))
        with contextlib.suppress(Exception):
            frame = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params", "user_attrs"))
            frame.to_csv(out / "trials.csv", index=False)
        (out / "plots").mkdir()
        skipped = study_plots(study, out / "plots")
    if skipped:
        mlflow.set_tag("plots_skipped", "; ".join(skipped)[:4000])


PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "intermediate_values")


def study_plots(study, folder: Path) -> list[str]:
    """Write the study's plots as PNG; return 'name: reason' for each one that could not be made."""

    plots.pyplot()  # the Agg backend, before optuna imports pyplot
    import optuna.visualization.matplotlib as vm

    skipped = []
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(vm, f"plot_{name}")(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(max(fig.get_figwidth(), 8), max(fig.get_figheight(), 5))
            plots.save(fig, folder / f"{name}.png")
        except Exception as exc:  # too few trials for importances, etc.: the others still get drawn
            skipped.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return skipped


def _print_summary(s: dict) -> None:
    best = (f"best {OBJECTIVE} {s['best_value']:.4f} (trial {s['best_trial']}, run {s['best_run_id']})"
            if s["best_trial"] is not None else "no complete trial yet")
    print(f"study {s['study_name']}: {s['n_trials']} trials ({s['n_complete']} complete, {s['n_pruned']} pruned, "
          f"{s['n_failed']} failed); {best}; epochs run {s['epochs_run']} of {s['epochs_budget']} "
          f"({s['epochs_saved_by_pruning']} saved by pruning)")


# ---------------------------------------------------------------------------------------
# retrain


def retrain(config: RetrainConfig) -> dict:
    """Train the best trial's configuration on train+validation and test it once.

    The split is the study's (same seed, fractions, max_images), so the test images are the
    ones no trial decision used. Early stopping is off: the run trains a fixed number of
    epochs (the best trial's best epoch + 1 unless given) and logs `study_best_val_accuracy`
    beside its test metrics; its val_* metrics are measured on images it trained on (tag
    val_merged_into_train=true).
    """
    import mlflow

    optuna = _quiet_optuna()

    if not config.study_name:
        raise GalmorphError("retrain needs --study-name (and --storage where the study is not in the default)")
    storage_url = config.storage or DEFAULT_STORAGE
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=config.study_name, storage=storage)
    except KeyError:
        names = optuna.study.get_all_study_names(storage)
        raise GalmorphError(f"no study {config.study_name!r} in {redact(storage_url)}; it has: "
                            f"{', '.join(names) or 'none'}") from None
    try:
        best = study.best_trial
    except ValueError:
        raise GalmorphError(f"study {config.study_name!r} has no complete trial to retrain") from None
    base_dict = dict(study.user_attrs.get("galmorph_base_config") or {})
    if not base_dict:
        raise GalmorphError(f"study {config.study_name!r} was not made by galmorph tune (no galmorph_base_config)")
    base = TrainConfig(**base_dict)
    epochs = config.epochs or max(1, int(best.user_attrs.get("best_epoch", base.epochs - 1)) + 1)
    cfg = base.replace(**best.user_attrs.get("config_overrides", {}), epochs=epochs, patience=0,
                       log_model=config.log_model, tta=config.tta, threads=config.threads,
                       experiment=config.experiment, dataset=config.dataset or base.dataset,
                       run_name=config.run_name or f"{config.study_name}-retrain-trial-{best.number}")
    cfg.validate()
    prepared = prepare.prepare(cfg, merge_val_into_train=True)
    want = (study.user_attrs.get("galmorph_identity") or {}).get("dataset_digest")
    if want and prepared.data.digest() != want:
        raise GalmorphError(f"the dataset {cfg.dataset} differs from the study's (digest {prepared.data.digest()} "
                            f"vs {want}); pass --dataset with the study's data")
    tags = {"optuna_study": config.study_name, "optuna_trial_number": str(best.number), ROLE: "retrain",
            "val_merged_into_train": "true", "study_best_run_id": best.user_attrs.get("mlflow_run_id") or "",
            "optuna_storage": redact(storage_url)}
    started = []
    result = train.run(cfg, prepared=prepared, extra_tags=tags, started=started.append)
    run_id = started[0]
    mlflow.MlflowClient().log_metric(run_id, "study_best_val_accuracy", float(best.value))
    out = {"study_name": config.study_name, "best_trial": best.number, "study_best_val_accuracy": float(best.value),
           "test_accuracy": float(result["test_accuracy"]), "epochs": epochs, "run_id": run_id,
           "n_train": int(prepared.split.train.size)}
    with contextlib.suppress(Exception):
        study.set_user_attr("retrain", out)
    print(f"retrained trial {best.number} of {config.study_name} for {epochs} epochs on train+validation: "
          f"study val accuracy {best.value:.4f}, test accuracy {out['test_accuracy']:.4f} (run {run_id})")
    return out
