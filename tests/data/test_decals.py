"""Galaxy10 DECaLS as a registered dataset, against a local HTTP server on 127.0.0.1.

The test writes a small file in the DECaLS layout (256x256 grz images, `ans`, `ra`, `dec`,
`redshift`, `pxscale`), whose channels hold distinct constant levels (z = 200, r = 120,
g = 40 in RGB channels 0, 1, 2, as in Legacy Surveys composites) under a class pattern, and
points the `galaxy10_decals` record at it: its SHA256 and the server's URL. Download
(resume, checksum mismatch), astroNN cache reuse, loading (columns, bands, downsampling),
`galmorph data info` and a 1-epoch training at --image-size 64 are all checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import REPO, child_env, run_python

from galmorph.core.errors import GalmorphError
from galmorph.data import augment, bands, hdf5, http, registry

N = 60  # 6 per class: every class of morph_4way keeps images in each split
LEVELS = {"z": 200, "r": 120, "g": 40}  # the constant level of each band's channel


def write_decals(path, n: int = N, seed: int = 0):
    """A small Galaxy10_DECals.h5 look-alike: (n, 256, 256, 3) uint8, labels 0..9, four columns."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = np.empty((n, 256, 256, 3), np.uint8)
    for c, band in enumerate(bands.LEGACY.rgb):
        images[..., c] = LEVELS[band]
    images += rng.integers(0, 8, images.shape, dtype=np.uint8)
    for i, label in enumerate(labels):  # class k: a bright square at row 20 * k
        images[i, 20 * label : 20 * label + 16, 100:116, :] = 250
    cols = {"ra": rng.uniform(0, 360, n), "dec": rng.uniform(-10, 30, n), "redshift": rng.uniform(0, 0.1, n),
            "pxscale": rng.choice([0.262, 0.524], n)}
    hdf5.write(path, images, labels, **cols)
    return images, labels, cols


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        state = self.server.state
        rng = self.headers.get("Range")
        with state["lock"]:
            action = state["script"].pop(0) if state["script"] else state["then"]
            state["log"].append((rng, action))
        payload = state["payload"]
        if action == "corrupt":
            payload = bytes(b ^ 0xFF for b in payload[:64]) + payload[64:]
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        body = payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        self.end_headers()
        try:
            if action.startswith("drop:"):  # promise the whole body, send part of it, hang up
                self.wfile.write(body[: int(action[5:])])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


