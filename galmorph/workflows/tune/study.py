"""Running a study: `tune(TuneConfig)` opens (or continues) the Optuna study, loads the data
once and optimizes the objective, with one MLflow parent run per invocation and a nested child
run per trial; the sampler and pruner come from `make_sampler` / `make_pruner`."""

from __future__ import annotations

import contextlib
import os
import socket
import sys

from galmorph import tracking
from galmorph.config import TrainConfig, flat
from galmorph.core.errors import GalmorphError
from galmorph.tracking import redact
from galmorph.tracking.tags import ROLE, WORKER_HOST, WORKER_PID
from galmorph.workflows import prepare
from galmorph.workflows.tune.config import BASELINE, IDENTITY, UNEXPRESSED, TuneConfig
from galmorph.workflows.tune.objective import TrialFailed, make_objective
from galmorph.workflows.tune.space import SearchSpace, baseline, load_space
from galmorph.workflows.tune.storage import WorkerHeartbeat, open_storage, quiet_optuna
from galmorph.workflows.tune.summary import log_study, print_summary, summarize


def make_sampler(config: TuneConfig, space: SearchSpace, seed: int):
    """The sampler config names, seeded with `seed`; cmaes needs numeric parameters and the cmaes package."""
    optuna = quiet_optuna()
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
    """The pruner config names; its steps are epochs, or folds with cv_folds (hyperband's budget)."""
    optuna = quiet_optuna()
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_steps)
    if config.pruner == "hyperband":
        steps = config.cv_folds or config.base.epochs  # a step is a fold under cross-validation
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=steps, reduction_factor=3)
    return optuna.pruners.NopPruner()


def tune(config: TuneConfig, *, pruner=None, sampler=None) -> dict:
    """Run (or continue) a study; log it as one MLflow parent run with a child run per trial.

    `pruner` / `sampler` replace the ones config names (Python API, e.g. a test's pruner).
    Returns the study summary: best_value, best_trial, best_params, best_run_id,
    parent_run_id, trial counts by state and the epoch accounting of pruning.
    """
    study_name, storage_url = config.resolved_study_name(), config.resolved_storage()
    base = config.train_config()
    problem = tracking.validated(config.validate)  # raised inside the run: it ends FAILED, like train.run
    tracking.configure(config.experiment)
    import mlflow  # after the settings are checked: importing it takes seconds
    tags = {"optuna_study": study_name, "optuna_storage": redact(storage_url), ROLE: "study",
            "model": config.base.model, "backend": config.base.backend, "dataset": config.base.dataset,
            WORKER_HOST: socket.gethostname(), WORKER_PID: str(os.getpid())}
    with tracking.run(config.run_name or f"tune-{study_name}", tags=tags) as parent:
        if problem is not None:
            raise problem
        space = load_space(config.base.model, config.search_space)
        tracking.log_params({**flat(config),
                             "storage": redact(storage_url), "study_name": study_name,
                             "search_space_file": str(space.path)})
        storage = open_storage(storage_url, config.heartbeat_interval, config.grace_period, config.max_retry)
        prepared = prepare.prepare(base)  # once, for every trial of this invocation
        identity = {**{k: getattr(base, k) for k in IDENTITY if k != "dataset_digest"},
                    "dataset_digest": prepared.data.digest()}
        if config.cv_folds:  # another objective; absent without CV, so studies made before it still resume
            identity["cv_folds"] = config.cv_folds
        study = _open_study(study_name, storage, identity, pruner or make_pruner(config), base, space)
        parent_id = parent.info.run_id
        with _worker_heartbeat(config, study, storage, parent_id):
            # trials run or running before this invocation (not a waiting trial 0 it is about to run)
            n_before = sum(1 for t in study.get_trials(deepcopy=False) if t.state.name != "WAITING")
            seed = _sampler_seed(config, n_before)
            study.sampler = sampler or make_sampler(config, space, seed)
            mlflow.set_tags({"optuna_trials_before": str(n_before), "optuna_sampler_seed": str(seed),
                             "dataset_digest": identity["dataset_digest"]})
            print(f"study {study_name} in {redact(storage_url)}: {n_before} trials so far; "
                  f"{config.n_trials or 'unlimited'} more, {config.sampler} sampler, {config.pruner} pruner",
                  file=sys.stderr)
            objective = make_objective(base, space, prepared, study_name, parent_id, config.cv_folds)
            study.optimize(objective, n_trials=config.n_trials or None, timeout=config.timeout or None,
                           catch=(TrialFailed,), callbacks=[_progress(parent_id)], gc_after_trial=True)
            summary = summarize(study, n_before, parent_id)
            summary["parent_run_id"] = parent_id
            log_study(study, summary, space)
    print_summary(summary)
    return summary


def _worker_heartbeat(config: TuneConfig, study, storage, run_id: str):
    """This worker's beat in the study while it works on it (none without heartbeats): a
    surviving worker closes the study run of a worker that stopped beating."""
    if not config.heartbeat_interval:
        return contextlib.nullcontext()
    grace = config.grace_period or 2 * config.heartbeat_interval
    return WorkerHeartbeat(study, storage, run_id, config.heartbeat_interval, grace)


def _open_study(study_name: str, storage, identity: dict, pruner, base: TrainConfig, space: SearchSpace):
    """Create the study, recording `identity`, the base config and the search space; or load it,
    and refuse (GalmorphError) when it was run with another identity."""
    optuna = quiet_optuna()
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                load_if_exists=True, pruner=pruner)
    known = study.user_attrs.get("galmorph_identity")
    if known is None:
        study.set_user_attr("galmorph_identity", identity)
        study.set_user_attr("galmorph_base_config", base.to_dict())
        study.set_user_attr("search_space", space.text)
        _enqueue_baseline(study, base, space)
    elif known != identity:
        diff = ", ".join(f"{k}: {known.get(k)!r} -> {v!r}" for k, v in identity.items() if known.get(k) != v)
        raise GalmorphError(f"study {study_name!r} was run with other settings ({diff}); "
                            "use another --study-name or the study's settings")
    return study


def _enqueue_baseline(study, base: TrainConfig, space: SearchSpace) -> None:
    """Trial 0 of a new study: `base` itself (what `galmorph train` does with the same flags),
    so that the study's reference lives inside it. Its parameters that the space cannot
    express (space.baseline) are not suggested; the trial keeps base's values for them."""
    params, unexpressed = baseline(space, base)
    # skip_if_exists: two workers that create the study at once enqueue it once
    study.enqueue_trial(params, user_attrs={BASELINE: True, UNEXPRESSED: unexpressed}, skip_if_exists=True)


def _sampler_seed(config: TuneConfig, n_before: int) -> int:
    """The sampler's seed for an invocation that finds `n_before` trials in the study."""
    import numpy as np

    # a resumed study must not redraw the points it started with, hence n_before
    entropy = [config.sampler_seed, n_before] if config.sampler_seed >= 0 else [config.base.seed, n_before, os.getpid()]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _progress(parent_id: str):
    """After each trial: the study's best value so far on the parent, step = trial number."""

    def callback(study, trial) -> None:
        import mlflow

        with contextlib.suppress(ValueError):  # no complete trial yet
            mlflow.MlflowClient().log_metric(parent_id, "best_value_so_far", study.best_value, step=trial.number)

    return callback
