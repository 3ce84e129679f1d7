"""MLflow glue shared by every command: runs that end FAILED/KILLED on errors, parameters
that coexist with the ones `mlflow run` already logged, and artifacts written atomically."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from pathlib import Path

from galmorph.core import interrupts
from galmorph.core.errors import GalmorphError, chain
from galmorph.tracking.secrets import redact
from galmorph.tracking.tags import FAILURE_REASON
from galmorph.tracking.store import check_artifacts, check_store, store_problem

MONITOR_STOP_S = 5.0  # the most ending a run waits for MLflow's system-metrics thread


class EndFailed(GalmorphError):
    """Run `run_id`'s work is done, but MLflow could not mark it FINISHED: it is still RUNNING."""

    recorded = True  # nowhere to record it: the tracking store is what failed

    def __init__(self, run_id: str, cause: BaseException):
        reason = redact(str(cause)).splitlines()[0][:300] if str(cause).strip() else type(cause).__name__
        super().__init__(f"run {run_id} could not be marked FINISHED, and is still RUNNING: {reason}")
        self.run_id = run_id


def validated(check) -> GalmorphError | None:
    """Call `check()` (a config's validate) before any MLflow call and return its GalmorphError,
    for the caller to raise inside its run, which then ends FAILED with the reason. Where the
    tracking store cannot be used (galmorph.tracking.store), the error is raised at once
    instead: no run can record it, and the store's trouble would only hide it."""
    try:
        check()
    except GalmorphError as exc:
        if store_problem() is not None:
            raise
        return exc
    return None


def configure(experiment: str) -> None:
    """Check the tracking store (once per process, galmorph.tracking.store.check_store), then
    use `experiment`, unless a run is already chosen: by `mlflow run` (MLFLOW_RUN_ID) or by
    an active parent run, whose nested runs belong in its experiment.

    (MLflow 3 deletes MLFLOW_RUN_ID from the environment once start_run has used it, so
    inside a run started that way only the active run tells. MLFLOW_EXPERIMENT_ID alone is
    no sign of `mlflow run`: set_experiment exports it, so honouring it would pin every later
    run of the process to the first experiment.)
    """
    check_store()  # before importing MLflow, which takes seconds
    import mlflow

    if not os.environ.get("MLFLOW_RUN_ID") and mlflow.active_run() is None:
        check_experiment(experiment)
        found = mlflow.set_experiment(experiment)
        # MLflow 3.17: when another process creates the experiment at the same moment,
        # set_experiment returns it without making it active (runs would land in Default)
        mlflow.set_experiment(experiment_id=found.experiment_id)


def check_experiment(name) -> None:
    """An MLflow experiment name must have a visible character (MLflow's own error for an
    empty one is a traceback from deep inside set_experiment)."""
    if not isinstance(name, str) or not name.strip():
        raise GalmorphError(f"experiment must name an MLflow experiment, got {name!r}; pass e.g. --experiment galmorph")


@contextlib.contextmanager
def run(run_name: str | None = None, *, nested: bool = False, tags: dict | None = None,
        system_metrics: bool = True, run_id: str | None = None):
    """Start (or, under `mlflow run` or with `run_id`, continue) a run; end it FAILED or KILLED on errors.

    A GalmorphError or any other exception marks the run FAILED with the reason in the
    `failure_reason` tag; Ctrl-C (KeyboardInterrupt) or SIGTERM marks it KILLED, also when
    the interrupt surfaced as another error (galmorph.core.interrupts.pending), which then
    becomes a KeyboardInterrupt. Signals do not cut the ending of the run short.
    """
    import mlflow

    kwargs = {"nested": nested, "tags": {k: redact(v) for k, v in (tags or {}).items()} or None}
    parent = mlflow.active_run()
    if nested and parent is not None:  # a child lives in its parent's experiment
        kwargs["experiment_id"] = parent.info.experiment_id
    if run_id:  # a resumed run: RUNNING again, under its own name
        kwargs["run_id"] = run_id
    elif not nested and not os.environ.get("MLFLOW_RUN_ID"):
        kwargs["run_name"] = run_name or None
    if system_metrics:
        kwargs["log_system_metrics"] = True
    active = mlflow.start_run(**kwargs)
    try:
        check_artifacts(active.info.artifact_uri)  # before the work, whose results go there
        yield active
    except BaseException as exc:
        signal_name = interrupts.handled()
        if isinstance(exc, KeyboardInterrupt):  # a nested run's is handled already: its message names the signal
            signal_name = signal_name or str(exc) or "KeyboardInterrupt"
        if signal_name is None:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            with interrupts.held():
                _safe_tag(active, FAILURE_REASON, redact(reason)[:4000])
                _end(active, "FAILED", exc)
            raise
        _release_frames(exc)
        with interrupts.held():
            _safe_tag(active, FAILURE_REASON, f"interrupted ({signal_name})")
            _finalize_pending_model(active)
            _end(active, "KILLED", exc)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise KeyboardInterrupt(signal_name) from exc
    else:
        with interrupts.held():
            try:
                _end(active, "FINISHED")
            except Exception as exc:
                raise EndFailed(active.info.run_id, exc) from exc


