"""The data-pipeline benchmark runs (tiny) and prints its figures; targets live in the benchmark."""

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_data_pipeline_benchmark_tiny(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "data_pipeline.py"), "--tiny", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| augment/band |" in proc.stdout and "faster" in proc.stdout
    figures = json.loads(out.read_text())
    assert set(figures["pipeline_images_per_s"]) == {f"{m}/{b}" for m in ("paper40", "random", "none") for b in ("g", "gri")}
    assert {m["mode"] for m in figures["peak_memory"]} == {"none", "random", "paper40"}
    assert all(m["peak_rss_mb"] > 0 for m in figures["peak_memory"])
    # paper40 streams 40 views of every training image, random/none one each
    by_mode = {m["mode"]: m["images_streamed"] for m in figures["peak_memory"]}
    assert by_mode["paper40"] == 40 * by_mode["none"] == 40 * by_mode["random"]
    assert figures["speedup_vs_phys449"] > 1
