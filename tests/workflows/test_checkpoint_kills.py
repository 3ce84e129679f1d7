"""A run SIGKILLed just after any file operation of its checkpoints (written, rotated, removed)
is resumable and, resumed, ends where the uninterrupted run ends; killed before its first
checkpoint it is refused in one line; killed once FINISHED it stays FINISHED
(tests/workflows/kill_points.py does the killing and resuming)."""

from __future__ import annotations

import json
import subprocess
import sys

import kill_points
import pytest
from conftest import REPO, child_env

BACKENDS = [pytest.param("torch", marks=pytest.mark.torch), pytest.param("keras", marks=pytest.mark.keras)]
# one thread: two processes compute bit for bit alike
ARGS = ["train", "--model", "c2", "--width", "0.25", "--synthetic-n", "200", "--epochs", "2", "--threads", "1",
        "--seed", "3", "--experiment", "kills", "--log-model", "false", "--quiet", "true"]
HISTORIES = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
FINAL = ("test_accuracy", "test_balanced_accuracy", "test_macro_f1", "best_val_loss", "best_val_accuracy")


def _history(client, run_id: str, key: str) -> set:
    # a set: an epoch logged before the kill and again by the resumed process has the same value
    return {(m.step, m.value) for m in client.get_metric_history(run_id, key)}


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("galmorph: error: "), stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_killed_after_any_checkpoint_file_operation_resumes_to_the_uninterrupted_result(
        backend, tracking_uri, tmp_path, monkeypatch):
    import mlflow

    cache = tmp_path / "cache"
    monkeypatch.setenv("GALMORPH_CACHE", str(cache))
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "workflows" / "kill_points.py"), "every", str(report),
                           "--", *ARGS, "--backend", backend], cwd=REPO, env=child_env({"GALMORPH_CACHE": str(cache)}),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(report.read_text())
    ops, points, reference = got["ops"], got["points"], got["reference"]

    # what was done, in order: each epoch's checkpoint written under a temporary name and renamed
    # into place, only then the one before renamed aside and removed; the run's folder renamed
    # aside and removed once the run is FINISHED
    names = [name for _, name in ops]
    renames = [(i, name) for i, (op, name) in enumerate(ops) if op == "rename"]
    new = names.index("epoch-0001")
    old_aside = next(i for i, name in renames if name.startswith(".epoch-0000."))
    run_aside = next(i for i, name in renames if name.startswith(f".{reference}."))
    assert [i for i, _ in renames] == [names.index("epoch-0000"), new, old_aside, run_aside], ops
    # a kill after every operation but the removals inside a removed folder (test_checkpoints.py)
    assert [p["k"] for p in points] == [k for k, op in enumerate(ops, 1) if not kill_points.inside_removed(*op)]
    assert [p["op"] for p in points] == [ops[p["k"] - 1][0] for p in points]

    client = mlflow.MlflowClient()
    whole = client.get_run(reference)
    assert whole.info.status == "FINISHED"
    first_checkpoint = names.index("epoch-0000") + 1  # kill point k: just after operation k (from 1)
    resumed = 0
    for point in points:
        k, run_id, code, err = point["k"], point["run_id"], point["resume_code"], point["resume_stderr"]
        run = client.get_run(run_id)
        where = f"killed after operation {k} ({point['op']} {point['path']})"
        if k < first_checkpoint:  # no checkpoint yet: refused, the run left as it was
            assert code == 2 and "has no checkpoint" in _one_line(err), where
            assert run.info.status == "RUNNING", where
            continue
        if k > run_aside:  # FINISHED already, its checkpoints being removed
            assert code == 2 and "is FINISHED" in _one_line(err), where
        else:
            assert code == 0, (where, err[-3000:])
            assert int(run.data.tags["galmorph.resumed_at_epoch"]) == (1 if k < new + 1 else 2), where
            resumed += 1
        assert run.info.status == "FINISHED", where
        for key in HISTORIES:
            assert _history(client, run_id, key) == _history(client, reference, key), (where, key)
        for key in FINAL:
            assert run.data.metrics[key] == whole.data.metrics[key], (where, key)
        assert not (cache / "checkpoints" / run_id).exists(), where
    assert resumed == sum(first_checkpoint <= p["k"] <= run_aside for p in points) > 0
    assert sorted(m.step for m in client.get_metric_history(reference, "val_loss")) == [0, 1]
