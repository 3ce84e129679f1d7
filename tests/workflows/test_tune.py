"""Optuna studies (galmorph.workflows.tune): search spaces, pruning, nested MLflow runs, resuming,
retraining, and workers sharing one PostgreSQL study. Training runs in subprocesses (one
framework per process) on tiny synthetic data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import PG_SECRET, REPO, RUN_CHOICE, check_entry_point, child_env, run_python, wait_for

from galmorph.config import TrainConfig
from galmorph.core.errors import GalmorphError
from galmorph.workflows.tune import TUNABLE, RetrainConfig, TuneConfig, load_space, sample

TINY = ["--dataset", "synthetic", "--synthetic-n", "120", "--epochs", "2", "--threads", "2"]
SECRET = PG_SECRET  # the test PostgreSQL role's password (conftest.postgres_server)


def _galmorph(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "galmorph", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=child_env())


EXPERIMENTS = ("tune-test-torch", "tune-test-keras", "resume", "workers")


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One SQLite MLflow store for this module's training tests (each uses its own
    experiment), for this process and its children: creating the schema takes seconds."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{root}"
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", *RUN_CHOICE)}
    import mlflow.tracking.fluent as fluent

    saved_experiment = fluent._active_experiment_id
    fluent._active_experiment_id = None
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    client.search_experiments()  # create the schema before subprocesses share it
    # artifacts under tmp too: an SQLite store's default artifact root is ./mlruns of
    # whichever process creates the experiment, and the children run in the repository
    for name in EXPERIMENTS:
        client.create_experiment(name, artifact_location=(root.parent / "artifacts" / name).as_uri())
    yield uri
    for key, value in saved.items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value
    fluent._active_experiment_id = saved_experiment
    mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"] or None)


def _runs(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


# ---------------------------------------------------------------------------------------
# search spaces, configuration, redaction, monitoring: no training


def test_tune_module_imports_no_framework():
    out = run_python("import sys, galmorph.workflows.tune; "
                     "print([m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules])")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("model", ["c1", "c2"])
def test_search_space_files_are_valid_and_sample_valid_configs(model):
    import optuna

    space = load_space(model)
    assert set(space.fields()) <= set(TUNABLE)
    wanted = {"learning_rate", "batch_size", "dropout", "optimizer", "weight_decay", "width", "dense_units",
              "augment", "label_smoothing", "class_weights"} | ({"batchnorm"} if model == "c1" else set())
    assert set(space.fields()) == wanted
    optimizers = {p.name: p for p in space.params}["optimizer"].choices
    assert set(optimizers) == {"adam", "adamw", "sgd", "adadelta"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        overrides = sample(trial, space)
        config = TrainConfig(model=model).replace(**overrides).validate()
        seen.add(config.optimizer)
        assert "learning_rate" in overrides  # exactly one learning-rate range applies to each optimiser
        assert ("weight_decay" in overrides) == (config.optimizer in ("adamw", "sgd"))
        if config.optimizer == "adadelta":
            assert overrides["learning_rate"] >= 1e-2
        study.tell(trial, 0.5)
    assert seen == set(optimizers)


BAD_SPACES = [
    ({"band": {"type": "categorical", "choices": ["g", "r"]}}, "band cannot be tuned"),
    ({"nonsense": {"type": "float", "low": 0, "high": 1}}, "no TrainConfig field"),
    ({"dropout": {"type": "float", "low": 0.5, "high": 0.1}}, "low < high"),
    ({"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "needs low > 0"),
    ({"dropout": {"type": "float", "low": 0.0, "high": 1.5}}, "not a valid dropout"),
    ({"optimizer": {"type": "categorical", "choices": ["adam", "rmsprop"]}}, "not a valid optimizer"),
    ({"batch_size": {"type": "float", "low": 16, "high": 64}}, "is a float but batch_size is a int"),
    ({"batch_size": {"type": "categorical", "choices": [32, "64"]}}, "is not a int"),
    ({"dropout": {"type": "uniform", "low": 0, "high": 1}}, "has type 'uniform'"),
    ({"dropout": {"type": "float", "low": 0, "high": 0.5, "prior": "x"}}, "unknown key(s) prior"),
    ({"lr": {"field": "learning_rate", "type": "float", "low": 1e-4, "high": 1e-2, "when": {"optimizer": ["adam"]}},
      "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}}, "not a parameter listed before it"),
    ({"optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
      "lr_a": {"field": "learning_rate", "type": "float", "low": 1e-4, "high": 1e-2, "when": {"optimizer": ["adam", "sgd"]}},
      "lr_b": {"field": "learning_rate", "type": "float", "low": 1e-3, "high": 1e-1, "when": {"optimizer": ["sgd"]}}},
     "overlapping values"),
    ({"optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
      "lr": {"field": "learning_rate", "type": "float", "low": 1e-4, "high": 1e-2, "when": {"optimizer": ["adagrad"]}}},
     "not among its choices"),
    ({"batchnorm": {"type": "categorical", "choices": ["true", "false"]}}, "applies to c1 only"),
]


@pytest.mark.parametrize("params,match", BAD_SPACES, ids=[m for _, m in BAD_SPACES])
def test_bad_search_spaces_are_rejected_with_one_line(tmp_path, params, match):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"model": "c2", "params": params}, sort_keys=False))
    with pytest.raises(GalmorphError, match=None) as info:
        load_space("c2", str(path))
    assert match in str(info.value)


def test_search_space_must_match_the_model(tmp_path):
    with pytest.raises(GalmorphError, match="not 'c1'"):
        load_space("c1", str(Path(load_space("c2").path)))
    with pytest.raises(GalmorphError, match="does not exist"):
        load_space("c2", str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("changes,match", [
    ({"grace_period": 5, "heartbeat_interval": 10}, "must exceed heartbeat_interval"),
    ({"grace_period": 5, "heartbeat_interval": 0}, "needs heartbeats"),
    ({"sampler": "grid"}, "unknown sampler"),
    ({"n_trials": 0}, "give a timeout"),
    ({"epochs": 0}, "epochs must be at least 1"),
])
def test_bad_tune_settings(changes, match):
    with pytest.raises(GalmorphError, match=match):
        TuneConfig.of(**changes).validate()


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes"])
def test_each_sampler_explores_the_conditional_space(sampler):
    import optuna

    from galmorph.workflows.tune import make_pruner, make_sampler

    if sampler == "cmaes":
        pytest.importorskip("cmaes")
    config = TuneConfig.of(sampler=sampler)
    space = load_space("c2")
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config, space, seed=3),
                                pruner=make_pruner(config))
    for i in range(12):
        trial = study.ask()
        TrainConfig(model="c2").replace(**sample(trial, space)).validate()
        study.tell(trial, (i * 7 % 5) / 5)
    assert len({t.params["optimizer"] for t in study.trials}) > 1
    assert isinstance(make_pruner(TuneConfig.of(pruner="hyperband", epochs=9)), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner(TuneConfig.of(pruner="none")), optuna.pruners.NopPruner)


def test_mlproject_tune_and_retrain_entry_points_match_their_configs():
    eps = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    for name, cls in (("tune", TuneConfig), ("retrain", RetrainConfig)):
        check_entry_point(eps[name], cls)
        assert eps[name]["command"].startswith(f"python -m galmorph {name}")


def test_storage_passwords_never_appear_in_errors():
    from galmorph.tracking import redact
    from galmorph.workflows.tune import open_storage, postgres_driver

    url = f"postgresql://galmorph:{SECRET}@127.0.0.1:1/optuna"
    assert SECRET not in redact(url) and redact(url) == "postgresql://galmorph:***@127.0.0.1:1/optuna"
    assert SECRET not in redact(postgres_driver(url))
    with pytest.raises(GalmorphError) as info:  # nothing listens on port 1: fails at once
        open_storage(url, heartbeat_interval=1)
    assert "cannot open the Optuna storage postgresql://galmorph:***@127.0.0.1:1/optuna" in str(info.value)
    assert SECRET not in str(info.value)


def test_a_live_worker_closes_the_study_run_of_a_dead_one(tmp_path, tracking_uri):
    """The sweep of WorkerHeartbeat's thread: a worker whose beat stopped an hour ago (dead
    between trials: no stale trial to notice) has its study run closed KILLED with a reason; a
    dead worker whose run had ended is left as it was; the live worker's own run is not touched."""
    import datetime as dt

    import mlflow
    import optuna

    from galmorph.workflows.tune.storage import WORKER, WorkerHeartbeat, db_now, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1)
    study = optuna.create_study(study_name="beats", storage=storage)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("beats", artifact_location=(tmp_path / "artifacts").as_uri())
    dead, ended, mine = (client.create_run(experiment).info.run_id for _ in range(3))
    client.set_terminated(ended, "FINISHED")
    long_ago = (db_now(storage) - dt.timedelta(hours=1)).isoformat()
    for run_id in (dead, ended):
        study.set_user_attr(WORKER + run_id, {"run_id": run_id, "host": "gone", "pid": 4242, "beat": long_ago,
                                              "state": "running"})
    with WorkerHeartbeat(study, storage, mine, interval=1, grace=2):
        wait_for(lambda: client.get_run(dead).info.status == "KILLED", 60, "the dead worker's run to be closed")
        assert study.user_attrs[WORKER + mine]["state"] == "running"
        assert client.get_run(mine).info.status == "RUNNING"
    reason = client.get_run(dead).data.tags["failure_reason"]
    assert "(host gone, pid 4242) stopped sending heartbeats" in reason and f"pid {os.getpid()} closed" in reason
    assert client.get_run(ended).info.status == "FINISHED" and "failure_reason" not in client.get_run(ended).data.tags
    states = {key[len(WORKER):]: record["state"] for key, record in study.user_attrs.items()}
    assert states == {dead: "dead", ended: "dead", mine: "ended"}


