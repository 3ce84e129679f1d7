"""The team setup, for real: one PostgreSQL server holds the Optuna study (database optuna) and
the store of an `mlflow server` on loopback (database mlflow), which also serves the artifacts.
`galmorph tune` workers run as separate processes and reach MLflow over HTTP only. What they
log is read back over HTTP; a worker killed mid-trial has its trial retried and both its runs
(the trial's and its study run) closed KILLED by a surviving worker; `galmorph retrain` logs a
model that loads back over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PG_SECRET, REPO, child_env, run_python, start_mlflow_server, stop_group, wait_for

from galmorph.workflows.tune import open_storage, postgres_driver

STUDY = EXPERIMENT = "team"
HEARTBEAT, GRACE = 1, 5  # seconds: a dead worker is noticed within seconds, a slow live one is not


@dataclass
class Server:
    url: str
    artifacts: Path
    log: Path


@pytest.fixture
def mlflow_server(postgres_server, tmp_path):
    """`mlflow server` on a free loopback port: its store the database mlflow of the test
    PostgreSQL (the password through PGPASSWORD, not in the URI), its artifacts served from
    tmp_path."""
    postgres_server.create_database("mlflow")
    artifacts, log = tmp_path / "mlartifacts", tmp_path / "mlflow-server.log"
    store = postgres_driver(postgres_server.url("mlflow", password=False))
    proc, url = start_mlflow_server(store, artifacts, log, {"PGPASSWORD": PG_SECRET})
    try:
        yield Server(url, artifacts, log)
    finally:
        stop_group(proc, timeout=30)


class Galmorph:
    """One `galmorph` command in its own process: MLflow over HTTP, the password in PGPASSWORD,
    the output in a file (nobody reads a pipe while it runs). Every one is also in `started`,
    so that the end of a failed test stops those still running."""

    started: list = []

    def __init__(self, tmp_path: Path, name: str, server: Server, *args):
        self.log = tmp_path / f"{name}.log"
        env = child_env({"MLFLOW_TRACKING_URI": server.url, "PGPASSWORD": PG_SECRET})
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "galmorph", *map(str, args)], cwd=REPO, env=env,
                                         stdout=out, stderr=subprocess.STDOUT)
        Galmorph.started.append(self)

    def text(self) -> str:
        return self.log.read_text()

    def finish(self, timeout: float = 300) -> None:
        assert self.proc.wait(timeout=timeout) == 0, self.text()[-4000:]


def _worker(tmp_path: Path, name: str, storage: str, server: Server, space: str, n_trials: int) -> Galmorph:
    """A `galmorph tune` worker of the study, on tiny synthetic data with the torch backend."""
    return Galmorph(tmp_path, f"worker-{name}", server, "tune", "--backend", "torch", "--dataset", "synthetic",
                    "--synthetic-n", 120, "--epochs", 2, "--pruner", "none", "--study-name", STUDY,
                    "--storage", storage, "--n-trials", n_trials, "--heartbeat-interval", HEARTBEAT,
                    "--grace-period", GRACE, "--threads", 1, "--experiment", EXPERIMENT, "--search-space", space)


@pytest.fixture
def optuna_storage(postgres_server):
    """The test's own connection to the study's storage; the workers left running by a failed
    test are killed (they are this test's processes; a frozen one too)."""
    yield open_storage(postgres_server.url("optuna"))
    for command in Galmorph.started:
        if command.proc.poll() is None:
            command.proc.kill()
            command.proc.wait(timeout=60)
    Galmorph.started.clear()


def _study(storage):
    import optuna

    return optuna.load_study(study_name=STUDY, storage=storage)


def _study_run(client, experiment_id: str, pid: int):
    """The study run of the worker with process id `pid`."""
    runs = client.search_runs([experiment_id], f"tags.`galmorph.worker_pid` = '{pid}'")
    assert len(runs) == 1, [r.data.tags for r in runs]
    return runs[0]


@pytest.mark.slow
def test_team_setup_over_http(postgres_server, mlflow_server, optuna_storage, small_space, tmp_path):
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    client = MlflowClient(tracking_uri=mlflow_server.url)  # this process's MLflow settings stay as they are
    storage = postgres_server.url("optuna", password=False)

    # two workers at once: A runs two trials; B many, until it is killed below
    a = _worker(tmp_path, "a", storage, mlflow_server, small_space, 2)
    b = _worker(tmp_path, "b", storage, mlflow_server, small_space, 50)
    a.finish()
    assert b.proc.poll() is None, b.text()[-4000:]
    experiment = client.get_experiment_by_name(EXPERIMENT)
    b_run = _study_run(client, experiment.experiment_id, b.proc.pid)
    dead = _kill_mid_trial(b, b_run.info.run_id, client, optuna_storage)
    victim_record = _study(optuna_storage).user_attrs[f"galmorph_worker:{b_run.info.run_id}"]
    assert victim_record["pid"] == b.proc.pid and victim_record["state"] == "running"

    # C starts once the dead trial and B's own beat are past the grace period: its first
    # trial is then the retry, and it closes B's runs
    wait_for(lambda: _stale_for(optuna_storage, dead.number, b_run.info.run_id) > GRACE + 0.5, 60,
             "the killed worker's heartbeats to go stale")
    n_before = len(_study(optuna_storage).trials)
    c = _worker(tmp_path, "c", storage, mlflow_server, small_space, 1)
    # meanwhile, the best trial so far retrained against the server, which logs its model
    retrain = Galmorph(tmp_path, "retrain", mlflow_server, "retrain", "--study-name", STUDY, "--storage", storage,
                       "--threads", 1, "--experiment", EXPERIMENT)
    c.finish()

    trials = {t.number: t for t in _study(optuna_storage).trials}
    assert sorted(trials) == list(range(len(trials))) and len(trials) == n_before + 1
    assert trials[dead.number].state == TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params

    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id], max_results=1000)}
    study_runs = {w: _study_run(client, experiment.experiment_id, w.proc.pid) for w in (a, b, c)}
    _check_runs_of_every_trial(client, trials, runs, study_runs)

    # the retry ran under C; B's trial run and B's study run were closed KILLED, with reasons
    retry_run = runs[retry.user_attrs["mlflow_run_id"]]
    assert retry_run.data.tags["optuna_retry_of"] == str(dead.number)
    assert retry_run.data.tags["mlflow.parentRunId"] == study_runs[c].info.run_id
    dead_run = runs[dead.user_attrs["mlflow_run_id"]]
    assert dead_run.info.status == "KILLED" and dead_run.data.tags["optuna_state"] == "failed"
    assert "stopped sending heartbeats" in dead_run.data.tags["failure_reason"]
    b_final = study_runs[b]
    assert b_final.info.status == "KILLED", b_final.info
    assert f"pid {b.proc.pid}) stopped sending heartbeats" in b_final.data.tags["failure_reason"]
    assert f"pid {c.proc.pid} closed this run" in b_final.data.tags["failure_reason"]
    assert _study(optuna_storage).user_attrs[f"galmorph_worker:{b_run.info.run_id}"]["state"] == "dead"
    for worker in (a, c):
        assert study_runs[worker].info.status == "FINISHED"
        assert _study(optuna_storage).user_attrs[f"galmorph_worker:{study_runs[worker].info.run_id}"]["state"] \
            == "ended"

    retrain_run = _load_the_retrained_model(retrain, client, mlflow_server, tmp_path)
    texts = [w.text() for w in (a, b, c, retrain)] + [mlflow_server.log.read_text()]
    texts += [json.dumps([r.data.params, r.data.tags]) for r in [*runs.values(), retrain_run]]
    assert not any(PG_SECRET in t for t in texts)  # the password reached neither MLflow nor a log


