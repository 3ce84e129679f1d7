"""End-to-end: every MLproject entry point through `mlflow run`, then what MLflow recorded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, check_entry_point, child_env, run_python

from galmorph.config import TrainConfig

ENTRY_POINTS = {"c1_keras": ("c1", "keras"), "c2_keras": ("c2", "keras"),
                "c1_torch": ("c1", "torch"), "c2_torch": ("c2", "torch")}
TINY = {"dataset": "synthetic", "synthetic_n": 160, "epochs": 1, "batch_size": 32, "seed": 3, "tta": "dihedral"}
PER_EPOCH = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_time_s", "train_images_per_s")
FINAL = ("test_accuracy", "test_balanced_accuracy", "test_macro_f1", "test_log_loss", "first_epoch_time_s",
         "test_ece", "test_ece_uncalibrated", "test_log_loss_uncalibrated", "temperature",
         "test_recall_E", "test_precision_Irr", "test_f1_S0", "trainable_params", "peak_host_memory_mb")
ARTIFACTS = {"confusion_matrix.png", "confusion_matrix_counts.png", "learning_curves.png", "classification_report.json",
             "predictions.csv", "splits.json", "config.yaml", "history.csv", "reliability_diagram.png"}


def test_mlproject_entry_points_share_the_train_config_parameters():
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    eps = spec["entry_points"]
    for name, (model, backend) in {**ENTRY_POINTS, "main": ("c2", "keras")}.items():
        check_entry_point(eps[name], TrainConfig, skip=("model", "backend"))
        assert f"--model {model} --backend {backend}" in eps[name]["command"]


def _mlflow_run(entry_point: str, params: dict, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local",
           "--experiment-name", "smoke"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    return subprocess.run(cmd, capture_output=True, text=True, env=child_env(env), timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Run every model/backend entry point once on tiny synthetic data; return the MLflow runs."""
    from concurrent.futures import ThreadPoolExecutor

    import mlflow

    tmp = tmp_path_factory.mktemp("smoke")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    client = mlflow.MlflowClient(tracking_uri=uri)
    # the schema and the experiment before the runs share the store: two `mlflow run`s that
    # both find no "smoke" experiment would both create it, and one would fail
    client.create_experiment("smoke", artifact_location=(tmp / "artifacts").as_uri())
    with ThreadPoolExecutor(2) as pool:  # two at a time: their start-up is mostly imports
        futures = {ep: pool.submit(_mlflow_run, ep, TINY, env) for ep in ENTRY_POINTS}
        procs = {ep: f.result() for ep, f in futures.items()}
    exp = client.get_experiment_by_name("smoke")
    runs = {r.data.tags["mlflow.project.entryPoint"]: r for r in client.search_runs([exp.experiment_id])}
    return {"procs": procs, "runs": runs, "client": client, "uri": uri, "tmp": tmp}


@pytest.mark.slow
@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_entry_point_records_everything(smoke, entry_point):
    proc = smoke["procs"][entry_point]
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = smoke["runs"][entry_point]
    client = smoke["client"]
    model, backend = ENTRY_POINTS[entry_point]
    assert run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("model", "backend", "dataset", "scheme")} == {
        "model": model, "backend": backend, "dataset": "synthetic", "scheme": "4way"}
    params = run.data.params
    for key in ("dataset_digest", "scheme_resolved", "band", "val_fraction", "seed", "version_mlflow", "device",
                "device_name", "n_train", "learning_rate", "input_shape"):
        assert key in params, key
    assert params["input_shape"] == "63x63x3"  # the recommended preset: band gri
    for key in PER_EPOCH:
        assert len(client.get_metric_history(run.info.run_id, key)) == 1, key
    for key in FINAL:
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert ARTIFACTS <= artifacts
    report = json.loads(open(client.download_artifacts(run.info.run_id, "classification_report.json", str(smoke["tmp"] / run.info.run_id))).read())
    assert report["class_names"] == ["E", "S0", "Sp", "Irr"]
    assert run.data.metrics["test_accuracy"] == pytest.approx(report["accuracy"])
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == params["dataset_digest"]


