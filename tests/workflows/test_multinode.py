"""Training past one machine: two torchrun "nodes" on this host, as a user starts them on two.

Each node is `torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint
127.0.0.1:PORT -m galmorph train --devices 2 ...` (gloo on the CPU). Node 0 hosts the
rendezvous (is_host=true, so that a port taken between choosing and binding it fails at once,
EADDRINUSE, and the pair is started again on another) and node 1 joins it as a client.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env, free_port, make_h5, stop_group

pytestmark = [pytest.mark.torch, pytest.mark.slow]

# c1 without batch norm or dropout: data-parallel training is then the single-process training
# of the same global batch (c2's batch norm normalises each rank's half batch by itself)
TRAIN = ["train", "--backend", "torch", "--model", "c1", "--batchnorm", "false", "--dropout", "0", "--width", "0.25",
         "--dense-units", "16", "--epochs", "2", "--batch-size", "8", "--augment", "none", "--val-fraction", "0.25",
         "--test-fraction", "0.25", "--threads", "1", "--log-model", "false", "--quiet", "true"]
LOSSES = ("train_loss", "val_loss")
FINAL = ("test_accuracy", "test_macro_f1", "test_log_loss", "best_val_loss")
TIMEOUT = 240  # a node that has not ended by then fails the test (normally: 10-20 s)


def _two_nodes(tmp_path: Path, args: list[str], script: list[str] = ("-m", "galmorph"),
               attempts: int = 3) -> list[tuple[int, str]]:
    """Start the two nodes running `script` `args`, wait for both; [(exit status, output)] of node 0 and 1."""
    for attempt in range(attempts):
        port = free_port()
        procs, logs = [], []
        try:
            for node in (0, 1):
                log = tmp_path / f"node{node}-{attempt}.log"
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                       "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                       "--rdzv-conf", f"is_host={'true' if node == 0 else 'false'}", *script, *args]
                with open(log, "w") as out:
                    procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(),
                                                  cwd=tmp_path, start_new_session=True))
                logs.append(log)
            codes = [proc.wait(timeout=TIMEOUT) for proc in procs]
        finally:
            for proc in procs:
                stop_group(proc)
        results = [(code, log.read_text()) for code, log in zip(codes, logs)]
        if not (codes[0] != 0 and "EADDRINUSE" in results[0][1]):
            return results
    pytest.fail(f"port taken {attempts} times in a row: {results[0][1][-2000:]}")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_h5(tmp_path_factory.mktemp("multinode") / "sep.h5", n=64, size=44, n_classes=3)


@pytest.fixture(scope="module")
def reference(data) -> dict:
    """Single-process training on the same global batch: its losses per epoch and test metrics."""
    import mlflow

    uri = f"sqlite:///{data.parent / 'reference.db'}"
    one = subprocess.run([sys.executable, "-m", "galmorph", *TRAIN, "--dataset", str(data), "--experiment", "one"],
                         capture_output=True, text=True, env=child_env({"MLFLOW_TRACKING_URI": uri}),
                         cwd=data.parent, timeout=TIMEOUT, check=False)
    assert one.returncode == 0, one.stderr[-4000:]
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("one").experiment_id])
    return _results(client, run)


def _results(client, run) -> dict:
    return {**{key: [m.value for m in client.get_metric_history(run.info.run_id, key)] for key in LOSSES},
            **{key: run.data.metrics[key] for key in FINAL}}


def _assert_same_training(got: dict, reference: dict) -> None:
    for key in LOSSES:
        assert got[key] == pytest.approx(reference[key], rel=1e-5), key
    for key in FINAL:
        assert got[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-9), key


def _runs(experiment: str):
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id]) if found else [])


def test_two_nodes_log_one_run_with_both_nodes_timings(tmp_path, tracking_uri, data, reference):
    """One MLflow run (rank 0's) with each rank's host, node and epoch timings, and the metrics
    of single-process training on the same global batch."""
    nodes = _two_nodes(tmp_path, [*TRAIN, "--dataset", str(data), "--devices", "2", "--experiment", "nodes"])
    for node, (code, out) in enumerate(nodes):
        assert code == 0, f"node {node}: {out[-4000:]}"

    client, runs = _runs("nodes")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # node 1 opened no run of its own
    run = runs[0]
    params = run.data.params
    assert params["devices"] == "2" and params["replica_nodes"] == "2"
    assert {params["rank0_node"], params["rank1_node"]} == {"0", "1"}
    assert params["rank0_host"] == params["rank1_host"] == socket.gethostname()
    assert int(params["n_train"]) % 8 == 0  # no padded last batch: the batches of one process
    for rank in (0, 1):
        seconds = client.get_metric_history(run.info.run_id, f"rank{rank}_epoch_time_s")
        rates = client.get_metric_history(run.info.run_id, f"rank{rank}_train_images_per_s")
        assert [m.step for m in seconds] == [m.step for m in rates] == [0, 1]
        for s, r in zip(seconds, rates):  # each rank trained its half of the training images
            assert s.value * r.value == pytest.approx(int(params["n_train"]) / 2)
    _assert_same_training(_results(client, run), reference)


def test_a_two_node_run_killed_after_epoch_1_resumes_in_one_process(tmp_path, tracking_uri, data, reference):
    """Rank 0 checkpoints; killed after the first epoch's checkpoint (tests/workflows/kill_points.py
    as torchrun's script), the run continues with `galmorph train --resume` in one process, to
    the single-process result."""
    kill = [str(Path(__file__).with_name("kill_points.py")), "at", "rename:epoch-0000:1", "--"]
    nodes = _two_nodes(tmp_path, [*TRAIN, "--dataset", str(data), "--devices", "2", "--experiment", "nodes"],
                       script=kill)
    assert all(code != 0 for code, _ in nodes)
    _, (run,) = _runs("nodes")
    resumed = subprocess.run([sys.executable, "-m", "galmorph", "train", "--resume", run.info.run_id],
                             capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=TIMEOUT,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    client, (run,) = _runs("nodes")
    assert run.info.status == "FINISHED" and run.data.tags["galmorph.resumed_at_epoch"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "rank1_epoch_time_s")] == [0]
    _assert_same_training(_results(client, run), reference)


def test_devices_other_than_the_world_size_is_refused_before_any_run(tmp_path, monkeypatch, data):
    """Two nodes of one process each are a world of 2: --devices 1 on each is one line per
    node, exit 2 from galmorph, and no MLflow call at all (not two independent runs)."""
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    nodes = _two_nodes(tmp_path, [*TRAIN, "--dataset", str(data), "--devices", "1", "--experiment", "nodes"])
    for code, out in nodes:
        assert code != 0
        errors = [line for line in out.splitlines() if line.startswith("galmorph: error:")]
        assert errors == [("galmorph: error: --devices 1 but torchrun started 2 processes (2 nodes x 1 per node); "
                           "pass --devices 2: under torchrun, devices counts the processes of all nodes together")]
        assert "exitcode  : 2" in out  # torchrun's report of the worker's exit status
    assert not store.exists()


def test_a_failed_replica_under_galmorphs_own_torchrun_is_its_error_line_not_torchruns_report(tmp_path, monkeypatch):
    """`galmorph train --devices 2` starts torchrun itself: a worker's bad-input error is its one
    `galmorph: error:` line, then the launcher's, with torchrun's log lines and failure report
    (some 40 lines and a traceback) left out; exit 2."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    small = make_h5(tmp_path / "small.h5", n=24, size=32)  # too small for c2's crop
    proc = subprocess.run([sys.executable, "-m", "galmorph", "train", "--backend", "torch", "--dataset", str(small),
                           "--devices", "2", "--threads", "1", "--experiment", "small"], capture_output=True, text=True,
                          env=child_env(), cwd=tmp_path, timeout=TIMEOUT, check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("INFO mlflow", "INFO alembic"))]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert all(ln.startswith("galmorph: ") for ln in lines), proc.stderr[-4000:]
    assert any("too small for c2" in ln for ln in lines[:-1]), lines
    assert lines[-1] == "galmorph: error: data-parallel training failed: one of its 2 processes ended with exit status 2"