def _kill_mid_trial(worker: Galmorph, study_run_id: str, client, storage):
    """SIGKILL `worker` while it trains a trial whose run has logged its first epoch, and return
    that trial. The worker is frozen (SIGSTOP) while the state is read, so that what is read is
    what it dies with; a run with one epoch of two logged cannot be finishing meanwhile."""
    from optuna.trial import TrialState

    def training_trial():
        assert worker.proc.poll() is None, worker.text()[-4000:]
        worker.proc.send_signal(signal.SIGSTOP)
        running = [t for t in _study(storage).get_trials(states=(TrialState.RUNNING,))
                   if t.user_attrs.get("mlflow_run_id")]
        for trial in running:
            run_id = trial.user_attrs["mlflow_run_id"]
            if client.get_run(run_id).data.tags.get("mlflow.parentRunId") == study_run_id \
                    and len(client.get_metric_history(run_id, "val_accuracy")) == 1:
                worker.proc.send_signal(signal.SIGKILL)
                worker.proc.wait(timeout=60)
                return trial
        worker.proc.send_signal(signal.SIGCONT)
        return None

    return wait_for(training_trial, 240, "worker B to be mid-trial")


def _stale_for(storage, trial_number: int, study_run_id: str) -> float:
    """Seconds since the later of the trial's last heartbeat and its worker's last beat, by the
    database's clock (the one both are judged by)."""
    import sqlalchemy

    from galmorph.workflows.tune.storage import db_now

    with storage.engine.connect() as conn:  # Optuna's own record of the trial's heartbeat
        trial_age = conn.execute(sqlalchemy.text(
            "SELECT EXTRACT(EPOCH FROM LOCALTIMESTAMP - h.heartbeat) FROM trial_heartbeats h "
            "JOIN trials t ON t.trial_id = h.trial_id JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = :study AND t.number = :number"), {"study": STUDY, "number": trial_number}).scalar()
    beat = _study(storage).user_attrs[f"galmorph_worker:{study_run_id}"]["beat"]
    worker_age = (db_now(storage) - dt.datetime.fromisoformat(beat)).total_seconds()
    return min(float(trial_age), worker_age)


