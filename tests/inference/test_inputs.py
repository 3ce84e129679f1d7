"""The readers of `galmorph predict` (galmorph.inference): images and folders, .h5 files, FITS
files and catalogues, each with the bad inputs of issue 11 becoming one error entry (the
pipeline with a real model: tests/workflows/test_predict.py)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import make_h5
from skyserver import DEC, RA

from galmorph.core.errors import GalmorphError
from galmorph.inference import fits, inputs
from galmorph.inference.catalogue import CatalogueSource

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

G = inputs.Geometry(32)


def _save(path, arr, mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path, fmt)
    return path


def _gradient(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 77)], -1).astype(np.uint8)


def test_images_are_cropped_resized_and_found_recursively_in_order(tmp_path):
    big = _gradient(64, 96)
    _save(tmp_path / "imgs" / "b" / "wide.png", big)
    _save(tmp_path / "imgs" / "a.png", _gradient(32, 32))
    _save(tmp_path / "imgs" / "notes.txt.png.bak", np.zeros((4, 4, 3), np.uint8), fmt="PNG")  # ignored suffix
    (src,) = inputs.discover([str(tmp_path / "imgs")], inputs.Geometry(32, crop=0.5))
    entries = list(src)
    assert [e.source for e in entries] == [str(tmp_path / "imgs" / "a.png"), str(tmp_path / "imgs" / "b" / "wide.png")]
    # wide: centre 32x32 of the 64x96 image (crop 0.5 of the shorter side), already the model's side
    np.testing.assert_array_equal(entries[1].image, big[16:48, 32:64])
    # a: 32 px, crop 0.5 -> its centre 16x16, enlarged to 32
    assert entries[0].image.shape == (32, 32, 3) and entries[0].image.dtype == np.uint8
    # shrinking is area averaging: 64x64 of 2x2 blocks -> the blocks' means
    block = np.kron(np.arange(32 * 32 * 3).reshape(32, 32, 3) % 200, np.ones((2, 2, 1))).astype(np.uint8)
    out = inputs.read_image(_save(tmp_path / "block.png", block), G)
    np.testing.assert_array_equal(out, block[::2, ::2])


def test_bad_images_are_error_entries_and_the_others_are_read(tmp_path):
    d = tmp_path / "mixed"
    good = _save(d / "good.jpg", _gradient(40, 40), fmt="JPEG")
    data = good.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 50)
    (d / "empty.png").write_bytes(b"")
    _save(d / "alpha.png", np.full((8, 8, 4), 200, np.uint8), "RGBA")
    _save(d / "gray.png", np.full((8, 8), 100, np.uint8), "L")
    entries = {e.source.rsplit("/", 1)[1]: e for e in inputs.discover([str(d)], G)[0]}
    assert entries["good.jpg"].image.shape == (32, 32, 3) and entries["good.jpg"].error is None
    errors = {k: e.error for k, e in entries.items() if e.image is None}
    assert set(errors) == {"truncated.jpg", "corrupt.jpg", "empty.png", "alpha.png", "gray.png"}
    assert errors["empty.png"] == "empty file"
    assert "alpha channel" in errors["alpha.png"] and "grayscale" in errors["gray.png"]
    assert "not a decodable image" in errors["corrupt.jpg"] and "truncated" in errors["truncated.jpg"].lower()
    assert all("\n" not in e for e in errors.values())


def test_usage_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.tiff").write_bytes(b"II*")
    for path, words in ((tmp_path / "nope.jpg", "does not exist"), (tmp_path / "empty", "holds no JPEG"),
                        (tmp_path / "x.tiff", "not .tiff")):
        with pytest.raises(GalmorphError, match=words):
            inputs.discover([str(path)], G)


def test_h5_rows_ids_chunks_and_a_file_without_images(tmp_path, monkeypatch):
    import h5py

    monkeypatch.setattr(inputs, "H5_CHUNK", 7)  # several chunks and a partial last one
    path = make_h5(tmp_path / "g.h5", n=20, size=40)
    with h5py.File(path, "a") as f:
        f["id"] = np.arange(100, 120)
        images = f["images"][:]
    (src,) = inputs.discover([str(path)], G)
    entries = list(src)
    assert len(src) == 20 and len(entries) == 20
    assert entries[13].source == f"{path}[13]" and entries[13].meta == {"id": 113}
    np.testing.assert_array_equal(entries[13].image, inputs.array_to_side(images[13], G))
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["pictures"] = np.zeros((3, 32, 32, 3), np.uint8)
    (bad,) = list(inputs.discover([str(tmp_path / "bad.h5")], G)[0])
    assert bad.image is None and "no `images` dataset" in bad.error and "pictures" in bad.error


def test_lupton_stretch_formula_and_band_layout(tmp_path):
    from astropy.io import fits as afits

    s = fits.Stretch(q=8.0, alpha=0.5, minimum=1.0)
    x = np.array([[0.0, 1.0, 3.0, 1e6]])
    expect = np.clip(np.arcsinh(0.5 * 8.0 * np.maximum(x - 1.0, 0)) / 8.0, 0, 1)
    np.testing.assert_allclose(fits.lupton(x[None], s)[0], expect)
    # a cube: colour kept (C_b proportional to X_b), saturated pixels scaled down, not clipped per band
    cube = np.stack([np.full((2, 2), v) for v in (1.0, 2.0, 3.0)])  # g, r, i
    c = fits.lupton(cube, fits.Stretch(q=1.0, alpha=1.0))
    # X = (1, 2, 3), I = 2, C = X asinh(2) / 2 = (0.72, 1.44, 2.17): saturated, divided by 2.17
    np.testing.assert_allclose(c[:, 0, 0], [1 / 3, 2 / 3, 1])
    rgb = fits.to_uint8(cube, fits.Stretch(q=1.0, alpha=1.0))
    assert rgb.shape == (2, 2, 3) and tuple(rgb[0, 0]) == (255, 170, 85)  # i -> red, g -> blue
    afits.PrimaryHDU(np.linspace(0, 20, 64 * 64).reshape(64, 64)).writeto(tmp_path / "one.fits")
    one = fits.reader(s, 1)(tmp_path / "one.fits", G)
    assert one.shape == (32, 32, 3) and (one[..., 0] == one[..., 2]).all() and one.max() > one.min()
    with pytest.raises(ValueError, match="reads 3 bands"):
        fits.reader(s, 3)(tmp_path / "one.fits", G)


def test_bad_fits_files_are_error_entries(tmp_path):
    from astropy.io import fits as afits

    nan = np.ones((16, 16))
    nan[3, 4] = np.nan
    afits.PrimaryHDU(nan).writeto(tmp_path / "nan.fits")
    afits.PrimaryHDU(np.ones((1, 3, 16, 16))).writeto(tmp_path / "four.fits")
    (tmp_path / "junk.fits").write_bytes(b"SIMPLE  = T" + b" " * 100)
    src = inputs.discover([str(tmp_path)], G, fits_reader=fits.reader(fits.Stretch(), 1))[0]
    errors = {e.source.rsplit("/", 1)[1]: e.error for e in src}
    assert "1 NaN or infinite pixels" in errors["nan.fits"]
    assert "4 axes" in errors["four.fits"] and "not a readable FITS file" in errors["junk.fits"]


def _catalogue(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerows(rows)
    return path


def test_catalogue_rows_fetch_resume_and_errors(server, tmp_path):
    from galmorph.data.nair2010.cutouts import download_cutouts

    server.state.expect = ("0.396", "32", "32")
    server.state.modes = {2: "404", 3: "html"}
    cat = _catalogue(tmp_path / "cat.csv", [["ID", "ra", "dec"], ["a", RA[0], DEC[0]], ["b", RA[1], DEC[1]],
                                            ["c", RA[2], DEC[2]], ["d", RA[3], DEC[3]], ["e", RA[4], 95],
                                            ["f", "", DEC[5]]])

    def fetch(todo, files, ra, dec, scales, failures, side):
        download_cutouts(todo, files, ra, dec, failures, url=f"{server.base}/cutout", workers=2, max_rate=100,
                         retries=0, timeout=10, progress=False, scale=scales, size=side)

    src = CatalogueSource(cat, G, tmp_path / "cache", scale=0.396, fetch=fetch)
    got = {e.source: e for e in src}
    assert got["a"].image.shape == (32, 32, 3) and got["a"].meta == {"id": "a", "ra": RA[0], "dec": DEC[0]}
    assert got["c"].error == "HTTP 404" and "not a decodable image" in got["d"].error
    assert "dec 95 outside" in got["e"].error and "ra missing" in got["f"].error
    assert sum(server.state.requests.values()) == 4
    list(CatalogueSource(cat, G, tmp_path / "cache", scale=0.396, fetch=fetch))  # cached: only the failures again
    assert sum(server.state.requests.values()) == 6
    # a scale column serves a model without a fixed pixel scale; these cutouts are cached at 0.396
    scaled = _catalogue(tmp_path / "scaled.csv", [["ra", "dec", "scale"], [RA[0], DEC[0], 0.396], [RA[1], DEC[1], ""]])
    got = list(CatalogueSource(scaled, G, tmp_path / "cache", scale=None, fetch=fetch))
    assert got[0].image.shape == (32, 32, 3) and got[0].source == f"{scaled}[0]" and "no usable pixel scale" in got[1].error
    assert sum(server.state.requests.values()) == 6
    with pytest.raises(GalmorphError, match="needs a scale column"):
        CatalogueSource(cat, G, tmp_path / "cache", scale=None, fetch=fetch)
    with pytest.raises(GalmorphError, match="no ra column"):
        CatalogueSource(_catalogue(tmp_path / "x.csv", [["RA_deg", "dec"], [1, 2]]), G, tmp_path, scale=1, fetch=fetch)
