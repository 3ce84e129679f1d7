"""A run killed with SIGKILL after epoch 2 of 4 and resumed (`galmorph train --resume RUN_ID`)
ends where an uninterrupted run of the same seed ends; what cannot be resumed is refused in one
line before the run is touched; `galmorph runs` finds the dead run. (A kill just after each file
operation of the checkpoints: test_checkpoint_kills.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, child_env

from galmorph.config import TrainConfig
from galmorph.core import checkpoints
from galmorph.core.errors import GalmorphError

BACKENDS = [pytest.param("torch", marks=pytest.mark.torch), pytest.param("keras", marks=pytest.mark.keras)]
# one thread: CPU kernels then sum in one fixed order, so two processes compute bit for bit alike
ARGS = ["train", "--model", "c2", "--width", "0.25", "--synthetic-n", "200", "--epochs", "4", "--threads", "1",
        "--seed", "3", "--experiment", "resume", "--log-model", "false"]
HISTORIES = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
FINAL = ("test_accuracy", "test_balanced_accuracy", "test_macro_f1", "best_val_loss", "best_val_accuracy")


def _galmorph(env, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "galmorph", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _killed_after_epoch_2(env, args, cache: Path) -> Path:
    """Train in a process that SIGKILLs itself just after its second epoch's checkpoint
    (epoch-0001) is renamed into place (tests/workflows/kill_points.py): no look at the folder
    from outside, which the next epoch's checkpoint may replace meanwhile. The run's checkpoint folder."""
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "workflows" / "kill_points.py"), "at",
                           "rename:epoch-0001:1", "--", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    (folder,) = (cache / "checkpoints").iterdir()
    return folder


def _history(client, run_id: str, key: str) -> set:
    # a set of (step, value): an epoch logged by the killed process and again after the resume
    # (killed between its metrics and its checkpoint) must have logged the same value twice
    return {(m.step, m.value) for m in client.get_metric_history(run_id, key)}


def _predictions(client, run_id: str, tmp: Path) -> pd.DataFrame:
    path = client.download_artifacts(run_id, "predictions.csv", str(tmp))
    return pd.read_csv(path)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_killed_after_epoch_2_resumes_to_the_uninterrupted_result(backend, tracking_uri, tmp_path, monkeypatch):
    import mlflow

    from galmorph.workflows import runs

    cache = tmp_path / "cache"
    monkeypatch.setenv("GALMORPH_CACHE", str(cache))
    env = child_env({"GALMORPH_CACHE": str(cache)})
    args = ARGS + ["--backend", backend]
    whole = _galmorph(env, *args, "--run-name", "whole", "--checkpoints", "false")  # alongside: two cores
    folder = _killed_after_epoch_2(env, [*args, "--run-name", "killed"], cache)
    run_id = folder.name
    assert checkpoints.latest(folder).name == "epoch-0001"
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"  # SIGKILL: nothing could end it
    assert run_id in [r.info.run_id for r, _ in runs.find(runs.RunsConfig(experiment="resume"))]

    _refusals_leave_the_run_alone(client, run_id, folder, tmp_path, tracking_uri)

    # --close-stale ends it KILLED with the reason (the uninterrupted run, alive, is left alone)
    assert runs.run(runs.RunsConfig(experiment="resume", close_stale=True)) == [run_id]
    assert client.get_run(run_id).info.status == "KILLED"
    out, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err[-3000:]
    resumed = _galmorph(env, "train", "--resume", run_id)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "resuming run" in out and "epoch 3/4" in out and "epoch 1/4" not in out and "epoch 2/4" not in out, out

    exp = client.get_experiment_by_name("resume")
    [whole_run] = client.search_runs([exp.experiment_id], "attributes.run_name = 'whole'")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["galmorph.resumed_at_epoch"]) == 2
    assert "failure_reason" not in run.data.tags
    assert run.data.tags["galmorph.resumed_after"].startswith("stale: its process (pid ")
    for key in HISTORIES:
        got = _history(client, run_id, key)
        assert got == _history(client, whole_run.info.run_id, key), key
        assert sorted(step for step, _ in got) == [0, 1, 2, 3], key
    for key in FINAL:
        assert run.data.metrics[key] == whole_run.data.metrics[key], key
    assert len(client.get_metric_history(run_id, "trainable_params")) == 1  # not logged again on resume
    assert sorted(m.step for m in client.get_metric_history(run_id, "data_prep_time_s")) == [
        0, int(run.data.tags["galmorph.resumed_at_epoch"])]
    # the final (best-epoch) weights: the same probabilities for every test galaxy
    pd.testing.assert_frame_equal(_predictions(client, run_id, tmp_path / "a"),
                                  _predictions(client, whole_run.info.run_id, tmp_path / "b"), check_exact=True)
    # a FINISHED run cannot be resumed: its checkpoints are removed, not logged
    assert not (cache / "checkpoints" / run_id).exists()
    assert not client.list_artifacts(run_id, "checkpoint")
    assert not client.list_artifacts(whole_run.info.run_id, "checkpoint")

    with pytest.raises(GalmorphError, match=f"run {run_id} is FINISHED"):
        _resolve(run_id)
    proc = _galmorph(env, "train", "--resume", run_id)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2 and lines == [f"galmorph: error: {lines[0][len('galmorph: error: '):]}"], err
    assert "is FINISHED" in lines[0]
    assert client.get_run(run_id).info.status == "FINISHED"


def _resolve(run_id: str, **flags):
    from galmorph.workflows import resume

    return resume.resolve(TrainConfig(resume=run_id, **flags), {"resume", *flags})


def _refusals_leave_the_run_alone(client, run_id: str, folder: Path, tmp_path: Path, uri: str) -> None:
    """Every refusal is a one-line GalmorphError naming the problem, and the killed run stays as it was."""
    import mlflow

    before = client.get_run(run_id)
    cases = [
        ({"epochs": 5}, "--epochs 5 contradicts run .* epochs 4"),
        ({"backend": "keras" if before.data.params["backend"] == "torch" else "torch"}, "--backend .* contradicts"),
        ({"init_from": run_id}, "pass one of them"),
    ]
    for flags, match in cases:
        with pytest.raises(GalmorphError, match=match):
            _resolve(run_id, **flags)
    with pytest.raises(GalmorphError, match="no MLflow run '0123456789abcdef0123456789abcdef'"):
        _resolve("0123456789abcdef0123456789abcdef")
    epoch = checkpoints.latest(folder)  # the one resumed from (the kill came before epoch-0000 went)
    saved = tmp_path / "saved"
    shutil.copytree(epoch, saved)
    state = epoch / "state"
    data = state.read_bytes()
    os.unlink(state)  # a hard link may share the inode with `best`: cut a new file, not both
    state.write_bytes(data[: len(data) // 2])
    with pytest.raises(GalmorphError, match="is damaged .*state"):
        _resolve(run_id)
    shutil.rmtree(folder)
    with pytest.raises(GalmorphError, match="has no checkpoint"):
        _resolve(run_id)
    shutil.copytree(saved, epoch)  # as it was written
    other = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(other)
    try:
        with pytest.raises(GalmorphError, match="logged to another tracking store"):
            _resolve(run_id)
    finally:
        mlflow.set_tracking_uri(uri)  # which also sets MLFLOW_TRACKING_URI again
    after = client.get_run(run_id)
    assert after.info.status == "RUNNING" and after.data.tags == before.data.tags
    assert after.data.metrics == before.data.metrics
