"""Everything a run prints, stdout and stderr together, as a new user would see it: galmorph's
own lines and nothing else but the MLflow lines listed here."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO, child_env

RUN_ID = r"[0-9a-f]{32}"
STORE = r"sqlite:////\S+/mlflow\.db"
# the lines galmorph prints for one `galmorph train` (galmorph.core.progress, workflows.train.closing_summary)
START = r"training c2 \((keras|torch), CPU\) on synthetic/4way: \d+ train, \d+ validation, \d+ test images, up to \d+ epochs?"
EPOCH = (r"epoch (\d+)/(\d+)  train loss \d+\.\d{3} acc \d\.\d{3}  val loss \d+\.\d{3} acc \d\.\d{3}  \d+\.\d s"
         r"(  \(best\))?")
EARLY = r"early stopping after epoch \d+: no lower validation loss for \d+ epochs; keeping epoch \d+"
SUMMARY = (r"test accuracy \d\.\d{4}  balanced \d\.\d{4}  macro F1 \d\.\d{4}  \(\d+ epochs?, best \d+\)",
           rf"run {RUN_ID} \(\S+\) in experiment '[^']+'",
           r"model models:/m-[0-9a-f]{32}",
           rf"see it: mlflow ui --backend-store-uri {STORE}")
GALMORPH = (START, EPOCH, EARLY, *SUMMARY)
# MLflow lines kept: the ones `mlflow run` itself prints (its own process, before and after ours)
MLFLOW_RUN = (r"\S+ \S+ INFO mlflow\.projects\.utils: === Created directory \S+ for downloading remote URIs "
              r"passed to arguments of type 'path' ===",
              r"\S+ \S+ INFO mlflow\.projects\.backend\.local: === Running command .* in run with ID '" + RUN_ID + "' === ?",
              r"\S+ \S+ INFO mlflow\.projects: === Run \(ID '" + RUN_ID + r"'\) succeeded ===")


def _unexpected(output: str, allowed) -> list[str]:
    return [line for line in output.splitlines() if not any(re.fullmatch(p, line) for p in allowed)]


def _train(backend: str, tracking_uri: str, *extra: str) -> str:
    cmd = [sys.executable, "-m", "galmorph", "train", "--backend", backend, "--dataset", "synthetic",
           "--synthetic-n", "160", "--epochs", "1", "--batch-size", "32", *extra]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, timeout=600,
                          env=child_env({"MLFLOW_TRACKING_URI": tracking_uri}))
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["keras", "torch"])
def test_a_run_prints_only_galmorph_lines(tracking_uri, backend):
    out = _train(backend, tracking_uri)
    assert _unexpected(out, GALMORPH) == []
    lines = out.splitlines()
    assert re.fullmatch(START, lines[0]) and re.fullmatch(EPOCH, lines[1]).group(1, 2) == ("1", "1")
    assert [bool(re.fullmatch(p, line)) for p, line in zip(SUMMARY, lines[-4:])] == [True] * 4
    run_id = re.search(RUN_ID, lines[-3]).group(0)
    import mlflow

    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["backend"] == backend
    assert lines[-2] == f"model {run.data.tags['model_uri']}"
    assert lines[-1] == f"see it: mlflow ui --backend-store-uri {tracking_uri}"


@pytest.mark.slow
def test_quiet_prints_only_the_closing_summary(tracking_uri):
    out = _train("torch", tracking_uri, "--quiet", "true", "--log-model", "false")
    lines = out.splitlines()
    assert len(lines) == 3, out  # no model logged: no model line
    assert [bool(re.fullmatch(p, line)) for p, line in zip(SUMMARY[:2] + SUMMARY[3:], lines)] == [True] * 3


@pytest.mark.slow
def test_nested_runs_prefix_their_epoch_lines_with_the_run_name(tracking_uri):
    cmd = [sys.executable, "-m", "galmorph", "multiseed", "--seeds", "2", "--backend", "torch", "--dataset",
           "synthetic", "--synthetic-n", "160", "--epochs", "1", "--batch-size", "32", "--log-model", "false"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, timeout=600,
                          env=child_env({"MLFLOW_TRACKING_URI": tracking_uri}))
    assert proc.returncode == 0, proc.stdout[-3000:]
    epochs = [line for line in proc.stdout.splitlines() if re.search(r"epoch 1/1  train loss", line)]
    assert [re.fullmatch(r"c2-torch-synthetic-default-x2-seed(\d)  " + EPOCH, line) is not None for line in epochs] \
        == [True, True], proc.stdout
    assert [line.split("  ")[0][-1] for line in epochs] == ["0", "1"]


@pytest.mark.slow
def test_the_quick_start_under_mlflow_run_fits_on_a_screen(tracking_uri):
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "c2_keras", "--env-manager", "local",
           "-P", "dataset=synthetic", "-P", "synthetic_n=160", "-P", "epochs=2"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, timeout=900,
                          env=child_env({"MLFLOW_TRACKING_URI": tracking_uri}))
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) < 25, proc.stdout
    assert _unexpected(proc.stdout, GALMORPH + MLFLOW_RUN) == []
    epochs = [re.fullmatch(EPOCH, line).group(1, 2) for line in lines if re.fullmatch(EPOCH, line)]
    assert epochs == [("1", "2"), ("2", "2")]
