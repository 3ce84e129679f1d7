"""What a run that ends otherwise than FINISHED leaves to resume from: a run stopped by SIGTERM
(as Ctrl-C) logs its last checkpoint like a FAILED one, and resumed from it on another machine
(another cache) and FINISHED drops that `checkpoint/` artifact; a run whose last MLflow call
(marking it FINISHED) fails keeps its checkpoint, and a resume finishes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, child_env, start_mlflow_server, stop_group

from galmorph.core import checkpoints

ARGS = ["train", "--backend", "torch", "--model", "c2", "--width", "0.25", "--synthetic-n", "200", "--epochs", "4",
        "--threads", "1", "--seed", "3", "--log-model", "false"]
WORKFLOWS = REPO / "tests" / "workflows"


def _run(env, *cmd, timeout=300):
    return subprocess.run([sys.executable, *map(str, cmd)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.torch
def test_an_interrupted_run_logs_its_checkpoint_and_a_resume_elsewhere_drops_it(tracking_uri, tmp_path):
    import mlflow

    here, there = tmp_path / "cache-here", tmp_path / "cache-there"
    # SIGTERM just after the second epoch's checkpoint is in place (the next epoch would start)
    stopped = _run(child_env({"GALMORPH_CACHE": str(here)}), WORKFLOWS / "kill_points.py", "at",
                   "rename:epoch-0001:1:SIGTERM", "--", *ARGS, "--experiment", "endings", "--run-name", "stopped")
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("endings").experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "interrupted (SIGTERM)"
    logged = sorted(a.path for a in client.list_artifacts(run_id, checkpoints.ARTIFACT_PATH))
    assert logged == [f"checkpoint/{name}" for name in ("best", "manifest.json", "reporter.json", "state")]
    got = checkpoints.load(Path(client.download_artifacts(run_id, checkpoints.ARTIFACT_PATH, str(tmp_path))))
    assert (got.epoch, got.run_id, got.backend) == (1, run_id, "torch")

    # another machine: no local checkpoint, so it comes from the artifacts
    resumed = _run(child_env({"GALMORPH_CACHE": str(there)}), "-m", "galmorph", "train", "--resume", run_id)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming run" in resumed.stdout and "epoch 3/4" in resumed.stdout and "epoch 2/4" not in resumed.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["galmorph.resumed_at_epoch"] == "2"
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_loss")) == [0, 1, 2, 3]
    assert not client.list_artifacts(run_id, checkpoints.ARTIFACT_PATH)  # FINISHED: nothing to resume any more
    assert "predictions.csv" in [a.path for a in client.list_artifacts(run_id)]
    assert not (there / "checkpoints" / run_id).exists()


@pytest.mark.slow
@pytest.mark.torch
def test_a_run_whose_store_goes_away_before_it_is_finished_keeps_its_checkpoint(tmp_path):
    import mlflow

    cache, db, artifacts, log = tmp_path / "cache", tmp_path / "mlflow.db", tmp_path / "artifacts", tmp_path / "log"
    store = f"sqlite:///{db}"
    server, url = start_mlflow_server(store, artifacts, log)
    port = int(url.rsplit(":", 1)[1])
    # no retries: a refused connection fails the call at once
    env = child_env({"GALMORPH_CACHE": str(cache), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    try:
        ended = _run({**env, "MLFLOW_TRACKING_URI": url}, WORKFLOWS / "store_gone.py", server.pid, port, *ARGS,
                     "--experiment", "endings")
        assert server.poll() is not None  # store_gone.py killed it as the run was being marked FINISHED
    finally:
        stop_group(server)
    assert ended.returncode == 2, ended.stderr[-3000:]
    assert "Traceback" not in ended.stderr, ended.stderr[-3000:]
    last = ended.stderr.strip().splitlines()[-1]
    assert last.startswith("galmorph: error: run ") and "could not be marked FINISHED, and is still RUNNING" in last
    run_id = last.split()[3]
    assert f"`galmorph train --resume {run_id}` finishes it" in last, last
    assert checkpoints.load(checkpoints.latest(cache / "checkpoints" / run_id)).epoch == 3  # the last epoch

    server, url = start_mlflow_server(store, artifacts, log)  # the store is back
    try:
        client = mlflow.MlflowClient(tracking_uri=url)
        assert client.get_run(run_id).info.status == "RUNNING"
        resumed = _run({**env, "MLFLOW_TRACKING_URI": url}, "-m", "galmorph", "train", "--resume", run_id)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        out = resumed.stdout
        assert "resuming run" in out and not any(f"epoch {k}/4" in out for k in range(1, 5)), out  # none again
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
        assert not (cache / "checkpoints" / run_id).exists()
    finally:
        stop_group(server)