@pytest.mark.slow
@pytest.mark.parametrize("entry_point", ["c2_keras", "c1_torch"])
def test_logged_model_takes_raw_images_and_reproduces_the_runs_predictions(smoke, entry_point):
    """The logged model (galmorph.inference.load, the pyfunc it wraps) takes the dataset's raw
    uint8 images, does the run's band selection, crop and scaling itself, and gives the
    probabilities of predictions.csv (uncalibrated) and their temperature-scaled version."""
    run = smoke["runs"][entry_point]
    out_dir = smoke["tmp"] / f"check-{entry_point}"
    client = smoke["client"]
    preds = client.download_artifacts(run.info.run_id, "predictions.csv", str(out_dir))
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(out_dir))
    code = f"""
import json, numpy as np, pandas as pd, yaml, mlflow
from galmorph.config import TrainConfig
from galmorph.core import calibration
from galmorph.core.errors import GalmorphError
from galmorph.inference.model import load
from galmorph.workflows.prepare import prepare
cfg = yaml.safe_load(open({config!r})); cfg.pop("resolved")
prep = prepare(TrainConfig(**cfg))
frame = pd.read_csv({preds!r})
pos = np.searchsorted(prep.data.rows, frame["row"].to_numpy())
x = prep.data.images[pos]  # raw uint8 (N, 69, 69, 3), as the dataset stores them
want = frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy()
model = load({run.info.run_id!r})
raw = model.predict(x, calibrated=False).proba
calibrated = model.predict(x).proba
table = model.pyfunc.predict(x[:3], params={{"tta": True}})
dihedral = model.pyfunc.predict(x[:3], params={{"tta": True, "tta_views": "dihedral"}})
by_hand = model.predict(x[:3], tta="dihedral").proba
from galmorph.core import decision, metrics
test = np.asarray(prep.split.test)
served = model.predict(prep.data.images[test], tta="dihedral")  # what `galmorph predict --tta dihedral` answers
served = metrics.evaluate(prep.data.labels[test], decision.reweighted(served.proba, served.weights), prep.data.class_names)
same = load("runs:/{run.info.run_id}/model").predict(x[:2], calibrated=False).proba
try:
    model.predict(x[:, :60, :60])
    wrong_side = ""
except GalmorphError as exc:
    wrong_side = str(exc)
meta = model.pyfunc.metadata
sig = meta.signature
print(json.dumps({{"raw": float(np.abs(raw - want).max()),
    "calibrated": float(np.abs(calibrated - calibration.apply_temperature(want, model.info.temperature)).max()),
    "same": float(np.abs(same - raw[:2]).max()), "columns": list(table.columns),
    "tta_sums": table[[c for c in table.columns if c.startswith("p_")]].sum(axis=1).tolist(),
    "dihedral": float(np.abs(dihedral[[c for c in dihedral.columns if c.startswith("p_")]].to_numpy() - by_hand).max()),
    "dihedral_vs_40": float(np.abs(dihedral[[c for c in dihedral.columns if c.startswith("p_")]].to_numpy()
                                   - table[[c for c in table.columns if c.startswith("p_")]].to_numpy()).max()),
    "served": [served["accuracy"], served["balanced_accuracy"]],
    "info": {{k: v for k, v in vars(model.info).items()}}, "wrong_side": wrong_side,
    "input": sig.inputs.to_dict(), "params": sig.params.to_dict(),
    "example": list(np.asarray(meta.load_input_example(mlflow.artifacts.download_artifacts(model.uri))).shape)}}))
"""
    proc = run_python(code, env={"MLFLOW_TRACKING_URI": smoke["uri"]})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["raw"] < 1e-5 and result["same"] < 1e-6
    assert result["calibrated"] < 1e-5
    assert result["columns"] == ["p_E", "p_S0", "p_Sp", "p_Irr", "predicted", "confidence"]
    assert result["tta_sums"] == pytest.approx([1.0] * 3, abs=1e-6)
    assert result["dihedral"] < 1e-9 and result["dihedral_vs_40"] > 0  # the 8 views, not the 40
    # the run's test_tta_dihedral_decision_* are the served model's answers over the 8 views
    assert result["served"] == pytest.approx([run.data.metrics["test_tta_dihedral_decision_accuracy"],
                                              run.data.metrics["test_tta_dihedral_decision_balanced_accuracy"]])
    info = result["info"]
    assert info["temperature"] == pytest.approx(run.data.metrics["temperature"])
    assert (info["class_names"], info["image_side"], info["band"], info["kind"], info["run_id"]) == (
        ["E", "S0", "Sp", "Irr"], 69, "gri", "single", run.info.run_id)
    assert info["pixel_scale"] == pytest.approx(1.188, abs=1e-3) and info["network"] == ENTRY_POINTS[entry_point][0]
    assert "69x69" in result["wrong_side"]
    assert result["input"] == [{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, 69, 69, 3]}}]
    assert {p["name"]: p["default"] for p in result["params"]} == {"tta": False, "tta_views": "paper40",
                                                                    "calibrated": True}
    assert result["example"] == [3, 69, 69, 3]