def test_missing_monitored_metric_is_an_error(mlflow_store, monkeypatch):
    import numpy as np
    import optuna

    from galmorph.core import training
    from galmorph.workflows import train
    from galmorph.workflows.tune import make_objective, objective_value

    class Trial:
        def report(self, value, step):
            raise AssertionError("must not report a metric that does not exist")

    reporter = training.EpochReporter(np.array([0, 1]), trial=Trial(), prune_metric="val_auc")
    with pytest.raises(GalmorphError, match="cannot prune on 'val_auc'"):
        reporter.end_epoch(0, 0.5, 0.5, np.array([[0.9, 0.1], [0.2, 0.8]]), 2, epoch_time_s=1.0)
    with pytest.raises(GalmorphError, match="returned no best_val_accuracy"):
        objective_value({"test_accuracy": 0.5})
    with pytest.raises(GalmorphError, match="best_val_accuracy is nan"):
        objective_value({"best_val_accuracy": float("nan")})

    # a backend whose fit never calls the reporter: the trial is an error, not a silent no-prune
    monkeypatch.setattr(train, "run", lambda *a, **k: {"best_val_accuracy": 0.5, "epochs_run": 2.0})
    objective = make_objective(TrainConfig(backend="torch"), load_space("c2"), None, "silent")
    study = optuna.create_study(direction="maximize")
    with pytest.raises(GalmorphError, match="reported no val_accuracy per epoch"):
        study.optimize(objective, n_trials=1)