def _release_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames an interrupt went through.

    A KeyboardInterrupt raised just after a SQLite statement ran (in SQLAlchemy's
    do_execute) leaves that cursor alive in those frames, some in reference cycles, and it
    keeps the database locked: the KILLED tag and status written next waited MLflow's 20 s
    busy timeout per statement and failed ("database is locked"), leaving the run RUNNING.
    """
    import traceback

    for error in chain(exc):
        traceback.clear_frames(error.__traceback__)  # skips the frames still executing


def _end(active, status: str, error: BaseException | None = None) -> None:
    """mlflow.end_run(status), with the system-metrics monitor given MONITOR_STOP_S to stop
    (MLflow joins its thread without a timeout). While an error is on its way out, failing
    to end the run is reported and the error goes on; otherwise the failure is raised."""
    import mlflow

    monitor = _take_monitor(active.info.run_id)
    try:
        mlflow.end_run(status)
    except Exception as exc:
        if error is None:
            raise
        print(f"galmorph: could not mark run {active.info.run_id} {status}: {redact(exc)[:300]}", file=sys.stderr)
    finally:
        if monitor is not None:
            stopper = threading.Thread(target=monitor.finish, name="galmorph-stop-system-metrics", daemon=True)
            stopper.start()
            stopper.join(MONITOR_STOP_S)


def _take_monitor(run_id: str):
    """The run's system-metrics monitor, taken from MLflow's registry (so that end_run does
    not join it), or None (none, or an MLflow without that registry: end_run joins it)."""
    from mlflow.tracking import fluent

    monitors = getattr(fluent, "run_id_to_system_metrics_monitor", None)
    return monitors.pop(run_id, None) if isinstance(monitors, dict) else None


def _finalize_pending_model(active) -> None:
    """A model whose logging was interrupted stays PENDING with part of its files: mark it FAILED."""
    import mlflow

    with contextlib.suppress(Exception):
        model = mlflow.last_logged_model()
        if model is not None and model.source_run_id == active.info.run_id and str(model.status) == "PENDING":
            mlflow.MlflowClient().finalize_logged_model(model.model_id, "FAILED")


def _safe_tag(active, key, value):
    import mlflow

    with contextlib.suppress(Exception):
        mlflow.MlflowClient().set_tag(active.info.run_id, key, value)


def log_params(params: dict) -> None:
    """Log parameters, skipping keys the run already has (`mlflow run` logs its -P values as
    typed; ours are the same settings, possibly spelt differently, e.g. 2e-4 vs 0.0002)."""
    import mlflow

    active = mlflow.active_run()
    existing = set(mlflow.MlflowClient().get_run(active.info.run_id).data.params)
    fresh = {k: redact(v)[:6000] for k, v in params.items() if k not in existing}
    items = list(fresh.items())
    for start in range(0, len(items), 90):
        mlflow.log_params(dict(items[start : start + 90]))


@contextlib.contextmanager
def artifact_dir():
    """A temporary folder whose files are logged as run artifacts when the block ends."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="galmorph-") as tmp:
        yield Path(tmp)
        with interrupts.held():  # an interrupt waits for the copy: no half-copied file in the run
            mlflow.log_artifacts(tmp)


def require_finite(name: str, value: float) -> float:
    import math

    if not math.isfinite(value):
        raise GalmorphError(f"{name} is {value}; the run produced no usable number")
    return value


def record_failure(message: str) -> None:
    """Where `mlflow run` started a run before calling galmorph (MLFLOW_RUN_ID): tag it with
    the reason of a one-line error (MLflow itself marks it FAILED when galmorph exits
    non-zero). Not where the tracking store is the problem: MLflow would retry it for minutes."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        import mlflow

        if store_problem() is None:
            mlflow.MlflowClient().set_tag(run_id, FAILURE_REASON, redact(message)[:4000])
    except Exception as exc:  # the store may be the problem; the message is printed either way
        print(f"galmorph: could not record the failure on run {run_id}: {type(exc).__name__}", file=sys.stderr)
