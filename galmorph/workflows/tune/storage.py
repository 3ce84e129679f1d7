"""Optuna storage: any RDB URL (SQLite file, or PostgreSQL shared by workers). With heartbeats,
a trial whose worker died is failed by a surviving worker and re-queued, and the MLflow run it
left RUNNING is closed. Each worker also beats in the study (`WorkerHeartbeat`), so that a
surviving worker closes a dead worker's study run too, whether it died mid-trial or between
trials. URLs appear in errors with their password replaced by ***."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import socket
import threading
import time
import warnings

from galmorph.core import errors
from galmorph.core.errors import GalmorphError
from galmorph.tracking import redact
from galmorph.tracking.tags import FAILURE_REASON

WORKER = "galmorph_worker:"  # study user attr of one worker: WORKER + its MLflow study run id


def quiet_optuna():
    """optuna, with its ExperimentalWarning silenced (heartbeats and TPE's multivariate options,
    which galmorph relies on, are experimental in Optuna) and its "A new study created" line
    left out (galmorph prints its own line about the study); its per-trial lines stay."""
    import logging

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoStudyCreated) for f in handler.filters):
            handler.addFilter(_NoStudyCreated())
    return optuna


class _NoStudyCreated:
    def filter(self, record) -> bool:
        return not str(record.msg).startswith("A new study created")


# what PostgreSQL and SQLite say when two workers create Optuna's schema at the same moment
_CREATE_RACE = ("already exists", "duplicate key", "concurrently", "deadlock detected")


def _chain(exc: BaseException) -> str:
    """The messages of an exception and of every exception it was raised from or during."""
    return " | ".join(str(e) for e in errors.chain(exc))


def open_storage(url: str, heartbeat_interval: int = 0, grace_period: int = 0, max_retry: int = 3):
    """An Optuna RDBStorage for `url`; with heartbeats, dead workers' trials are failed and re-queued."""
    optuna = quiet_optuna()
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    class RetryStale(RetryHeartbeatStaleTrialCallback):
        """Re-queue a dead worker's trial, close the MLflow run it left RUNNING, and the study
        runs of workers that stopped beating (the trial's, usually)."""

        storage = None  # set once the storage exists: the database's clock judges the beats

        def __call__(self, study, trial):
            _close_stale_child(trial)
            super().__call__(study, trial)
            with contextlib.suppress(Exception):  # best effort: the sweep is repeated every beat
                close_dead_workers(study, self.storage, grace_period or 2 * heartbeat_interval)

    kwargs = {}
    if heartbeat_interval:
        kwargs = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period or None,
                  "heartbeat_stale_trial_callback": RetryStale(max_retry=max_retry)}
    engine_kwargs = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(4):
        try:
            storage = optuna.storages.RDBStorage(postgres_driver(url), engine_kwargs=engine_kwargs, **kwargs)
            if heartbeat_interval:
                kwargs["heartbeat_stale_trial_callback"].storage = storage
            return storage
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
            client.set_tag(run_id, FAILURE_REASON, "the worker stopped sending heartbeats (killed or lost); "
                                                   "the trial was failed and re-queued")
            client.set_terminated(run_id, "KILLED")


def db_now(storage) -> dt.datetime:
    """The database's clock, naive UTC: beats are judged as Optuna judges trial heartbeats, by
    one clock, so that the workers' own clocks need not agree."""
    import sqlalchemy

    with storage.engine.connect() as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
    if isinstance(now, str):  # SQLite without a declared type
        now = dt.datetime.fromisoformat(now)
    return now.astimezone(dt.timezone.utc).replace(tzinfo=None) if now.tzinfo else now


class WorkerHeartbeat:
    """This worker's beat in the study, while its study run is open: the user attr
    galmorph_worker:<study run id> = {run_id, host, pid, beat (database time), state}, rewritten
    every `interval` seconds by a thread, which also closes the study runs of workers whose beat
    is older than `grace` seconds (`close_dead_workers`). A context manager."""

    def __init__(self, study, storage, run_id: str, interval: int, grace: int):
        self.study, self.storage, self.run_id = study, storage, run_id
        self.interval, self.grace = interval, grace
        self.record = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="galmorph-worker-heartbeat", daemon=True)

    def beat(self, state: str = "running") -> None:
        self.study.set_user_attr(WORKER + self.run_id,
                                 {**self.record, "beat": db_now(self.storage).isoformat(), "state": state})

    def __enter__(self) -> "WorkerHeartbeat":
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):  # a database gone at the end must not hide the study's outcome
            self.beat("ended")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            # a failed beat or sweep (database restarting) is retried next interval; the thread lives on
            with contextlib.suppress(Exception):
                self.beat()
            with contextlib.suppress(Exception):
                close_dead_workers(self.study, self.storage, self.grace)


def close_dead_workers(study, storage, grace: float) -> list[str]:
    """End KILLED, with a failure_reason, the MLflow study run of every worker of `study` whose
    beat is older than `grace` seconds and whose run is still RUNNING; mark its record dead.
    Returns the run ids closed."""
    now, closed = db_now(storage), []
    for key, record in study.user_attrs.items():
        if not key.startswith(WORKER) or not isinstance(record, dict) or record.get("state") != "running":
            continue
        age = (now - dt.datetime.fromisoformat(record["beat"])).total_seconds()
        if age <= grace:
            continue
        # one record's run may be out of reach (another tracking server): the others still get closed
        with contextlib.suppress(Exception):
            if _close_study_run(record, age):
                closed.append(record["run_id"])
            study.set_user_attr(key, {**record, "state": "dead"})
    return closed


def _close_study_run(record: dict, age: float) -> bool:
    """End a dead worker's study run KILLED if it is still RUNNING; True if it was."""
    import mlflow

    client = mlflow.MlflowClient()
    run_id = record["run_id"]
    if client.get_run(run_id).info.status != "RUNNING":  # it ended the run itself, then died
        return False
    client.set_tag(run_id, FAILURE_REASON, (
        f"the worker (host {record['host']}, pid {record['pid']}) stopped sending heartbeats (killed or lost); "
        f"its last beat was {age:.0f} s before worker host {socket.gethostname()}, pid {os.getpid()} "
        "closed this run"))
    client.set_terminated(run_id, "KILLED")
    return True