@pytest.mark.slow
def test_both_backends_use_identical_splits(smoke):
    client, runs = smoke["client"], smoke["runs"]
    docs = []
    for ep in ("c2_keras", "c2_torch", "c1_torch"):
        path = client.download_artifacts(runs[ep].info.run_id, "splits.json", str(smoke["tmp"] / f"split-{ep}"))
        docs.append(json.loads(open(path).read()))
    assert docs[0]["rows"] == docs[1]["rows"] == docs[2]["rows"]
    assert docs[0]["dataset_digest"] == docs[1]["dataset_digest"]
    assert len({runs[ep].data.params["dataset_digest"] for ep in ENTRY_POINTS}) == 1


@pytest.mark.parametrize("args,match", [
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--learning-rate", "-1"], "learning_rate must be positive"),
    (["--model", "c9"], "unknown model 'c9'"),
    (["--scheme", "sevenway"], "unknown scheme 'sevenway'"),
    (["--dataset", "/nonexistent/x.h5"], "does not exist"),
    (["--crop-fraction", "0.4", "--synthetic-n", "40"], "too small for c2"),
])
def test_bad_input_fails_the_run_with_a_one_line_reason(tracking_uri, args, match):
    import mlflow

    proc = subprocess.run([sys.executable, "-m", "galmorph", "train", "--backend", "torch", "--synthetic-n", "40",
                           "--experiment", "bad", *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("galmorph: error:")]
    assert len(err) == 1 and match in err[0], proc.stderr[-2000:]
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("bad").experiment_id])
    assert run.info.status == "FAILED"
    assert match in run.data.tags["failure_reason"]
    assert "train_loss" not in run.data.metrics  # failed before any training