@pytest.fixture
def decals(tmp_path, monkeypatch):
    """The galaxy10_decals record pointed at a small file served on 127.0.0.1; no astroNN copy."""
    src = tmp_path / "served" / "Galaxy10_DECals.h5"
    src.parent.mkdir()
    images, labels, cols = write_decals(src)
    payload = src.read_bytes()
    sha = hashlib.sha256(payload).hexdigest()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.state = {"payload": payload, "script": [], "then": "ok", "log": [], "lock": threading.Lock()}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/Galaxy10_DECals.h5"
    record = dataclasses.replace(registry.DATASETS["galaxy10_decals"], urls=(url,), sha256=sha)
    monkeypatch.setitem(registry.DATASETS, "galaxy10_decals", record)
    monkeypatch.setattr(registry, "ASTRONN_GALAXY10_DECALS", tmp_path / "astronn" / "Galaxy10_DECals.h5")
    monkeypatch.setenv("GALMORPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(http, "wait", lambda *a, **k: False)  # no backoff sleeps
    yield {"src": src, "payload": payload, "sha": sha, "url": url, "state": server.state, "images": images,
           "labels": labels, "cols": cols, "dest": tmp_path / "cache" / "Galaxy10_DECals.h5",
           "astronn": tmp_path / "astronn" / "Galaxy10_DECals.h5"}
    server.shutdown()
    server.server_close()


def test_record_declares_the_published_file():
    rec = registry.DATASETS["galaxy10_decals"]
    assert rec.filename == "Galaxy10_DECals.h5" and rec.image_shape == (256, 256, 3)
    assert rec.sha256 == "19aefc477c41bb7f77ff07599a6b82a038dc042f889a111b0d4d98bb755c1571"
    assert rec.urls == ("https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5?download=1",)
    assert rec.class_names[0] == "Disturbed" and rec.class_names[9] == "Edge-on with Bulge" and len(rec.class_names) == 10
    assert rec.bands is bands.LEGACY and rec.bands.choices == ("g", "r", "z", "grz")
    assert registry.DATASETS["galaxy10"].bands is bands.SDSS  # SDSS unchanged


def test_interrupted_download_resumes_and_verifies(decals):
    half = len(decals["payload"]) // 2
    decals["state"]["script"] = [f"drop:{half}"]
    path = registry.downloaded_path(registry.DATASETS["galaxy10_decals"], progress=False)
    assert path == decals["dest"] and path.read_bytes() == decals["payload"]
    ranges = [r for r, _ in decals["state"]["log"]]
    assert len(ranges) == 2 and ranges[0] is None  # the second request continued what the first got
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= half  # (whole 1 MiB chunks of it)
    assert not path.with_name(path.name + ".part").exists()
    again = registry.downloaded_path(registry.DATASETS["galaxy10_decals"], download=False, progress=False)
    assert again == path and len(decals["state"]["log"]) == 2  # verified copy reused, no request


def test_checksum_mismatch_is_never_installed(decals):
    decals["state"]["then"] = "corrupt"
    with pytest.raises(GalmorphError, match=r"could not download Galaxy10_DECals.h5: .*SHA256 mismatch") as exc:
        registry.downloaded_path(registry.DATASETS["galaxy10_decals"], progress=False)
    assert "\n" not in str(exc.value)
    assert not decals["dest"].exists() and not decals["dest"].with_name("Galaxy10_DECals.h5.part").exists()
    with pytest.raises(GalmorphError, match="galaxy10_decals is not downloaded yet; run `galmorph data download galaxy10_decals`"):
        registry.downloaded_path(registry.DATASETS["galaxy10_decals"], download=False, progress=False)


def test_astronn_cache_is_reused_only_when_its_checksum_matches(decals):
    theirs = decals["astronn"]
    theirs.parent.mkdir()
    theirs.write_bytes(decals["payload"])
    assert registry.downloaded_path(registry.DATASETS["galaxy10_decals"], progress=False) == theirs
    assert not decals["state"]["log"] and sorted(p.name for p in theirs.parent.iterdir()) == ["Galaxy10_DECals.h5"]
    damaged = bytearray(decals["payload"])
    damaged[len(damaged) // 2] ^= 0xFF
    theirs.write_bytes(bytes(damaged))  # same size, wrong content: galmorph fetches its own
    assert registry.downloaded_path(registry.DATASETS["galaxy10_decals"], progress=False) == decals["dest"]
    assert len(decals["state"]["log"]) == 1 and theirs.read_bytes() == bytes(damaged)  # theirs left alone


def test_load_keeps_columns_and_the_legacy_band_order(decals):
    data = registry.load("galaxy10_decals", "native", progress=False)
    assert data.images.shape == (N, 256, 256, 3) and data.bands is bands.LEGACY
    assert set(data.columns) == {"ra", "dec", "redshift", "pxscale"}
    np.testing.assert_array_equal(data.columns["ra"], decals["cols"]["ra"])
    four = registry.load("galaxy10_decals", progress=False)  # default scheme: morph_4way drops edge-on disks
    assert four.scheme == "morph_4way" and four.class_names == ("E", "S0", "Sp", "Irr")
    assert not np.isin(decals["labels"][four.rows], [8, 9]).any()
    for key in ("ra", "dec", "pxscale"):  # each kept image keeps its own values, also through subset()
        np.testing.assert_array_equal(four.columns[key], decals["cols"][key][four.rows])
        sub = four.subset(np.arange(0, len(four), 3))
        np.testing.assert_array_equal(sub.columns[key], decals["cols"][key][sub.rows])
    corner = np.zeros((1, 256, 256, 3), np.uint8)
    for c, band in enumerate(bands.LEGACY.rgb):
        corner[..., c] = LEVELS[band]
    for band, want in {"g": [40], "r": [120], "z": [200], "grz": [40, 120, 200]}.items():
        maker = augment.BatchMaker(corner, four.bands.channels(band), crop_fraction=1.0)
        assert maker.batch_uint8(np.array([0]))[0, 0, 0].tolist() == want, band
    with pytest.raises(GalmorphError, match="unknown band 'i' for Legacy Surveys"):
        four.bands.channels("i")


def test_image_size_area_averages_on_load(decals):
    full = registry.load("galaxy10_decals", "native", progress=False)
    small = registry.load("galaxy10_decals", "native", image_size=64, progress=False)
    assert small.images.shape == (N, 64, 64, 3) and small.images.dtype == np.uint8
    blocks = full.images.reshape(N, 64, 4, 64, 4, 3).astype(np.float64).mean(axis=(2, 4))
    np.testing.assert_array_equal(small.images, np.rint(blocks).astype(np.uint8))
    odd = registry.load("galaxy10_decals", "native", image_size=100, progress=False)
    assert odd.images.shape == (N, 100, 100, 3)
    assert abs(odd.images.astype(float).mean() - full.images.astype(float).mean()) < 0.5  # flux kept
    with pytest.raises(GalmorphError, match="image_size 300 is larger than the 256x256 images"):
        registry.load("galaxy10_decals", "native", image_size=300, progress=False)


def test_band_and_image_size_are_checked_against_the_dataset():
    from galmorph.config import TrainConfig
    from galmorph.workflows.prepare import check_data_settings

    check_data_settings(TrainConfig(dataset="galaxy10_decals", band="z", image_size=64))
    check_data_settings(TrainConfig(dataset="galaxy10", band="i"))
    with pytest.raises(GalmorphError, match=r"invalid choice: 'i' for band with dataset galaxy10_decals .*g, r, z, grz"):
        check_data_settings(TrainConfig(dataset="galaxy10_decals", band="i"))
    with pytest.raises(GalmorphError, match=r"invalid choice: 'z' for band with dataset synthetic .*g, r, i, gri"):
        check_data_settings(TrainConfig(dataset="synthetic", band="z"))
    with pytest.raises(GalmorphError, match="image_size 512 is larger than the 256x256 images of galaxy10_decals"):
        check_data_settings(TrainConfig(dataset="galaxy10_decals", image_size=512))
    with pytest.raises(GalmorphError, match="image_size must be 0 or more"):
        TrainConfig(image_size=-1).validate()


PATCH = """
import dataclasses, sys
from galmorph.data import registry
rec = dataclasses.replace(registry.DATASETS["galaxy10_decals"], urls=({url!r},), sha256={sha!r})
registry.DATASETS["galaxy10_decals"] = rec
from galmorph.cli import main
sys.exit(main({argv!r}))
"""


def test_data_info_and_a_one_epoch_training_at_64_px(decals, tracking_uri):
    env = child_env({"GALMORPH_CACHE": str(decals["dest"].parent), "MLFLOW_TRACKING_URI": tracking_uri})
    registry.downloaded_path(registry.DATASETS["galaxy10_decals"], progress=False)  # into the child's cache

    def cli(*argv):
        return run_python(PATCH.format(url=decals["url"], sha=decals["sha"], argv=list(argv)), env=env, cwd=REPO)

    info = cli("data", "info", "galaxy10_decals")
    assert info.returncode == 0, info.stderr[-2000:]
    assert f"galaxy10_decals: {N - N // 5} images (256, 256, 3) uint8, scheme morph_4way" in info.stdout  # edge-on dropped
    assert "channels z, r, g; --band g, r, z, grz" in info.stdout and "columns: ra, dec, redshift, pxscale" in info.stdout
    train = cli("train", "--dataset", "galaxy10_decals", "--image-size", "64", "--band", "r", "--backend", "torch",
                "--epochs", "1", "--batch-size", "16", "--experiment", "decals", "--log-model", "false")
    assert train.returncode == 0, train.stderr[-3000:]
    import mlflow

    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("decals").experiment_id])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    p = run.data.params
    assert (p["dataset"], p["image_size"], p["image_size_loaded"], p["band"]) == ("galaxy10_decals", "64", "64", "r")
    assert p["input_shape"] == "58x58x1" and p["class_names"] == "E,S0,Sp,Irr"
