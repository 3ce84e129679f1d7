"""The synthetic SDSS-like dataset: determinism, format, physics, noise, cache, errors, learnability."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from galmorph.core.errors import GalmorphError
from galmorph.data import synthetic
from galmorph.data.synthetic import cache as synthetic_cache

E, S0, SP, IRR = range(4)


@pytest.fixture(scope="module")
def clean():
    """400 noiseless galaxies (same galaxies as `noisy`)."""
    return synthetic.generate(400, 69, seed=2, noise=0.0)


@pytest.fixture(scope="module")
def noisy():
    return synthetic.generate(400, 69, seed=2, noise=1.0)


def _linear(images):
    """Undo the Lupton asinh stretch on the mean of the channels: linear intensity (N, H, W)."""
    v = images.astype(np.float64).mean(-1) / 255.0
    return np.sinh(synthetic._Q * v) / synthetic._Q


def _darkest_corner_std(images, k=6):
    """Per image and channel, the pixel std of its darkest k x k corner (where the sky is cleanest)."""
    c = np.stack([images[:, :k, :k], images[:, :k, -k:], images[:, -k:, :k], images[:, -k:, -k:]], 1)
    c = c.astype(np.float64)
    means = c.mean(axis=(2, 3))  # (N, 4, 3)
    pick = means.sum(-1).argmin(1)
    darkest = c[np.arange(len(c)), pick]  # (N, k, k, 3)
    return darkest.std(axis=(1, 2))


# --- format and determinism -----------------------------------------------------------------


def test_shapes_dtypes_and_labels(noisy):
    images, labels = noisy
    assert images.shape == (400, 69, 69, 3) and images.dtype == np.uint8
    assert labels.shape == (400,) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert synthetic.CLASS_NAMES == ("E", "S0", "Sp", "Irr")
    assert images.max() > 150 and images.min() == 0  # bright cores, noise clipped at black
    flat = images.reshape(len(images), -1)
    assert np.all(flat.min(1) < flat.max(1))  # no blank cutouts (hdf5.read rejects those)


def test_same_seed_same_bytes_other_seed_differs():
    a_img, a_lab = synthetic.generate(24, 48, seed=7)
    b_img, b_lab = synthetic.generate(24, 48, seed=7)
    c_img, c_lab = synthetic.generate(24, 48, seed=8)
    assert a_img.tobytes() == b_img.tobytes() and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_output_does_not_depend_on_chunk():
    ref, ref_lab = synthetic.generate(37, 40, seed=3, chunk=256)
    for chunk in (1, 5, 16):
        img, lab = synthetic.generate(37, 40, seed=3, chunk=chunk)
        assert np.array_equal(lab, ref_lab)
        assert img.tobytes() == ref.tobytes(), f"chunk={chunk} changed the images"


def test_noise_knob_changes_noise_only(clean, noisy):
    # same galaxies: the noiseless and noisy cores agree to within the noise
    (c_img, c_lab), (n_img, n_lab) = clean, noisy
    assert np.array_equal(c_lab, n_lab)
    core = (slice(None), slice(30, 39), slice(30, 39))
    diff = np.abs(c_img[core].astype(int) - n_img[core].astype(int))
    assert np.median(diff) <= 3


def test_class_balance_and_fractions():
    _, labels = synthetic.generate(402, 20, seed=0)
    counts = np.bincount(labels, minlength=4)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 402
    _, labels = synthetic.generate(60, 20, seed=0, class_fractions=(0.5, 0.5, 0.0, 0.0))
    assert np.array_equal(np.bincount(labels, minlength=4), [30, 30, 0, 0])
    _, labels = synthetic.generate(100, 20, seed=0, class_fractions=(0.1, 0.2, 0.3, 0.4))
    assert np.array_equal(np.bincount(labels, minlength=4), [10, 20, 30, 40])


def test_other_sizes_keep_the_angular_scale():
    assert synthetic.pixel_scale(69) == pytest.approx(1.188)
    assert synthetic.pixel_scale(110) == pytest.approx(0.7)
    small, _ = synthetic.generate(8, 16, seed=1)
    assert small.shape == (8, 16, 16, 3)
    big, lab = synthetic.generate(8, 110, seed=1, noise=0.0)
    ref, lab69 = synthetic.generate(8, 69, seed=1, noise=0.0)
    assert big.shape == (8, 110, 110, 3) and np.array_equal(lab, lab69)
    # the same galaxies, finer pixels: more pixels above the sky (in the i band) at 110 px
    assert (big[..., 0] > 40).sum() > 1.8 * (ref[..., 0] > 40).sum()


# --- physics ----------------------------------------------------------------------------------


def test_colours_ellipticals_red_irregulars_blue(clean):
    images, labels = clean
    x = images.astype(np.float64)
    ratio = {}
    for c in range(4):
        per_image = []
        for im in x[labels == c]:
            sel = im[..., 0] > 40  # galaxy pixels
            per_image.append(im[..., 2][sel].mean() / im[..., 0][sel].mean())
        ratio[c] = np.mean(per_image)
    # g/i (blue over red channel): E and S0 redder than spirals, irregulars the bluest
    assert ratio[E] < ratio[SP] < ratio[IRR]
    assert ratio[S0] < ratio[SP]
    assert ratio[E] < 0.8 and ratio[IRR] > 1.0


def _r80_over_r20(images):
    f = _linear(images)
    sky = np.median(f[:, :6, :6].reshape(len(f), -1), axis=1)
    n = images.shape[1]
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2).ravel()
    order = np.argsort(r)
    rs = r[order]
    out = []
    for im, s in zip(f, sky):
        cum = np.cumsum(np.clip(im.ravel()[order] - s, 0, None) * (rs < 0.4 * n))
        r20 = rs[np.searchsorted(cum, 0.2 * cum[-1])]
        r80 = rs[np.searchsorted(cum, 0.8 * cum[-1])]
        out.append(r80 / max(r20, 0.5))
    return np.array(out)


def test_ellipticals_more_concentrated_than_disks_and_irregulars(clean):
    images, labels = clean
    conc = _r80_over_r20(images)
    med = [np.median(conc[labels == c]) for c in range(4)]
    assert med[E] > med[S0] > med[IRR]
    assert med[E] > med[SP] > med[IRR]
    assert med[E] > 5.0 and med[IRR] < 4.0  # de Vaucouleurs ~ 5-7 after the PSF, clumpy light ~ 3


def test_ellipticals_round_disks_can_be_edge_on(clean):
    images, labels = clean
    f = _linear(images)
    n = images.shape[1]
    yy, xx = np.mgrid[:n, :n]
    mask = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) < 12
    q = []
    for im in f:
        w = np.clip(im - im[:6, :6].mean(), 0, None) * mask
        t = w.sum()
        mx, my = (w * xx).sum() / t, (w * yy).sum() / t
        cov = np.array([[(w * (xx - mx) ** 2).sum(), (w * (xx - mx) * (yy - my)).sum()],
                        [(w * (xx - mx) * (yy - my)).sum(), (w * (yy - my) ** 2).sum()]]) / t
        ev = np.linalg.eigvalsh(cov)
        q.append(np.sqrt(ev[0] / ev[1]))
    q = np.array(q)
    assert q[labels == E].min() > 0.55  # intrinsic b/a >= 0.6
    disks = q[(labels == S0) | (labels == SP)]
    assert (disks < 0.45).mean() > 0.08  # inclined disks


def test_noiseless_corners_are_flat_sky(clean, noisy):
    images, _ = clean
    std = _darkest_corner_std(images)
    assert (std.max(1) == 0).mean() > 0.6  # most noiseless corners are one constant sky value (big E wings reach some)
    sky = [np.bincount(images[:, :6, :6, b].ravel()).argmax() for b in range(3)]
    assert all(v > 0 for v in sky)
    corners = np.concatenate([images[:, :6, :6], images[:, -6:, -6:]], 1).reshape(-1, 3)
    assert np.all(corners >= np.array(sky))  # without noise nothing dips below the sky level
    n_corners = np.concatenate([noisy[0][:, :6, :6], noisy[0][:, -6:, -6:]], 1).reshape(-1, 3)
    assert (n_corners < np.array(sky)).mean() > 0.2


def test_more_noise_more_corner_scatter():
    stds = []
    for noise in (0.0, 0.5, 1.0, 2.0):
        images, _ = synthetic.generate(60, 48, seed=4, noise=noise)
        stds.append(np.median(_darkest_corner_std(images)))
    assert stds[0] == 0
    assert stds[0] < stds[1] < stds[2] < stds[3]
    assert 3 < stds[2] < 9  # Galaxy10 corners scatter by about 5-6 (uint8)


# --- learnability -----------------------------------------------------------------------------


def _features(images):
    """Colour, concentration, asymmetry and clumpiness per image: the classic CAS-like set."""
    x = images.astype(np.float64)
    n = images.shape[1]
    c = slice(n // 2 - 12, n // 2 + 13)
    core = x[:, c, c]
    colour = core[..., 2].sum((1, 2)) / np.maximum(core[..., 0].sum((1, 2)), 1)
    conc = _r80_over_r20(images)
    f = _linear(images)[:, c, c]
    f = f - f.min(axis=(1, 2), keepdims=True)
    asym = np.abs(f - f[:, ::-1, ::-1]).sum((1, 2)) / f.sum((1, 2))
    smooth = (f + np.roll(f, 1, 1) + np.roll(f, -1, 1) + np.roll(f, 1, 2) + np.roll(f, -1, 2)) / 5
    clumpy = np.abs(f - smooth).sum((1, 2)) / f.sum((1, 2))
    return np.stack([colour, np.log(conc), asym, clumpy], 1)


def test_learnable_but_not_trivial():
    images, labels = synthetic.generate(800, 48, seed=9, noise=1.0)
    feats = _features(images)
    train, test = slice(0, 400), slice(400, None)
    mu, sd = feats[train].mean(0), feats[train].std(0)
    z = (feats - mu) / sd
    means = np.stack([z[train][labels[train] == c].mean(0) for c in range(4)])
    pred = np.argmin(((z[test][:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    acc = (pred == labels[test]).mean()
    assert 0.45 < acc < 0.97, f"nearest-class-mean accuracy {acc:.2f}"


# --- cache file ---------------------------------------------------------------------------------


def test_cache_file_format_and_reuse(tmp_path, monkeypatch):
    path = synthetic.load_or_generate(12, 32, seed=5, noise=0.5, cache_dir=tmp_path)
    assert path == synthetic.cached_path(12, 32, 5, 0.5, tmp_path)
    assert path.parent == tmp_path and path.suffix == ".h5"
    assert f"v{synthetic.GENERATOR_VERSION}" in path.name
    # no temporary files left; the checksum sidecar (galmorph.data.integrity) beside the file
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".sha256.json"]
    images, labels = synthetic.generate(12, 32, seed=5, noise=0.5)
    with h5py.File(path, "r") as fh:
        assert fh["images"].dtype == np.uint8 and fh["images"].shape == (12, 32, 32, 3)
        assert np.array_equal(fh["images"][()], images)
        assert np.array_equal(fh["ans"][()], labels) and fh["ans"].dtype == np.uint8
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in fh.attrs["class_names"]]
        assert names == list(synthetic.CLASS_NAMES)

    mtime = path.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the cache file exists")

    # load_or_generate looks `generate` up in the cache module, so the patch goes there
    monkeypatch.setattr(synthetic_cache, "generate", fail)
    assert synthetic.load_or_generate(12, 32, seed=5, noise=0.5, cache_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == mtime


def test_cache_path_depends_on_every_setting(tmp_path):
    base = synthetic.cached_path(100, 69, 0, 1.0, tmp_path)
    others = [synthetic.cached_path(101, 69, 0, 1.0, tmp_path), synthetic.cached_path(100, 70, 0, 1.0, tmp_path),
              synthetic.cached_path(100, 69, 1, 1.0, tmp_path), synthetic.cached_path(100, 69, 0, 1.5, tmp_path)]
    assert len({base, *others}) == 5
    assert synthetic.cached_path(100, 69, 0, 1, tmp_path) == base  # 1 and 1.0 are the same setting


def test_default_cache_dir_follows_galmorph_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GALMORPH_CACHE", str(tmp_path))
    path = synthetic.load_or_generate(4, 20, seed=0)
    assert path.parent == tmp_path / "synthetic" and path.is_file()


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(RuntimeError):
        synthetic.load_or_generate(4, 20, seed=0, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_damaged_cache_file_is_regenerated(tmp_path):
    path = synthetic.cached_path(4, 20, 0, 1.0, tmp_path)
    path.write_bytes(b"not an hdf5 file")
    assert synthetic.load_or_generate(4, 20, seed=0, cache_dir=tmp_path) == path
    with h5py.File(path, "r") as fh:
        assert fh["images"].shape == (4, 20, 20, 3)


# --- errors and imports -------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, words", [
    ({"n": 0}, "n must be >= 1"),
    ({"size": 15}, "size must be >= 16"),
    ({"noise": -0.1}, "noise must be finite and >= 0"),
    ({"noise": float("nan")}, "noise must be finite"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"n": 2.5}, "must be an integer"),
    ({"chunk": 0}, "chunk must be >= 1"),
    ({"class_fractions": (0.5, 0.3, 0.1, 0.0)}, "sum to 0.9"),
    ({"class_fractions": (0.5, 0.5)}, "needs 4 numbers"),
    ({"class_fractions": (1.2, -0.2, 0.0, 0.0)}, "non-negative"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, words):
    args = {"n": 4, "size": 20} | kwargs
    with pytest.raises(GalmorphError) as info:
        synthetic.generate(**args)
    message = str(info.value)
    assert words in message and "\n" not in message and ";" in message  # says what to do


def test_load_or_generate_validates_before_touching_disk(tmp_path):
    with pytest.raises(GalmorphError):
        synthetic.load_or_generate(0, cache_dir=tmp_path)
    with pytest.raises(GalmorphError):
        synthetic.load_or_generate(10, noise=-1, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_import_loads_no_deep_learning_framework():
    code = ("import sys, galmorph.data.synthetic as s; s.generate(2, 20); "
            "print(','.join(m for m in ('torch', 'tensorflow', 'keras', 'scipy') if m in sys.modules))")
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == ""