# ---------------------------------------------------------------------------------------
# a 3-trial study per backend, with a pruner forced to prune


STUDY_CODE = """
import json, optuna
from galmorph.workflows.tune import RetrainConfig, TuneConfig, retrain, tune

class PruneTrialOne(optuna.pruners.BasePruner):
    '''Forced to prune: trial 1 stops after its first epoch, whatever it reported.'''
    def prune(self, study, trial):
        return trial.number == 1

cfg = TuneConfig.of(backend={backend!r}, dataset="synthetic", synthetic_n=120, epochs=2, n_trials=3, threads=2,
                 study_name="tiny", storage={storage!r}, experiment="tune-test-{backend}", sampler_seed=0,
                 search_space={space!r})
out = {{"tune": tune(cfg, pruner=PruneTrialOne())}}
if {retrain!r}:
    out["retrain"] = retrain(RetrainConfig(study_name="tiny", storage={storage!r}, experiment="tune-test-{backend}",
                                           register_as="tiny-best", alias="champion"))
    out["trial2"] = retrain(RetrainConfig(study_name="tiny", storage={storage!r}, experiment="tune-test-{backend}",
                                          trial=2, log_model=False))
    try:
        retrain(RetrainConfig(study_name="tiny", storage={storage!r}, trial=1))
    except Exception as exc:  # trial 1 was pruned
        out["pruned"] = str(exc)
print("RESULT " + json.dumps(out, default=str))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "keras"])
def test_three_trial_study_logs_nested_runs(tmp_path, mlflow_store, small_space, backend):
    import mlflow
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = subprocess.run([sys.executable, "-c", STUDY_CODE.format(
        backend=backend, storage=storage, retrain=backend == "torch", space=small_space)],
        capture_output=True, text=True, cwd=REPO, timeout=600, env=child_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    summary = out["tune"]

    client = mlflow.MlflowClient()
    runs = _runs(client, f"tune-test-{backend}")
    (parent,) = [r for r in runs if r.data.tags.get("galmorph.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    assert parent.info.status == "FINISHED" and parent.info.run_id == summary["parent_run_id"]
    states = {int(r.data.tags["optuna_trial_number"]): r.data.tags["optuna_state"] for r in children}
    assert states[1] == "pruned" and states[0] == states[2] == "complete"
    for child in children:
        assert child.info.status == "FINISHED"  # a pruned trial stopped on purpose
        assert child.data.tags["backend"] == backend and child.info.run_name.startswith("tiny-trial-")
        assert "learning_rate" in child.data.params and "optimizer" in child.data.params
        assert "optuna_value" in child.data.metrics
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert len(history) == (1 if child.data.tags["optuna_state"] == "pruned" else 2)
    pruned = next(r for r in children if r.data.tags["optuna_state"] == "pruned")
    assert "pruned at epoch 0" in pruned.data.tags["pruned_reason"] and "failure_reason" not in pruned.data.tags

    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    best_child = next(r for r in children if r.data.tags["optuna_trial_number"] == str(study.best_trial.number))
    assert best_child.data.metrics["optuna_value"] == max(
        r.data.metrics["optuna_value"] for r in children if r.data.tags["optuna_state"] == "complete")
    assert parent.data.tags["best_run_id"] == best_child.info.run_id == study.best_trial.user_attrs["mlflow_run_id"]
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert best_child.data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    for name, value in study.best_params.items():
        assert parent.data.params[f"best_{name}"] == str(value)
    assert parent.data.metrics["n_pruned"] == 1 and parent.data.metrics["epochs_run"] == 5
    assert parent.data.metrics["epochs_saved_by_pruning"] == 1
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {f"plots/{p}.png" for p in ("optimization_history", "param_importances", "parallel_coordinate")} <= plots
    assert {"search_space.yaml", "trials.csv", "study_summary.json", "best_config.yaml"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}

    if backend == "torch":  # retrain: train+validation, fixed epochs, tested once
        result = out["retrain"]
        retrained = {r.info.run_id: r for r in _runs(client, f"tune-test-{backend}")
                     if r.data.tags.get("galmorph.role") == "retrain"}
        assert set(retrained) == {result["run_id"], out["trial2"]["run_id"]}
        run = retrained[result["run_id"]]
        assert "mlflow.parentRunId" not in run.data.tags and result["best"] and result["trial"] == study.best_trial.number
        # --trial 2: that trial's configuration, whether or not it is the best
        other = retrained[out["trial2"]["run_id"]]
        assert other.data.tags["optuna_trial_number"] == "2" and out["trial2"]["best"] == (study.best_trial.number == 2)
        assert other.data.metrics["trial_val_accuracy"] == pytest.approx(study.trials[2].value)
        assert ("study_best_val_accuracy" in other.data.metrics) == out["trial2"]["best"]
        assert out["pruned"] == "study 'tiny' has no complete trial 1; its complete trials: 0, 2"
        assert run.data.metrics["study_best_val_accuracy"] == pytest.approx(study.best_value)
        assert run.data.metrics["test_accuracy"] == pytest.approx(result["test_accuracy"])
        best = best_child.data.params
        assert int(run.data.params["n_train"]) == int(best["n_train"]) + int(best["n_val"])
        assert run.data.params["n_test"] == best["n_test"]
        assert run.data.params["learning_rate"] == best["learning_rate"]
        assert run.data.params["patience"] == "0" and run.data.tags["val_merged_into_train"] == "true"
        assert study.user_attrs.get("galmorph_identity")  # ... and the study knows it was retrained:
        assert optuna.load_study(study_name="tiny", storage=storage).user_attrs["retrain"]["run_id"] == run.info.run_id
        # --register-as tiny-best --alias champion: the retrained model, its test accuracy in the version's tags
        version = client.get_model_version_by_alias("tiny-best", "champion")
        assert version.run_id == run.info.run_id and version.source == run.data.tags["model_uri"]
        assert float(version.tags["test_accuracy"]) == pytest.approx(result["test_accuracy"], abs=1e-5)
        assert run.data.tags["registered_model_version"] == str(version.version) == "1"
        assert "registered models:/tiny-best/1 = models:/tiny-best@champion" in proc.stdout


@pytest.mark.slow
def test_rerunning_a_study_continues_it(tmp_path, mlflow_store, small_space):
    import mlflow
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    common = {"backend": "torch", "dataset": "synthetic", "synthetic_n": 120, "epochs": 1, "n_trials": 1,
              "study_name": "resumable", "storage": storage, "threads": 2, "search_space": small_space}
    # first through the MLproject entry point, then through the CLI: one study, two invocations
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "tune", "--env-manager", "local",
           "--experiment-name", "resume"]
    for k, v in common.items():
        cmd += ["-P", f"{k}={v}"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env=child_env())
    assert first.returncode == 0, first.stderr[-4000:]
    flags = [x for k, v in common.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    second = _galmorph("tune", *flags, "--experiment", "resume")
    assert second.returncode == 0, second.stderr[-4000:]
    assert "1 trials so far" in second.stderr

    study = optuna.load_study(study_name="resumable", storage=storage)
    assert [t.number for t in study.trials] == [0, 1]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    client = mlflow.MlflowClient()
    parents = [r for r in _runs(client, "resume") if r.data.tags.get("galmorph.role") == "study"]
    assert sorted(r.data.tags["optuna_trials_before"] for r in parents) == ["0", "1"]
    assert any(r.data.tags.get("mlflow.project.entryPoint") == "tune" for r in parents)
    for parent in parents:
        (child,) = [r for r in _runs(client, "resume") if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert child.data.tags["optuna_trial_number"] == parent.data.tags["optuna_trials_before"]
        assert parent.data.metrics["n_trials"] == int(parent.data.tags["optuna_trials_before"]) + 1

    # resuming with settings that change what a value means is refused, before any training:
    # in a fresh interpreter, where no earlier test can have imported a backend already
    # (TuneConfig.of takes values literally; band gri is what the CLI's preset gave the study)
    refused = run_python(f"""