def test_the_ranks_take_rank_0s_stream_decision(tmp_path):
    """Under the user's torchrun each rank would decide `--stream auto` on its own node's free
    memory; `agree` (what train does with that decision) gives every rank rank 0's value."""
    script = tmp_path / "agree.py"
    script.write_text("import os\nfrom galmorph import backends\n"
                      "print('AGREED', backends.get('torch').agree('rank' + os.environ['RANK'], 2))\n")
    nodes = _two_nodes(tmp_path, [], script=[str(script)])
    for node, (code, out) in enumerate(nodes):
        assert code == 0, f"node {node}: {out[-4000:]}"
        assert [ln for ln in out.splitlines() if ln.startswith("AGREED")] == ["AGREED rank0"], out[-2000:]


def test_rank_0s_refusal_of_the_data_is_every_ranks_one_line(tmp_path, monkeypatch):
    """Rank 0 decides `--stream auto` while the others wait for its decision: a dataset it
    cannot find is the same one line on every node (not a broken collective on the others)."""
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    nodes = _two_nodes(tmp_path, [*TRAIN, "--dataset", str(tmp_path / "missing.h5"), "--devices", "2",
                                  "--experiment", "nodes"])
    for node, (code, out) in enumerate(nodes):
        errors = [line for line in out.splitlines() if line.startswith("galmorph: error:")]
        assert code != 0 and len(errors) == 1 and "missing.h5" in errors[0], f"node {node}: {out[-3000:]}"
        assert "exitcode  : 2" in out and "DistNetworkError" not in out, f"node {node}: {out[-3000:]}"
    assert not store.exists()
