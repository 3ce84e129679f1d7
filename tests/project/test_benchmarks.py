"""The throughput benchmark (issue 6) runs in CI-sized form: its Markdown table, its JSON and
its MLflow run have the promised shape. The figures themselves are the real run's business."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

ROW_KEYS = {"model", "input", "backend", "pipeline_img_s", "ceiling_img_s", "efficiency", "inference_img_s",
            "first_epoch_s", "peak_host_mb", "peak_device_mb", "reference_img_s", "vs_reference", "settings"}
HEADER = ("| model | input | backend | pipeline img/s | ceiling img/s | efficiency | inference img/s | "
          "reference img/s | pipeline / reference | first epoch s | peak host MB | peak device MB | settings |")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("throughput")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    import mlflow

    mlflow.MlflowClient(tracking_uri=uri).search_experiments()  # create the schema first
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--tiny", "--models", "c1,c2",
         "--out", str(tmp / "out"), "--experiment", "bench-test", "--note", "CI format check."],
        capture_output=True, text=True, timeout=900, cwd=tmp,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": uri},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"proc": proc, "out": tmp / "out", "uri": uri}


@pytest.mark.slow
def test_tiny_benchmark_prints_and_writes_the_markdown_table(tiny_run):
    md = (tiny_run["out"] / "throughput.md").read_text()
    assert md in tiny_run["proc"].stdout
    lines = md.splitlines()
    start = lines.index(HEADER)
    body = [line for line in lines[start + 2:] if line.startswith("| c")]
    assert len(body) == 4  # c1, c2 x torch, keras at the tiny 40x40 input
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == HEADER.count("|") - 1
        assert cells[1] == "40x40x1" and cells[2] in ("torch", "keras")
        assert float(cells[3]) > 0 and float(cells[4]) > 0 and float(cells[5]) > 0  # pipeline, ceiling, efficiency
        assert cells[11] == "n/a"  # no device memory on a CPU
    assert "Device: CPU only" in md or "Device: " in md
    assert "| ratio | value | target met |" in md and "pipeline efficiency >= 0.95" in md
    assert "CI format check." in md


@pytest.mark.slow
def test_tiny_benchmark_json_has_every_figure(tiny_run):
    result = json.loads((tiny_run["out"] / "throughput.json").read_text())
    assert result["tiny"] is True and result["benchmark"] == "throughput"
    assert set(result["platform"]) == {"torch", "keras"}
    rows = result["rows"]
    assert {(r["model"], r["backend"]) for r in rows} == {(m, b) for m in ("c1", "c2") for b in ("torch", "keras")}
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["efficiency"] == pytest.approx(r["pipeline_img_s"] / r["ceiling_img_s"])
        assert r["vs_reference"] == pytest.approx(r["pipeline_img_s"] / r["reference_img_s"])
        assert r["first_epoch_s"] > 0 and r["peak_host_mb"] > 0 and r["peak_device_mb"] is None
        assert r["resolved"]["precision_resolved"] == "fp32"  # auto on a CPU
    assert {t["target"] for t in result["targets"]} >= {"C2 40x40x1 torch: pipeline efficiency >= 0.95"}
    assert [r["input"] for r in result["ratios"]] == ["40x40x1", "40x40x1"]


@pytest.mark.slow
def test_tiny_benchmark_is_an_mlflow_run_of_its_own(tiny_run):
    import mlflow

    result = json.loads((tiny_run["out"] / "throughput.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=tiny_run["uri"])
    exp = client.get_experiment_by_name("bench-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == result["mlflow_run_id"]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["benchmark"] == "throughput"
    for key in ("c2_torch_40_pipeline_img_s", "c2_keras_40_efficiency", "c1_torch_40_reference_img_s",
                "c1_keras_40_first_epoch_s", "c2_torch_40_peak_host_mb", "c2_keras_40_inference_img_s"):
        assert key in run.data.metrics, key
    assert run.data.params["batch_size"] == "8" and run.data.params["device"] == "cpu"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"throughput.md", "throughput.json"}
