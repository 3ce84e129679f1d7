"""The objective of a study: sample a trial's TrainConfig overrides, train through
`galmorph.workflows.train.run` (looked up there at call time, so tests may patch `train.run`)
and return the validation accuracy of the restored best-validation-loss weights. Each trial is
a nested MLflow child run tagged with its Optuna state and value."""

from __future__ import annotations

import contextlib
import dataclasses
import math

from galmorph import tracking
from galmorph.config import TrainConfig
from galmorph.core import training
from galmorph.core.errors import GalmorphError
from galmorph.data import splits
from galmorph.tracking import redact
from galmorph.tracking.tags import ROLE
from galmorph.workflows import train
from galmorph.workflows.tune.config import BASELINE, DIVERGED, MONITOR, OBJECTIVE, UNEXPRESSED
from galmorph.workflows.tune.space import SearchSpace, sample


class TrialFailed(GalmorphError):
    """A trial that failed on its own (its sampled settings diverged): the study goes on.
    Any other error stops the study, since every later trial would hit it too."""


class _ReportingTrial:
    """The trial as the per-epoch reporter sees it (report, should_prune). `started` records
    the MLflow child run id on the trial as soon as the run exists, so that a surviving worker
    can close the run of a worker that died mid-trial."""

    def __init__(self, trial, protected: bool = False):
        self.trial = trial
        self.protected = protected  # trial 0, the base configuration: the study's reference, never pruned
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
        return not self.protected and self.trial.should_prune()


def objective_value(result: dict) -> float:
    """The study's objective from train.run's metrics; a missing or NaN value is an error."""
    if OBJECTIVE not in result:
        raise GalmorphError(f"the run returned no {OBJECTIVE} (it has {', '.join(sorted(result)) or 'nothing'})")
    return tracking.require_finite(OBJECTIVE, float(result[OBJECTIVE]))


def make_objective(base: TrainConfig, space: SearchSpace, prepared, study_name: str, study_run_id: str = "",
                   cv_folds: int = 0):
    """objective(trial) -> validation accuracy; everything but sampling is train.run's.
    `study_run_id`, this worker's study run, is recorded on each trial it runs.

    The study's trial 0 (user attr BASELINE, enqueued by the study) is `base` itself, never
    pruned. With `cv_folds` K >= 2 a trial trains once per fold (galmorph.data.splits.kfold)
    and its value is the mean of the folds' best validation accuracies (see _cross_validate)."""
    import optuna

    folds = _folds(prepared, base, cv_folds) if cv_folds else None

    def objective(trial) -> float:
        overrides = sample(trial, space, fixed=trial.user_attrs.get(UNEXPRESSED) or {})
        if trial.user_attrs.get(BASELINE):  # its suggestions mean base's values (dropout 0.5 for -1): base itself
            overrides = {}
        trial.set_user_attr("config_overrides", overrides)
        trial.set_user_attr("epochs_max", len(folds) if folds else base.epochs)  # steps: folds under CV
        trial.set_user_attr("mlflow_run_id", "")  # a retried trial inherits the dead one's attrs
        trial.set_user_attr("mlflow_study_run_id", study_run_id)  # which worker ran it
        config = base.replace(**overrides, run_name=f"{study_name}-trial-{trial.number}")
        tags = {"optuna_study": study_name, "optuna_trial_number": str(trial.number), ROLE: "trial",
                "mlflow.runName": config.run_name}  # tracking.run names only top-level runs
        retry_of = _retried_trial_number(trial)
        if retry_of is not None:
            tags["optuna_retry_of"] = str(retry_of)
        reporting = _ReportingTrial(trial, protected=bool(trial.user_attrs.get(BASELINE)))
        if reporting.protected:
            tags[BASELINE] = "true"
        try:
            if folds:
                result = _cross_validate(config, folds, prepared, reporting, tags)
            else:
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


def _folds(prepared, base: TrainConfig, k: int) -> list:
    data = prepared.data
    return splits.kfold(prepared.split, data.labels, k, seed=base.seed, groups=data.groups,
                        class_names=data.class_names)


def _cross_validate(config: TrainConfig, folds: list, prepared, reporting: _ReportingTrial, tags: dict) -> dict:
    """One trial over the folds: the trial's MLflow run, a nested train.run per fold, and after
    each fold the running mean of the folds' best validation accuracies reported to the trial
    (the pruner compares trials at equal folds done). Per fold, not per epoch: the running mean
    is the objective's own estimate, while per-epoch values would compare one fold's learning
    curve with another's. Returns the objective (the mean) and the folds' spread."""
    import mlflow
    import numpy as np

    values, best_epochs = [], []
    run_tags = {**tags, "cv_folds": str(len(folds)), "model": config.model, "backend": config.backend,
                "dataset": config.dataset, "scheme": config.scheme, "preset": config.preset}
    with tracking.run(config.run_name, nested=True, tags=run_tags, system_metrics=False) as active:
        reporting.started(active.info.run_id)
        tracking.log_params({**config.to_dict(), "cv_folds": len(folds)})
        for k, fold in enumerate(folds):
            name = f"{config.run_name}-fold-{k}"
            result = train.run(config.replace(run_name=name), prepared=dataclasses.replace(prepared, split=fold),
                               nested=True, extra_tags={**tags, ROLE: "fold", "cv_fold": str(k), "mlflow.runName": name})
            values.append(objective_value(result))
            best_epochs.append(int(result.get("best_epoch", config.epochs - 1)))
            mean = float(np.mean(values))
            mlflow.log_metrics({"cv_fold_val_accuracy": values[-1], "cv_running_mean": mean}, step=k)
            reporting.report(mean, k)
            if reporting.should_prune():
                raise training.Pruned(f"pruned after fold {k} (running mean {OBJECTIVE}={mean:.4f})")
        std = float(np.std(values, ddof=1))
        mlflow.log_metrics({OBJECTIVE: mean, "cv_std": std})
    reporting.trial.set_user_attr("cv_values", values)
    reporting.trial.set_user_attr("cv_std", std)
    # retrain's epochs: the folds' median best epoch
    return {OBJECTIVE: mean, "cv_std": std, "best_epoch": int(np.median(best_epochs)), "epochs_run": len(folds)}


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
