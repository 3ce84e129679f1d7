"""Survey-scale `galmorph predict` (issue 20): the output written in parts that a rerun
continues. A run SIGKILLed just after a part is in place, rerun, writes the same file byte for
byte as an uninterrupted run; parts of another prediction are refused in one line; Parquet
catalogues and Parquet output give what the CSV ones give. The tiny torch model of
test_predict.py (the `trained` fixture of conftest.py)."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, child_env, make_h5
from skyserver import DEC, RA

from galmorph import cli
from galmorph.inference import parts

pytest.importorskip("PIL")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# part boundaries that do not fall on batch boundaries: a short batch ends every part
ARGS = ["--part-size", "40", "--batch-size", "16", "--quiet"]
KILL_AFTER = """
import os, signal, sys
from galmorph import cli
from galmorph.inference import parts

def hook(path):
    if path.name == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)

parts.after_commit = hook
sys.exit(cli.main(sys.argv[2:]))
"""


class Stop(Exception):
    pass


def _stop_after(name: str):
    def hook(path):
        if path.name == name:
            raise Stop(name)
    return hook


@pytest.fixture
def survey(env, tmp_path):
    """A 150-row .h5 at the model's side, with ids, ra and dec, and a reference output of it."""
    run_id, _, _, _ = env
    h5 = make_h5(tmp_path / "survey.h5", n=150, size=48, seed=4, id=np.arange(5000, 5150),
                 ra=np.linspace(10, 20, 150), dec=np.linspace(-5, 5, 150))
    reference = tmp_path / "reference.csv"
    assert cli.main(["predict", run_id, str(h5), "--output", str(reference), *ARGS]) == 0
    return run_id, h5, reference


def test_a_run_killed_after_a_part_resumes_to_the_uninterrupted_output(env, survey, tmp_path, monkeypatch, capsys):
    run_id, h5, reference = survey
    _, _, _, uri = env
    out = tmp_path / "p.csv"
    argv = ["predict", run_id, str(h5), "--output", str(out), *ARGS]
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER, "part-000001.parquet", *argv], cwd=REPO,
                          env=child_env({"MLFLOW_TRACKING_URI": uri}), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    folder = parts.folder_of(out)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "part-000000.parquet", "part-000001.parquet"]
    assert not out.exists() and not (tmp_path / "p.errors.csv").exists()
    assert pq.read_table(folder / "part-000001.parquet")["source"].to_pylist() == [f"{h5}[{k}]" for k in range(40, 80)]

    written = []
    monkeypatch.setattr(parts, "after_commit", lambda path: written.append(path.name))
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert f"continuing {folder}: 80 of 150 galaxies done" in capsys.readouterr().err
    assert written == ["part-000002.parquet", "part-000003.parquet"]  # the two parts done were not redone
    assert out.read_bytes() == reference.read_bytes()  # every row once, in order, the same probabilities
    assert not folder.exists() and (tmp_path / "p.errors.csv").read_text() == "source,error\n"


def test_parts_of_another_prediction_are_refused_in_one_line(env, survey, tmp_path, monkeypatch, capsys):
    run_id, h5, reference = survey
    out = tmp_path / "p.csv"
    argv = ["predict", run_id, str(h5), "--output", str(out), *ARGS]
    monkeypatch.setattr(parts, "after_commit", _stop_after("part-000000.parquet"))
    with pytest.raises(Stop):
        cli.main(argv)
    folder = parts.folder_of(out)
    before = sorted(p.name for p in folder.iterdir())
    other = make_h5(tmp_path / "other.h5", n=150, size=48, seed=5)
    for change, differ in ((["--crop", "0.9"], "options"), (["--part-size", "50"], "part_size")):
        capsys.readouterr()
        assert cli.main([*argv, *change]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"galmorph: error: {folder} holds the parts of another prediction (different {differ}); "
                       "delete it, pass --restart, or choose another --output"]
    assert cli.main(["predict", run_id, str(other), "--output", str(out), *ARGS]) == 2
    assert "(different inputs)" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == before and not out.exists()
    monkeypatch.setattr(parts, "after_commit", None)
    assert cli.main([*argv, "--restart"]) == 0  # the same model and input: the output of the same galaxies
    assert out.read_bytes() == reference.read_bytes() and not folder.exists()


def test_parquet_catalogue_and_parquet_output_match_the_csv_ones(env, survey, server, tmp_path):
    import pandas as pd

    run_id, h5, reference = survey
    server.state.expect = ("0.5", "48", "48")
    server.state.modes = {2: "404"}
    ids = [101, 102, 103, None, 105]
    ras, decs = RA[:4] + [RA[4]], DEC[:4] + [95.0]  # a 404 and a dec out of range: two error rows
    pq.write_table(pa.table({"ID": pa.array(ids, pa.int64()), "RA": ras, "Dec": decs, "other": ["x"] * 5}),
                   tmp_path / "cat.parquet")
    (tmp_path / "cat.csv").write_text("id,ra,dec\n" + "".join(
        f"{'' if i is None else i},{r!r},{d!r}\n" for i, r, d in zip(ids, ras, decs)))
    common = ["--scale", "0.5", "--cutout-url", f"{server.base}/cutout", "--retries", "0",
              "--cutout-cache", str(tmp_path / "cache"), *ARGS]
    assert cli.main(["predict", run_id, str(tmp_path / "cat.csv"), str(h5), "--output", str(tmp_path / "c.csv"),
                     *common]) == 1
    assert cli.main(["predict", run_id, str(tmp_path / "cat.parquet"), str(h5), "--output",
                     str(tmp_path / "c.parquet"), *common]) == 1
    got, want = pd.read_parquet(tmp_path / "c.parquet"), pd.read_csv(tmp_path / "c.csv", dtype={"id": str})
    assert list(got.columns) == list(want.columns) and len(got) == 3 + 150
    source_of_none = f"{tmp_path / 'cat.parquet'}[3]"
    assert got["source"].tolist()[:3] == ["101", "102", source_of_none]
    assert pq.read_table(tmp_path / "c.parquet")["id"].to_pylist()[:4] == ["101", "102", None, "5000"]
    assert got["ra"].dtype == np.float64
    numbers = [c for c in got.columns if c.startswith("p_") or c in ("ra", "dec", "confidence")]
    np.testing.assert_array_equal(got[numbers].to_numpy(), want[numbers].to_numpy())
    assert got["predicted"].tolist() == want["predicted"].tolist()
    h5_rows = pd.read_csv(reference, dtype={"id": str})
    # float32 forward passes over other batches (the catalogue's rows shift them): equal to rounding
    np.testing.assert_allclose(got[numbers].to_numpy()[3:], h5_rows[numbers].to_numpy(), rtol=0, atol=1e-6)
    errors = pd.read_csv(tmp_path / "c.errors.csv", dtype=str).to_numpy().tolist()
    assert errors == [["103", "HTTP 404"], ["105", "dec 95 outside [-90, 90] degrees"]]
