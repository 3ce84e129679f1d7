"""Optuna storage: any RDB URL (SQLite file, or PostgreSQL shared by workers). With heartbeats,
a trial whose worker died is failed by a surviving worker and re-queued, and the MLflow run it
left RUNNING is closed. URLs appear in errors with their password replaced by ***."""

from __future__ import annotations

import contextlib
import random
import time
import warnings

from galmorph.core.errors import GalmorphError
from galmorph.tracking import redact


def quiet_optuna():
    """optuna, with its ExperimentalWarning silenced: heartbeats and TPE's multivariate options,
    which galmorph relies on, are experimental in Optuna."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# what PostgreSQL and SQLite say when two workers create Optuna's schema at the same moment
_CREATE_RACE = ("already exists", "duplicate key", "concurrently", "deadlock detected")


def _chain(exc: BaseException) -> str:
    """The messages of an exception and of every exception it was raised from or during."""
    texts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " | ".join(texts)


def open_storage(url: str, heartbeat_interval: int = 0, grace_period: int = 0, max_retry: int = 3):
    """An Optuna RDBStorage for `url`; with heartbeats, dead workers' trials are failed and re-queued."""
    optuna = quiet_optuna()
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
            # the loser finds them made a moment later. Optuna wraps the database's own error
            # ("An exception is raised during the commit"), so read the whole chain.
            if attempt < 3 and any(s in _chain(exc) for s in _CREATE_RACE):
                time.sleep(0.5 + random.random())
                continue
            reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            # redacted as one text: a driver's error may quote pieces of the URL's password
            raise GalmorphError(redact(f"cannot open the Optuna storage {url}: {reason}")) from None


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
    """End the MLflow run of a dead worker's trial KILLED, if it is still RUNNING; best effort,
    since a failure here must not stop the retry."""
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