import sys
from galmorph.core.errors import GalmorphError
from galmorph.workflows.tune import TuneConfig, tune
try:
    tune(TuneConfig.of(**{ {**common, "band": "gri", "epochs": 3}!r}, experiment="resume"))
except GalmorphError as exc:
    print("REFUSED", exc)
print("TORCH", "torch" in sys.modules)
""")
    assert refused.returncode == 0, refused.stderr[-4000:]
    assert re.search(r"REFUSED .*was run with other settings \(epochs: 1 -> 3\)", refused.stdout), refused.stdout
    assert "TORCH False" in refused.stdout  # it failed before a backend was imported
    assert len(optuna.load_study(study_name="resumable", storage=storage).trials) == 2


# ---------------------------------------------------------------------------------------
# several workers, one PostgreSQL study


def _worker(url: str, space: str, n_trials: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "galmorph", "tune", "--backend", "torch", "--dataset", "synthetic", "--synthetic-n",
         "120", "--epochs", "2", "--pruner", "none", "--study-name", "shared", "--storage", url, "--n-trials",
         str(n_trials), "--heartbeat-interval", "1", "--grace-period", "3", "--threads", "1", "--experiment",
         "workers", "--search-space", space], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env())


@pytest.mark.slow
def test_workers_share_a_postgres_study_and_retry_a_killed_workers_trial(postgres, mlflow_store, small_space):
    import mlflow
    import optuna
    from optuna.trial import TrialState

    from galmorph.workflows.tune import open_storage

    def trials():
        storage = open_storage(postgres)
        return optuna.load_study(study_name="shared", storage=storage).get_trials(deepcopy=False)

    # two workers at once: every trial counted once, no trial number twice
    workers = [_worker(postgres, small_space, 2), _worker(postgres, small_space, 2)]
    outputs = [w.communicate(timeout=400) for w in workers]
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-4000:]
    done = trials()
    assert len(done) == 2 + 2
    assert sorted(t.number for t in done) == list(range(4))
    assert all(t.state == TrialState.COMPLETE for t in done)

    # a worker killed mid-trial: its trial turns FAIL once its heartbeat is stale, and the
    # next worker re-runs it (RetryHeartbeatStaleTrialCallback's system attr failed_trial)
    victim = _worker(postgres, small_space, 50)
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None:
        running = [t for t in trials() if t.state == TrialState.RUNNING and t.intermediate_values]
        if running:
            break
        time.sleep(0.2)
    assert victim.poll() is None, victim.communicate()[1][-3000:]
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    (dead,) = [t for t in trials() if t.state == TrialState.RUNNING]
    n_before = len(trials())
    time.sleep(4)  # past the grace period
    rescuer = _worker(postgres, small_space, 1)
    out, err = rescuer.communicate(timeout=300)
    assert rescuer.returncode == 0, err[-4000:]

    final = {t.number: t for t in trials()}
    assert final[dead.number].state == TrialState.FAIL
    retries = [t for t in final.values() if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == dead.params
    assert len(final) == n_before + 1  # the rescuer ran exactly one trial: the retry
    assert sorted(final) == list(range(len(final)))

    client = mlflow.MlflowClient()
    runs = _runs(client, "workers")
    by_id = {r.info.run_id: r for r in runs}
    assert retries[0].user_attrs["mlflow_run_id"] in by_id, (retries[0].user_attrs, [
        (r.info.run_id, r.info.status, r.data.tags.get("optuna_trial_number")) for r in runs])
    retry_run = by_id[retries[0].user_attrs["mlflow_run_id"]]
    assert retry_run.data.tags["optuna_retry_of"] == str(dead.number)
    dead_run_id = dead.user_attrs.get("mlflow_run_id")
    if dead_run_id:  # the killed worker had reported an epoch: the rescuer closed its run
        assert client.get_run(dead_run_id).info.status == "KILLED"
        assert client.get_run(dead_run_id).data.tags["optuna_state"] == "failed"

    # the password reaches neither MLflow nor the logs
    texts = [out, err] + [o for pair in outputs for o in pair]
    for run in runs:
        texts += [json.dumps(run.data.params), json.dumps(run.data.tags)]
    assert not any(SECRET in t for t in texts)
    parents = [r for r in runs if r.data.tags.get("galmorph.role") == "study"]
    assert len(parents) == 4
    assert all(r.data.params["storage"].startswith("postgresql://galmorph:***@127.0.0.1:") for r in parents)
