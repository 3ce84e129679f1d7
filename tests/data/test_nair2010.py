"""galmorph.data.nair2010 against a real local HTTP server (127.0.0.1, port 0).

The server speaks VizieR's ASU tab-separated protocol (and a VOTable endpoint for the
astroquery path) from tests/data/nair2010/asu_table2.tsv, and serves ImgCutout-like JPEGs
made with PIL whose colour differs by band (R = i = 200, G = r = 120, B = g = 20 + 10 k for
galaxy k), so the tests can check that the g band lands in channel 2 and that every image
sits next to its own labels. Per-galaxy modes script the failures.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import next_timestamp
from skyserver import (  # the `server` fixture: conftest
    DEC,
    EXPECTED_CLASS,
    G_R,
    IDS,
    R_I,
    RA,
    TT,
    N,
    Z,
    g_value,
)

from galmorph.core.errors import GalmorphError
from galmorph.data import http, nair2010
from galmorph.data.nair2010 import catalogue, cutouts


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(http, "BACKOFF_BASE", 0.01)


def _prepare(server, tmp_path, **kw):
    args = dict(out=tmp_path / "out" / "nair2010.h5", cache_dir=tmp_path / "cache", cutout_url=server.base + "/cutout",
                vizier_server=server.base, workers=4, max_rate=500.0, retries=2, timeout=5.0, progress=False)
    args.update(kw)
    return nair2010.prepare(**args)


def _sky(images: np.ndarray) -> np.ndarray:
    """Per-image, per-channel mean of a 20x20 corner patch, away from the central 'galaxy'."""
    return images[:, 5:25, 5:25].reshape(len(images), -1, 3).mean(axis=1)


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def _cached(tmp_path: Path) -> set[int]:
    names = {p.name for p in (tmp_path / "cache" / "cutouts").glob("*.jpg")}
    return {k for k in range(N) if f"{IDS[k]}.jpg" in names}


# --------------------------------------------------------------------------- labels
@pytest.mark.parametrize("ttype, cls", [(-5, 0), (-3, 1), (-2, 1), (-1, 1), (0, 1), (1, 2), (5, 2), (9, 2),
                                        (10, 3), (99, 3), (-6, 3), (-4, 3), (11, 3), (0.5, 3), (-5.5, 3),
                                        (math.nan, 3), (math.inf, 3)])
def test_ttype_to_class_table(ttype, cls):
    assert nair2010.ttype_to_class(np.array([ttype]))[0] == cls


def test_ttype_to_class_shapes_and_odd_inputs():
    out = nair2010.ttype_to_class(np.array([[-5, 0], [7, 99]]))
    assert out.dtype == np.uint8 and out.shape == (2, 2)
    assert out.tolist() == [[0, 1], [2, 3]]
    assert nair2010.ttype_to_class(["-5", "3", "x", None]).tolist() == [0, 2, 3, 3]
    masked = np.ma.masked_array([-5, 4, 0], mask=[False, True, False])
    assert nair2010.ttype_to_class(masked).tolist() == [0, 3, 1]
    assert nair2010.CLASS_NAMES == ("E", "S0", "Sp", "Irr+Misc")


# --------------------------------------------------------------------------- catalogue
def test_parse_asu_tsv_variants():
    text = "\r\n".join([
        "#", "#   VizieR Astronomical Server", "", "#RESOURCE=yCat_21860427",
        "#Table\tJ_ApJS_186_427_refs:", "Ref\tAuthor", "---\t------", "1\tNair", "",
        "#Table\tJ_ApJS_186_427_table2:", '"_RAJ2000"\t"_DEJ2000"\tSDSS\tTT',  # no units line, quoted names
        "---------\t---------\t----\t--",
        "10.5\t-1.25\tJ004200.00-011500.0\t-5",
        "#INFO a comment inside the table",
        "12:00:00\t-01:30:00\tJ120000.00-013000.0\t 99",  # sexagesimal fallback
        "\t\t\t",  # a row of empty cells
        "",
    ])
    df = catalogue._normalise_catalogue(catalogue._parse_asu_tsv(text), "test")
    assert df["objid"].tolist()[:2] == ["J004200.00-011500.0", "J120000.00-013000.0"]
    assert df["ra"].tolist()[:2] == [10.5, 180.0] and df["dec"].tolist()[:2] == [-1.25, -1.5]
    assert df["ttype"].tolist()[:2] == [-5.0, 99.0]
    assert len(df) == 3 and df["objid"][2] == "nair00002" and math.isnan(df["ttype"][2])
    assert df["redshift"].isna().all()

    with pytest.raises(GalmorphError, match="Unknown table"):
        catalogue._parse_asu_tsv("#\n#***** ERROR: Unknown table J/ApJS/186/427/table9\n")
    with pytest.raises(GalmorphError, match="no ttype column"):
        catalogue._normalise_catalogue(catalogue._parse_asu_tsv("a\tb\n--\t--\n1\t2\n"), "test")


def test_fetch_catalogue_parses_and_caches(server, tmp_path):
    df = nair2010.fetch_catalogue(tmp_path / "cache", vizier_server=server.base)
    assert list(df.columns) == ["objid", "ra", "dec", "ttype", "redshift", "gmag"]
    assert len(df) == N == 16
    assert df["objid"].tolist() == IDS and IDS[0] == "J094418.15+471725.1"
    np.testing.assert_allclose(df["ra"], RA)
    np.testing.assert_allclose(df["dec"], DEC)
    assert df["ttype"].tolist() == [float(t) for t in TT]
    assert math.isnan(df["redshift"][8]) and df["redshift"][0] == pytest.approx(0.0461)
    assert df["gmag"][0] == pytest.approx(15.71)
    assert df.attrs["server"] == server.base
    (q,) = server.state.catalogue_queries
    assert q["-source"] == "J/ApJS/186/427/table2" and q["-out.max"] == "unlimited"
    assert q["-out.add"] == "_RAJ2000,_DEJ2000" and q["-oc.form"] == "d"
    assert "-out.all" in server.state.catalogue_raw[0].split("&")  # a bare flag, as VizieR documents it

    again = nair2010.fetch_catalogue(tmp_path / "cache", vizier_server=server.base)
    assert len(server.state.catalogue_queries) == 1  # served from the cache
    assert again.equals(df) and again.attrs["server"] == server.base

    few = nair2010.fetch_catalogue(tmp_path / "cache", vizier_server=server.base, row_limit=5)
    assert len(few) == 5 and server.state.catalogue_queries[-1]["-out.max"] == "5"
    assert len(nair2010.fetch_catalogue(tmp_path / "cache", vizier_server=server.base)) == N
    assert len(server.state.catalogue_queries) == 2


def test_fetch_catalogue_through_astroquery(server, tmp_path, monkeypatch):
    core = pytest.importorskip("astroquery.vizier.core")
    # astroquery always builds https://<host>/viz-bin/<type>; send it to the local server instead.
    monkeypatch.setattr(core.VizierClass, "_server_to_url",
                        lambda self, return_type="votable": f"{server.base}/viz-bin/{return_type}")
    df = nair2010.fetch_catalogue(tmp_path / "cache", vizier_server=None)
    (body,) = server.state.votable_bodies
    assert "-source=J/ApJS/186/427/table2" in body and "-out.max=unlimited" in body and "-out.all" in body
    assert "-out.add=_RAJ2000,_DEJ2000" in body
    assert df["objid"].tolist() == IDS and df["ttype"].tolist() == [float(t) for t in TT]
    np.testing.assert_allclose(df["ra"], RA)
    assert math.isnan(df["redshift"][8]) and df["redshift"][1] == pytest.approx(0.0285)
    assert df.attrs["server"].startswith("astroquery Vizier")


# --------------------------------------------------------------------------- prepare
def test_prepare_end_to_end(server, tmp_path):
    modes = {1: "fail_once", 3: "429_once", 5: "slow_once", 7: "always500", 9: "truncated", 11: "wrong_size",
             13: "html", 15: "blank"}
    server.state.modes = modes
    manifest = _prepare(server, tmp_path, timeout=1.0)
    failed = {7, 9, 11, 13, 15}
    kept = [k for k in range(N) if k not in failed]
    out = tmp_path / "out" / "nair2010.h5"

    with h5py.File(out, "r") as f:
        images = f["images"][:]
        assert images.dtype == np.uint8 and images.shape == (len(kept), 110, 110, 3)
        assert f["ans"].dtype == np.uint8 and f["ans"][:].tolist() == [EXPECTED_CLASS[TT[k]] for k in kept]
        assert f["ttype"][:].tolist() == [TT[k] for k in kept]
        np.testing.assert_allclose(f["ra"][:], [RA[k] for k in kept])
        np.testing.assert_allclose(f["dec"][:], [DEC[k] for k in kept])
        assert f["ra"].dtype == np.float64 and f["dec"].dtype == np.float64
        np.testing.assert_allclose(f["redshift"][:], [Z[k] for k in kept], equal_nan=True)
        assert [s.decode() for s in f["objid"][:]] == [IDS[k] for k in kept]
        assert list(f.attrs["class_names"]) == ["E", "S0", "Sp", "Irr+Misc"]
        assert "J/ApJS/186/427" in f.attrs["source"] and f.attrs["created"]
    # SDSS JPEG order: channel 0 = i, 1 = r, 2 = g; and each image is its own galaxy's.
    sky = _sky(images)
    np.testing.assert_allclose(sky[:, 0], R_I, atol=4)
    np.testing.assert_allclose(sky[:, 1], G_R, atol=4)
    np.testing.assert_allclose(sky[:, 2], [g_value(k) for k in kept], atol=4)
    assert (images[:, 55, 55].astype(int) - sky > 30).all()  # the central 'galaxy' survived

    from galmorph.data import hdf5  # the project's Galaxy10-format reader accepts the file
    raw = hdf5.read(out)
    assert raw.class_names == nair2010.CLASS_NAMES and raw.labels.tolist() == [EXPECTED_CLASS[TT[k]] for k in kept]

    assert manifest == json.loads((tmp_path / "out" / "nair2010.manifest.json").read_text())
    assert manifest["n_galaxies"] == 11 and manifest["n_failed"] == 5 and manifest["n_catalogue"] == N
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["scale_arcsec_per_pixel"] == 0.7 and manifest["g_channel"] == 2
    assert manifest["cutout_url_template"].startswith(server.base + "/cutout?ra={ra}&dec={dec}&scale=0.7")
    assert "J/ApJS/186/427" in manifest["catalogue_source"]
    assert sum(manifest["class_counts"].values()) == 11
    from galmorph import __version__
    assert manifest["galmorph_version"] == __version__

    with open(tmp_path / "out" / "nair2010.failures.csv", newline="") as fh:
        fails = {r["objid"]: r["reason"] for r in csv.DictReader(fh)}
    assert set(fails) == {IDS[k] for k in failed}
    assert fails[IDS[7]] == "HTTP 500 after 3 attempts"
    assert fails[IDS[9]].startswith("not a decodable image")
    assert fails[IDS[11]] == "wrong size 100x100 (expected 110x110)"
    assert fails[IDS[13]].startswith("not a decodable image")
    assert fails[IDS[15]].startswith("blank image")

    req = server.state.requests
    assert [req[k] for k in (1, 3, 5)] == [2, 2, 2]  # retried once each
    assert req[7] == 3 and [req[k] for k in (9, 11, 13, 15)] == [1, 1, 1, 1]
    assert all(req[k] == 1 for k in range(N) if k not in modes)
    assert _cached(tmp_path) == set(kept)  # bad images are never stored as good
    assert _tmp_files(tmp_path) == []


def test_resume_fetches_only_missing_cutouts(server, tmp_path):
    server.state.down = set(range(0, N, 2))
    first = _prepare(server, tmp_path, retries=0)
    assert first["n_galaxies"] == N // 2 and first["n_failed"] == N // 2
    with h5py.File(tmp_path / "out" / "nair2010.h5", "r") as f:
        assert [s.decode() for s in f["objid"][:]] == IDS[1::2]

    server.state.down = set()
    server.state.requests.clear()
    second = _prepare(server, tmp_path, retries=0)
    assert dict(server.state.requests) == {k: 1 for k in range(0, N, 2)}  # only the missing ones, once each
    assert second["n_galaxies"] == N and second["n_failed"] == 0
    assert len(server.state.catalogue_queries) == 1  # catalogue from the cache
    with h5py.File(tmp_path / "out" / "nair2010.h5", "r") as f:
        assert [s.decode() for s in f["objid"][:]] == IDS
        sky = _sky(f["images"][:])
    np.testing.assert_allclose(sky[:, 2], [g_value(k) for k in range(N)], atol=4)
    assert (tmp_path / "out" / "nair2010.failures.csv").read_text().strip() == "objid,ra,dec,reason"
    assert second["sha256"] == hashlib.sha256((tmp_path / "out" / "nair2010.h5").read_bytes()).hexdigest()


def test_interrupted_run_resumes(server, tmp_path, monkeypatch):
    real_store, calls, lock = cutouts._store_cutout, [0], threading.Lock()

    def store_then_interrupt(path, data):
        with lock:
            calls[0] += 1
            n = calls[0]
        if n == 5:
            raise KeyboardInterrupt  # as if Ctrl-C landed mid-run
        real_store(path, data)

    monkeypatch.setattr(cutouts, "_store_cutout", store_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _prepare(server, tmp_path, workers=2, max_rate=50.0)
    done = _cached(tmp_path)
    assert 4 <= len(done) < N - 2  # stopped early, what arrived is kept
    assert not (tmp_path / "out" / "nair2010.h5").exists()
    assert not (tmp_path / "out" / "nair2010.manifest.json").exists()
    assert _tmp_files(tmp_path) == []

    monkeypatch.setattr(cutouts, "_store_cutout", real_store)
    server.state.requests.clear()
    manifest = _prepare(server, tmp_path)
    assert set(server.state.requests) == set(range(N)) - done
    assert all(v == 1 for v in server.state.requests.values())
    assert manifest["n_galaxies"] == N and _tmp_files(tmp_path) == []


def test_limit_takes_first_rows(server, tmp_path):
    manifest = _prepare(server, tmp_path, limit=3)
    assert manifest["n_galaxies"] == 3 and manifest["limit"] == 3
    assert set(server.state.requests) == {0, 1, 2}
    with h5py.File(tmp_path / "out" / "nair2010.h5", "r") as f:
        assert [s.decode() for s in f["objid"][:]] == IDS[:3]


def test_concurrency_is_bounded_by_workers(server, tmp_path):
    server.state.delay = 0.1
    _prepare(server, tmp_path, workers=3, max_rate=1000.0)
    assert sum(server.state.requests.values()) == N
    assert 2 <= server.state.max_inflight <= 3


def test_rate_limit_is_respected(server, tmp_path):
    rate = 20.0
    _prepare(server, tmp_path, workers=8, max_rate=rate)
    times = sorted(server.state.times)
    assert len(times) == N
    assert times[-1] - times[0] >= 0.8 * (N - 1) / rate  # a burst would take a few ms
    window = 0.5
    busiest = max(sum(1 for t in times if t0 <= t < t0 + window) for t0 in times)
    assert busiest <= rate * window + 2


def test_all_failures_raise_and_write_no_hdf5(server, tmp_path):
    server.state.modes = {k: "always500" for k in range(N)}
    with pytest.raises(GalmorphError, match="no cutout") as err:
        _prepare(server, tmp_path, retries=0)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "nair2010.h5").exists()
    assert not (tmp_path / "out" / "nair2010.manifest.json").exists()
    with open(tmp_path / "out" / "nair2010.failures.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == N
    assert _tmp_files(tmp_path) == []


@pytest.mark.parametrize("kwargs, word", [
    ({"limit": 0}, "limit"), ({"workers": 0}, "workers"), ({"max_rate": 0.0}, "max_rate"),
    ({"max_rate": -1.0}, "max_rate"), ({"retries": -1}, "retries"), ({"timeout": 0}, "timeout"),
    ({"cutout_url": "ftp://example.org/getjpeg"}, "cutout_url"),
])
def test_bad_arguments(server, tmp_path, kwargs, word):
    with pytest.raises(GalmorphError, match=word) as err:
        _prepare(server, tmp_path, **kwargs)
    assert "\n" not in str(err.value)
    assert server.state.catalogue_queries == [] and not server.state.requests  # nothing was asked


def test_unwritable_output(server, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(GalmorphError, match="cannot write to the output folder"):
        _prepare(server, tmp_path, out=tmp_path / "afile" / "nair2010.h5")
    with pytest.raises(GalmorphError, match="is a folder"):
        _prepare(server, tmp_path, out=tmp_path)
    assert server.state.catalogue_queries == []


@pytest.mark.parametrize("mode", ["empty", "html"])
def test_unusable_catalogue(server, tmp_path, mode):
    server.state.catalogue_mode = mode
    with pytest.raises(GalmorphError, match="holds no table rows") as err:
        _prepare(server, tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "nair2010.h5").exists() and not server.state.requests
    assert not (tmp_path / "cache" / "catalogue.csv").exists()


def test_default_output_path(monkeypatch, tmp_path):
    monkeypatch.setenv("GALMORPH_CACHE", str(tmp_path))
    assert nair2010.default_output_path() == tmp_path / "nair2010" / "nair2010.h5"


def test_loading_verifies_the_file_against_its_manifest(server, tmp_path, monkeypatch):
    from galmorph.data import integrity, registry

    monkeypatch.setenv("GALMORPH_CACHE", str(tmp_path / "home"))
    out = nair2010.default_output_path()
    _prepare(server, tmp_path, out=out, limit=6)
    good = registry.load("nair2010", "native")
    assert len(good) == 6 and integrity.check(out) is None  # prepare recorded the checksum it wrote

    with h5py.File(out, "r") as f:
        chunk = f["images"].id.get_chunk_info(0)
    next_timestamp(out)
    with open(out, "r+b") as fh:  # one byte of pixel data, in place: h5py would read it silently
        fh.seek(chunk.byte_offset + chunk.size // 2)
        byte = fh.read(1)[0]
        fh.seek(-1, 1)
        fh.write(bytes([byte ^ 0xFF]))
    with pytest.raises(GalmorphError) as err:
        registry.load("nair2010", "native")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{out} does not match its manifest (SHA256 ")
    assert message.endswith("...: changed on disk), so it is damaged and not used; rebuild it with "
                            "`galmorph data prepare nair2010` (it reuses the cached catalogue and cutouts)")

    requests_before = sum(server.state.requests.values())
    _prepare(server, tmp_path, out=out, limit=6)  # the rebuild the message asks for, from cached cutouts
    assert sum(server.state.requests.values()) == requests_before
    assert registry.load("nair2010", "native").digest() == good.digest()

    with open(out, "r+b") as fh:
        fh.truncate(out.stat().st_size - 100)
    with pytest.raises(GalmorphError, match=r"expected [\d,]+: truncated or overwritten\), so it is damaged"):
        registry.load("nair2010", "native")
    nair2010.manifest_path(out).unlink()
    with pytest.raises(GalmorphError, match="its manifest nair2010.manifest.json is missing"):
        registry.load("nair2010", "native")


def test_import_loads_no_framework():
    code = ("import sys, galmorph.data.nair2010; "
            "bad = [m for m in ('torch', 'tensorflow', 'keras', 'astroquery') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
