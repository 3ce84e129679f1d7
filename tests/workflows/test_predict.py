"""`galmorph predict` end to end with a real model: one tiny torch model trained here (1 epoch,
width 0.25, 48 px images), then the command on a mix of every input kind and every bad input
of issue 11, through galmorph.cli.main (its exit codes and `galmorph: error:` lines)."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, child_env, wait_for
from skyserver import DEC, RA

from galmorph import cli

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _inputs(tmp, h5):
    """A folder of PNGs of the .h5 images (one 2x larger, one JPEG) and every bad image file."""
    import h5py

    with h5py.File(h5) as f:
        images = f["images"][:6]
    d = tmp / "inputs"
    (d / "sub").mkdir(parents=True)
    for k in range(4):
        Image.fromarray(images[k]).save(d / f"g{k}.png")
    Image.fromarray(np.kron(images[4], np.ones((2, 2, 1), np.uint8))).save(d / "sub" / "big4.png")  # area: exact
    Image.fromarray(images[5]).save(d / "sub" / "g5.jpg", quality=95)
    data = (d / "sub" / "g5.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.jpg").write_bytes(b"")
    Image.fromarray(np.full((32, 32, 4), 90, np.uint8), "RGBA").save(d / "alpha.png")
    Image.fromarray(np.full((32, 32), 90, np.uint8), "L").save(d / "gray.png")
    return d


def test_predict_mixed_inputs_bad_ones_in_the_errors_file(env, server, tmp_path, capsys):
    import h5py
    from astropy.io import fits as afits

    from galmorph.inference.model import column, load

    run_id, h5, tmp, _ = env
    folder = _inputs(tmp_path, h5)
    afits.PrimaryHDU(np.linspace(0, 30, 40 * 40).reshape(40, 40)).writeto(tmp_path / "one.fits")
    nan = np.ones((40, 40))
    nan[0, 0] = np.nan
    afits.PrimaryHDU(nan).writeto(tmp_path / "nan.fits")
    afits.PrimaryHDU(np.ones((2, 3, 8, 8))).writeto(tmp_path / "four.fits")
    with h5py.File(tmp_path / "noimages.h5", "w") as f:
        f["ans"] = np.zeros(3)
    cat = tmp_path / "cat.csv"
    cat.write_text(f"id,ra,dec\nc0,{RA[0]},{DEC[0]}\nc1,{RA[1]},{DEC[1]}\nc404,{RA[2]},{DEC[2]}\n"
                   f"chtml,{RA[3]},{DEC[3]}\ncpole,{RA[4]},95\ncnora,,{DEC[5]}\n")
    server.state.expect = ("0.5", "48", "48")
    server.state.modes = {2: "404", 3: "html"}
    out = tmp_path / "p.csv"
    argv = ["predict", run_id, str(folder), str(h5), str(tmp_path / "one.fits"), str(tmp_path / "nan.fits"),
            str(tmp_path / "four.fits"), str(tmp_path / "noimages.h5"), str(cat), "--output", str(out),
            "--batch-size", "7", "--scale", "0.5", "--cutout-url", f"{server.base}/cutout", "--retries", "0",
            "--cutout-cache", str(tmp_path / "cache"), "--quiet"]
    assert cli.main(argv) == 1  # some failed
    rows, errors = _rows(out), {r["source"]: r["error"] for r in _rows(tmp_path / "p.errors.csv")}
    model = load(run_id)
    names = model.info.class_names
    assert list(rows[0])[:1] == ["source"] and [column(c) for c in names] == [k for k in rows[0] if k.startswith("p_")]
    by_source = {r["source"]: r for r in rows}
    assert len(rows) == 6 + 60 + 1 + 2  # images, h5 rows, fits, catalogue
    # the .h5 rows and the lossless PNGs of the same images (and the 2x one, area-averaged back) agree
    with h5py.File(h5) as f:
        images = f["images"][:]
    direct = model.predict(images).proba
    p = np.array([[float(by_source[f"{h5}[{k}]"][column(c)]) for c in names] for k in range(60)])
    np.testing.assert_allclose(p, direct, atol=1e-5)
    for name, k in (("g0.png", 0), ("g3.png", 3), ("sub/big4.png", 4)):
        got = [float(by_source[str(folder / name)][column(c)]) for c in names]
        np.testing.assert_allclose(got, direct[k], atol=1e-5)
    assert by_source[f"{h5}[7]"]["id"] == "1007" and by_source["c1"]["ra"] == str(RA[1])
    assert all(r["predicted"] in names and abs(float(r["confidence"]) - max(float(r[column(c)]) for c in names)) < 1e-6
               for r in rows)
    assert list(by_source)[:6] == [str(folder / n) for n in ("g0.png", "g1.png", "g2.png", "g3.png", "sub/big4.png",
                                                             "sub/g5.jpg")]
    assert set(errors) == {str(folder / n) for n in ("truncated.jpg", "empty.jpg", "alpha.png", "gray.png")} | {
        str(tmp_path / "nan.fits"), str(tmp_path / "four.fits"), str(tmp_path / "noimages.h5"), "c404", "chtml",
        "cpole", "cnora"}
    assert errors["c404"] == "HTTP 404" and "decodable" in errors["chtml"] and "dec 95" in errors["cpole"]
    assert f"{out}: 69 galaxies predicted; 11 failed, listed in {tmp_path / 'p.errors.csv'}" in capsys.readouterr().out
    # a second run fetches only what failed: the catalogue's good cutouts are cached
    before = sum(server.state.requests.values())
    assert cli.main(["predict", run_id, str(cat), "--output", str(tmp_path / "again.csv"), "--scale", "0.5",
                     "--cutout-url", f"{server.base}/cutout", "--retries", "0", "--cutout-cache",
                     str(tmp_path / "cache"), "--quiet", "--tta"]) == 1
    assert sum(server.state.requests.values()) - before == 2
    again = {r["source"]: r for r in _rows(tmp_path / "again.csv")}
    assert set(again) == {"c0", "c1"} and again["c0"][column(names[0])] != by_source["c0"][column(names[0])]  # tta


def test_usage_errors_write_nothing(env, tmp_path, capsys):
    import mlflow

    run_id, h5, tmp, _ = env
    cat = tmp_path / "cat.csv"
    cat.write_text(f"ra,dec\n{RA[0]},{DEC[0]}\n")
    (tmp_path / "afile").write_text("not a folder")
    with mlflow.start_run() as other:  # a run with no galmorph model
        mlflow.log_param("x", 1)
    cases = [
        (["predict", "0123456789abcdef0123456789abcdef", str(h5)], "0123456789abcdef"),
        (["predict", other.info.run_id, str(h5)], other.info.run_id),
        (["predict", run_id, str(h5), "--output", str(tmp_path / "missing" / "p.csv")], "does not exist"),
        # the user's case of issue 21: every galaxy predicted, then a PermissionError; as root
        # only a path under a file (or /proc) refuses files
        (["predict", run_id, str(h5), "--output", str(tmp_path / "afile" / "p.csv")],
         f"cannot write to the output file {tmp_path / 'afile' / 'p.csv'}: {tmp_path / 'afile'} is a file, not a folder"),
        (["predict", run_id, str(h5), "--output", "/proc/galmorph/p.csv"], "no file can be made in /proc"),
        (["predict", run_id, str(tmp_path / "nothing.jpg")], "does not exist"),
        (["predict", run_id, str(cat)], "--scale"),  # the training set has no fixed pixel scale
    ]
    for argv, words in cases:
        capsys.readouterr()
        assert cli.main(argv + (["--output", str(tmp_path / "p.csv")] if "--output" not in argv else [])) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("galmorph: error: ") and words in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "cat.csv"]


def test_ensemble_and_registered_alias(env, tmp_path, capsys):
    """An ensemble (galmorph.inference.pyfunc.log_ensemble of this model and a second seed)
    adds p_<class>_std and averages its members; models:/NAME@ALIAS is accepted."""
    import h5py
    import mlflow

    from galmorph.config import TrainConfig
    from galmorph.inference import pyfunc
    from galmorph.inference.model import column, load
    from galmorph.workflows import train

    run_id, h5, tmp, _ = env
    started = []
    train.run(TrainConfig(dataset=str(h5), backend="torch", model="c2", width=0.25, dense_units=16, epochs=1,
                          batch_size=16, threads=1, quiet=True, experiment="predict", augment="none", seed=1),
              started=started.append)
    members = [load(r) for r in (run_id, started[0])]
    with h5py.File(h5) as f:
        images = f["images"][:5]
    with mlflow.start_run() as parent:
        uri = pyfunc.log_ensemble([m.uri for m in members], parent.info.run_id, [run_id, started[0]])
    version = mlflow.register_model(members[0].uri, "gm")
    mlflow.MlflowClient().set_registered_model_alias("gm", "champ", version.version)
    names = members[0].info.class_names
    assert cli.main(["predict", uri, str(h5), "--output", str(tmp_path / "ens.csv"), "--quiet"]) == 0
    rows = _rows(tmp_path / "ens.csv")[:5]
    got = np.array([[float(r[column(c)]) for c in names] for r in rows])
    std = np.array([[float(r[column(c) + "_std"]) for c in names] for r in rows])
    each = np.stack([m.predict(images).proba for m in members])
    np.testing.assert_allclose(got, each.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(std, each.std(axis=0), atol=1e-5)
    assert cli.main(["predict", "models:/gm@champ", str(h5), "--output", str(tmp_path / "alias.csv"), "--quiet"]) == 0
    alias = np.array([[float(r[column(c)]) for c in names] for r in _rows(tmp_path / "alias.csv")[:5]])
    np.testing.assert_allclose(alias, each[0], atol=1e-5)
    assert not any(k.endswith("_std") for k in _rows(tmp_path / "alias.csv")[0])


def test_catalogue_run_interrupted_half_way_resumes_from_cached_cutouts(env, server, tmp_path):
    """Ctrl-C while cutouts are being fetched: exit 130, no output; the next run requests only
    the cutouts that were not cached (every galaxy is asked for exactly once overall)."""
    run_id, _, _, uri = env
    cat = tmp_path / "cat.csv"
    cat.write_text("id,ra,dec\n" + "".join(f"g{k},{RA[k]},{DEC[k]}\n" for k in range(8)))
    server.state.expect = ("0.5", "48", "48")
    server.state.delay = 0.3
    cache, out = tmp_path / "cache", tmp_path / "p.csv"
    argv = ["predict", run_id, str(cat), "--output", str(out), "--scale", "0.5", "--cutout-url",
            f"{server.base}/cutout", "--workers", "1", "--cutout-cache", str(cache), "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "galmorph", *argv], cwd=REPO,
                            env=child_env({"MLFLOW_TRACKING_URI": uri}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: len(list(cache.glob("*.jpg"))) >= 2 or proc.poll() is not None, 120, "two cached cutouts")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr[-2000:]
    cached = len(list(cache.glob("*.jpg")))
    assert 2 <= cached < 8 and not out.exists() and not (tmp_path / "p.errors.csv").exists()
    server.state.delay = 0
    assert cli.main(argv) == 0
    assert sum(server.state.requests.values()) == 8 and set(server.state.requests.values()) == {1}
    assert [r["source"] for r in _rows(out)] == [f"g{k}" for k in range(8)]