def _check_runs_of_every_trial(client, trials: dict, runs: dict, study_runs: dict) -> None:
    """Every trial has its child run under the study run of the worker that ran it, with its
    per-epoch metrics; every finished trial's artifacts, and each study run's, read back over
    HTTP from the server's artifact store."""
    children = {r.info.run_id for r in runs.values() if r.data.tags.get("galmorph.role") == "trial"}
    assert children == {t.user_attrs["mlflow_run_id"] for t in trials.values()}
    parents = {s.info.run_id for s in study_runs.values()}
    assert {runs[c].data.tags["mlflow.parentRunId"] for c in children} == parents
    for trial in trials.values():
        run = runs[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna_trial_number"] == str(trial.number)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server, not a client path
        if trial.state.name != "COMPLETE":
            continue
        assert run.info.status == "FINISHED" and run.data.metrics["optuna_value"] == pytest.approx(trial.value)
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
        local = client.download_artifacts(run.info.run_id, "confusion_matrix.png")
        assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for worker, run in study_runs.items():
        if run.info.status != "FINISHED":
            continue
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"study_summary.json", "trials.csv", "search_space.yaml"} <= names, names
        summary = json.loads(Path(client.download_artifacts(run.info.run_id, "study_summary.json")).read_text())
        n_own = sum(1 for c in children if runs[c].data.tags["mlflow.parentRunId"] == run.info.run_id)
        assert summary["n_trials_this_run"] == n_own and summary["parent_run_id"] == run.info.run_id


def _load_the_retrained_model(retrain: Galmorph, client, server: Server, tmp_path: Path):
    """Once `retrain` is done, a fresh interpreter loads its model back over HTTP (mlflow.pyfunc)
    and predicts class probabilities. Returns the retrain run."""
    retrain.finish()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`galmorph.role` = 'retrain'")
    uri = run.data.tags["model_uri"]
    assert list(server.artifacts.rglob("MLmodel")), "the model's files are not in the server's artifact store"
    loaded = run_python(
        "import json, mlflow, numpy as np\n"
        f"model = mlflow.pyfunc.load_model({uri!r})\n"
        "example = np.asarray(model.input_example, dtype=np.uint8)\n"
        "table = model.predict(example)\n"
        "proba = table[[c for c in table.columns if c.startswith('p_')]].to_numpy()\n"
        "print('PROBA ' + json.dumps({'shape': list(proba.shape), 'sums': proba.sum(axis=1).tolist()}))\n",
        env={"MLFLOW_TRACKING_URI": server.url}, timeout=300, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    out = json.loads(next(line for line in loaded.stdout.splitlines() if line.startswith("PROBA "))[6:])
    assert out["shape"][1] == int(run.data.params["n_classes"]) and out["sums"] == pytest.approx([1.0] * out["shape"][0], abs=1e-4)
    return run