@pytest.mark.slow
def test_bad_input_under_mlflow_run_marks_the_project_run_failed(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _mlflow_run("c2_torch", {**TINY, "epochs": 0}, {"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode != 0
    assert "epochs must be at least 1" in proc.stderr
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert run.info.status == "FAILED"
    assert "epochs must be at least 1" in run.data.tags["failure_reason"]


EXIT_BOUND_S = 30  # from the signal to the end of the process: the run marked KILLED, the interpreter gone


def _sigint_as_in_a_terminal():
    # A process started by a background job inherits SIGINT ignored (POSIX), and Python then
    # keeps it ignored: a test run that way would wait out its timeout. Ctrl-C reaches a
    # foreground process, whose SIGINT is not ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_first_epoch(client, experiment: str, proc, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and client.get_metric_history(runs[0].info.run_id, "train_loss"):
            return runs[0]
        time.sleep(0.2)
    return None


@pytest.mark.slow
def test_ctrl_c_mid_training_leaves_the_run_killed(tracking_uri, tmp_path):
    import mlflow

    client = mlflow.MlflowClient()
    client.create_experiment("interrupt", artifact_location=(tmp_path / "artifacts").as_uri())  # not in the clone
    proc = subprocess.Popen([sys.executable, "-m", "galmorph", "train", "--backend", "torch", "--synthetic-n", "400",
                             "--epochs", "200", "--patience", "0", "--experiment", "interrupt"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)
    try:
        run = _wait_for_first_epoch(client, "interrupt", proc)
        assert run is not None, "training never logged an epoch"
        proc.send_signal(signal.SIGINT)
        sent = time.time()
        _, stderr = proc.communicate(timeout=120)
        took = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr[-2000:]
    assert took < EXIT_BOUND_S, stderr[-2000:]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"] == "interrupted (SIGINT)"


# Where a signal lands, and which (tests/workflows/interrupt_points.py): every point of one
# backend runs in one process, the last one through the process's own exit. finalizer: the
# KeyboardInterrupt is raised inside a finalizer, which drops it (it must come again); sqlite:
# just after one of MLflow's SQLite INSERTs ran, whose cursor then held the database locked
# against the cleanup; twice: mid-epoch, then SIGTERM during the cleanup, as `mlflow run` does.
INTERRUPT_POINTS = {
    "torch": ["prepare:SIGINT", "twice:SIGINT", "validation:SIGINT", "finalizer:SIGINT:200", "sqlite:SIGTERM:2",
              "artifacts:SIGINT", "model:SIGTERM"],
    "keras": ["step:SIGINT", "validation:SIGTERM", "model:SIGINT"],
}
WITH_CHECKPOINT = {"finalizer", "artifacts", "model"}  # the points after the first epoch's end


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("torch", marks=pytest.mark.torch),
                                     pytest.param("keras", marks=pytest.mark.keras)])
def test_an_interrupt_anywhere_ends_the_run_killed_within_seconds(backend, tracking_uri, tmp_path):
    import mlflow

    report_path = tmp_path / "report.json"
    points = INTERRUPT_POINTS[backend]
    client = mlflow.MlflowClient()
    for spec in points:  # artifacts under tmp_path, not in the clone (the process works in it)
        point = spec.split(":")[0]
        client.create_experiment(f"interrupt-{point}", artifact_location=(tmp_path / "artifacts" / point).as_uri())
    code = ("import runpy, sys; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(REPO / "tests" / "workflows" / "interrupt_points.py"),
                             backend, str(report_path), *points],
                            cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)
    try:
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    ended = time.time()
    last_fired = [float(line.split()[1]) for line in stderr.splitlines() if line.startswith("fired ")]
    assert proc.returncode == 130, stderr[-3000:]
    assert last_fired and ended - last_fired[-1] < EXIT_BOUND_S, stderr[-3000:]
    report = json.loads(report_path.read_text())
    for spec in points:
        point, sig = spec.split(":")[:2]
        if point in report:  # every point but the last (the process's exit, checked above)
            assert report[point]["fired"], point
            assert report[point]["code"] == 130, (point, stderr[-3000:])
            assert report[point]["seconds"] < EXIT_BOUND_S, point
        (run,) = client.search_runs([client.get_experiment_by_name(f"interrupt-{point}").experiment_id])
        assert run.info.status == "KILLED", point
        assert run.data.tags["failure_reason"] == f"interrupted ({sig})", point
        assert "model_uri" not in run.data.tags, point
        # a KILLED run logs its last checkpoint as a FAILED one does: once a first epoch ended
        logged = client.list_artifacts(run.info.run_id, "checkpoint")
        assert bool(logged) == (point in WITH_CHECKPOINT), (point, [a.path for a in logged])
        if point == "artifacts":  # interrupted while writing them: none logged, not some (the checkpoint aside)
            assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["checkpoint"]
        if point == "model":  # its files half written: the model is marked FAILED
            models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
            assert models and all(str(m.status) == "FAILED" for m in models), [m.status for m in models]


@pytest.mark.parametrize("ending", ["finished", "interrupted"])
def test_ending_a_run_stops_its_system_metrics_thread(tracking_uri, ending):
    """tracking.run stops MLflow's monitor itself (end_run would join it without a timeout)."""
    import threading

    import mlflow

    from galmorph import tracking

    def monitors():
        return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]

    tracking.configure("monitor")
    before = set(monitors())
    try:
        with tracking.run("r") as active:
            assert set(monitors()) - before, "no system-metrics thread started"
            if ending == "interrupted":
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        assert ending == "interrupted"
    assert not set(monitors()) - before
    run = mlflow.MlflowClient().get_run(active.info.run_id)
    assert run.info.status == ("KILLED" if ending == "interrupted" else "FINISHED")


def test_runs_land_in_the_experiment_another_process_created_at_the_same_moment(tracking_uri, monkeypatch):
    """The race of two workers starting at once: the experiment does not exist when this
    process looks, but exists by the time it creates it (MLflow's set_experiment then
    returns without activating it). Runs must still land in it, not in Default."""
    import mlflow
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from galmorph import tracking

    other = mlflow.MlflowClient().create_experiment("raced")  # "the other process"
    real = TrackingServiceClient.get_experiment_by_name
    looks_left = [None]  # the first look happens before the other process created it

    def first_look_misses(self, name):
        if name == "raced" and looks_left:
            return looks_left.pop()
        return real(self, name)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", first_look_misses)
    tracking.configure("raced")
    with tracking.run("r", system_metrics=False) as active:
        assert active.info.experiment_id == other
