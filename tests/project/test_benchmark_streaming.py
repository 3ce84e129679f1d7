"""The streaming benchmark (issue 20) runs in its tiny form (no memory cap, 512 images of
64 px): its table and JSON have the promised shape and its files are deleted afterwards. The
figures themselves are the real run's business (docs/scale.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_tiny_streaming_benchmark_prints_its_ratios_and_deletes_its_files(tmp_path):
    before = set((REPO / "benchmarks").iterdir())
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "streaming.py"), "--tiny", "--json",
                           str(tmp_path / "out.json")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["benchmark"] == "streaming" and result["tiny"] is True and result["rows"] == 512
    memory, streamed = result["in_memory"], result["streamed"]
    assert memory["streamed"] is False and streamed["streamed"] is True
    assert memory["n_images"] == 256 and streamed["n_images"] == 512
    assert memory["digest"] != streamed["digest"]  # the subset is the file's first half
    for run in (memory, streamed):
        assert run["img_s"] > 0 and run["peak_rss_mb"] > 0 and run["input_shape"] == [58, 58, 1]
    assert result["ratio"] == pytest.approx(streamed["img_s"] / memory["img_s"]) == result["round_ratios"][0]
    out = proc.stdout
    assert "| in memory (subset) | 256 | false | --stream auto: " in out
    assert "| streamed (whole file) | 512 | true | --stream true |" in out
    assert "| streamed / in-memory img/s >= 0.9 (median over rounds of " in out and "| file / cap >= 1.5 | n/a (no cap) | n/a |" in out
    assert set((REPO / "benchmarks").iterdir()) == before  # the files it built are gone
