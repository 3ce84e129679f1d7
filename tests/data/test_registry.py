"""Galaxy10-format loading, the dataset registry, schemes and bands."""

import h5py
import numpy as np
import pytest
from conftest import GZ2_SAMPLE, make_h5

from galmorph.core.errors import GalmorphError
from galmorph.data import bands, hdf5, registry, schemes
from galmorph.data.augment import BatchMaker


def test_load_path_dataset_native(small_h5):
    data = registry.load(str(small_h5))
    assert data.key == "small" and data.scheme == "native"
    assert data.images.dtype == np.uint8 and data.images.shape == (60, 32, 32, 3)
    assert data.class_names == ("k0", "k1", "k2")
    assert np.array_equal(data.rows, np.arange(60))
    assert len(data.digest()) == 16


def test_digest_depends_on_content(tmp_path):
    a = registry.load(str(make_h5(tmp_path / "a.h5", seed=1)))
    b = registry.load(str(make_h5(tmp_path / "b.h5", seed=2)))
    assert a.digest() != b.digest()
    assert a.digest() == registry.load(str(tmp_path / "a.h5")).digest()


@pytest.mark.parametrize("mutate,match", [
    (lambda f: f.__delitem__("ans"), "lacks the dataset"),
    (lambda f: (f.__delitem__("images"), f.create_dataset("images", data=np.zeros((60, 32, 32), np.uint8))), r"expected \(N, H, W, 3\)"),
    (lambda f: (f.__delitem__("images"), f.create_dataset("images", data=np.ones((60, 32, 32, 3), np.float32))), "dtype float32; expected uint8"),
    (lambda f: (f.__delitem__("ans"), f.create_dataset("ans", data=np.zeros(59, np.uint8))), "one integer label per image"),
    (lambda f: (f.__delitem__("ans"), f.create_dataset("ans", data=np.r_[np.nan, np.zeros(59)])), "is NaN"),
    (lambda f: (f.__delitem__("ans"), f.create_dataset("ans", data=np.r_[7, np.zeros(59, int)])), "outside"),
    (lambda f: f["images"].__setitem__(5, 0), "blank"),
])
def test_bad_files_give_one_line_errors(small_h5, mutate, match):
    with h5py.File(small_h5, "a") as fh:
        mutate(fh)
    with pytest.raises(GalmorphError, match=match) as err:
        registry.load(str(small_h5))
    assert "\n" not in str(err.value)


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(GalmorphError, match="does not exist"):
        registry.load(str(tmp_path / "nope.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(GalmorphError, match="not a readable HDF5"):
        registry.load(str(junk))


def test_unknown_dataset_scheme_band():
    with pytest.raises(GalmorphError, match="unknown dataset 'galaxy11'"):
        registry.resolve_path("galaxy11")
    with pytest.raises(GalmorphError, match="unknown scheme 'fiveway'"):
        schemes.get("galaxy10", "fiveway", registry.GALAXY10_CLASSES)
    with pytest.raises(GalmorphError, match="unknown band 'u'"):
        bands.channels("u")


def test_unprepared_nair_dataset_says_how_to_prepare():
    with pytest.raises(GalmorphError, match="galmorph data prepare nair2010"):
        registry.resolve_path("nair2010")


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    path = make_h5(tmp_path / "x.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]
    assert hdf5.read(path).labels.size == 60


# --- schemes ---------------------------------------------------------------------------

NATIVE = {
    "galaxy10": registry.GALAXY10_CLASSES,
    "synthetic": registry.DATASETS["synthetic"].class_names,
    "nair2010": registry.DATASETS["nair2010"].class_names,
    "gz2_zhu5_sample": ("round", "in-between", "cigar", "edge-on", "spiral"),
}


@pytest.mark.parametrize("key", sorted(NATIVE))
def test_every_shipped_scheme_resolves(key):
    for name in schemes.names(key):
        sch = schemes.get(key, name, NATIVE[key])
        assert sch.n_classes >= 2
        assert set(sch.native_to_class.values()) == set(range(sch.n_classes))


def test_phys449_mappings_as_published():
    g10 = registry.GALAXY10_CLASSES
    four = schemes.get("galaxy10", "phys449_4way", g10)
    assert four.class_names == ("E", "S0", "Sp", "Irr")
    keep, lab = four.apply(np.arange(10))
    assert keep.all()
    assert lab.tolist() == [3, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    three = schemes.get("galaxy10", "phys449_3way", g10)
    assert three.apply(np.arange(10))[1].tolist() == [2, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_scheme_drops_unlisted_classes():
    sch = schemes.get("galaxy10", "morph_3way", registry.GALAXY10_CLASSES)
    keep, lab = sch.apply(np.arange(10))
    assert keep.tolist() == [True, True, True, True, False, False, False, True, True, True]
    assert lab.tolist() == [1, 0, 0, 1, 2, 2, 2]
    three = schemes.get("synthetic", "3way", NATIVE["synthetic"])
    assert three.apply(np.array([0, 1, 2, 3]))[0].tolist() == [True, True, True, False]


def test_default_scheme_per_dataset():
    assert schemes.get("galaxy10", "default", registry.GALAXY10_CLASSES).name == "phys449_4way"
    assert schemes.get("unknown_file", "default", ("a", "b")).name == "native"


def test_user_schemes_file_without_code_changes(tmp_path, small_h5):
    user = tmp_path / "mine.yaml"
    user.write_text("small:\n  default: pair\n  schemes:\n    pair:\n      classes:\n        low: [0]\n        high: [2]\n")
    data = registry.load(str(small_h5), "default", schemes_file=str(user))
    assert data.scheme == "pair" and data.class_names == ("low", "high")
    assert len(data) == 40 and set(data.labels.tolist()) == {0, 1}
    assert data.rows.tolist() == [r for r in range(60) if r % 3 != 1]


@pytest.mark.parametrize("body,match", [
    ("small:\n  schemes:\n    bad:\n      classes:\n        a: [0]\n        b: [9]\n", "native label 9"),
    ("small:\n  schemes:\n    bad:\n      classes:\n        a: [0, 1]\n        b: [1]\n", "listed in two classes"),
    ("small: [", "not valid YAML"),
])
def test_bad_user_schemes(tmp_path, small_h5, body, match):
    user = tmp_path / "bad.yaml"
    user.write_text(body)
    with pytest.raises(GalmorphError, match=match):
        registry.load(str(small_h5), "bad", schemes_file=str(user))


# --- bands -----------------------------------------------------------------------------

def test_band_channel_order_of_sdss_composites():
    # an RGB composite whose channels hold i=10, r=20, g=30 everywhere
    img = np.zeros((1, 20, 20, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30
    for band, want in {"g": [30], "r": [20], "i": [10], "gri": [30, 20, 10]}.items():
        maker = BatchMaker(img, bands.channels(band), crop_fraction=1.0)
        got = maker.batch_uint8(np.array([0]))[0, 0, 0].tolist()
        assert got == want, band


@pytest.mark.skipif(not GZ2_SAMPLE.is_file(), reason="../shared/data/gz2_zhu5_sample.h5 not present")
def test_real_gz2_sample_loads():
    data = registry.load(str(GZ2_SAMPLE))
    assert len(data) == 3172 and data.images.shape[1:] == (69, 69, 3)
    assert np.bincount(data.labels).tolist() == [738, 722, 56, 330, 1326]
    assert data.groups is not None and np.unique(data.groups).size == 3172
    three = registry.load(str(GZ2_SAMPLE), "3way")
    assert three.class_names == ("Smooth", "EdgeOn", "Spiral")
    # real SDSS colours: the g band (channel 2) of galaxies is fainter than i (channel 0) at the centre
    centre = data.images[:, 30:39, 30:39].reshape(-1, 3).mean(axis=0)
    assert centre[2] < centre[0]
