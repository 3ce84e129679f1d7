"""Splits (stratified, by galaxy, saved and reused) and the 40-view augmentation."""

import numpy as np
import pytest

from galmorph.core.errors import GalmorphError
from galmorph.data import augment, splits


def _labels(counts):
    return np.concatenate([np.full(c, k) for k, c in enumerate(counts)])


def test_stratified_split_keeps_class_proportions_and_is_disjoint():
    labels = _labels([500, 300, 150, 17])  # 17: Galaxy10's rarest class
    sp = splits.stratified(labels, val_fraction=0.15, test_fraction=0.15, seed=3)
    all_idx = np.concatenate([sp.train, sp.val, sp.test])
    assert np.array_equal(np.sort(all_idx), np.arange(labels.size))
    for name in splits.SPLITS:
        counts = np.bincount(labels[sp[name]], minlength=4)
        assert (counts > 0).all()
    test_counts = np.bincount(labels[sp.test], minlength=4)
    assert test_counts.tolist() == [75, 45, 22, 3]  # round(0.15 * n) per class


def test_split_is_seeded_and_identical_for_the_same_seed():
    labels = _labels([100, 100, 100])
    a = splits.stratified(labels, seed=1)
    b = splits.stratified(labels, seed=1)
    c = splits.stratified(labels, seed=2)
    assert all(np.array_equal(a[n], b[n]) for n in splits.SPLITS)
    assert not np.array_equal(a.test, c.test)


def test_images_of_one_galaxy_never_cross_splits():
    rng = np.random.default_rng(0)
    galaxies = np.repeat(np.arange(200), rng.integers(1, 5, size=200))
    labels = (galaxies % 3)
    sp = splits.stratified(labels, groups=galaxies, seed=0)
    seen = {name: set(galaxies[sp[name]].tolist()) for name in splits.SPLITS}
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]
    assert sum(len(s) for s in seen.values()) == 200


def test_too_small_class_and_bad_fractions_are_clear_errors():
    with pytest.raises(GalmorphError, match="class rare has only 2 galaxy"):
        splits.stratified(_labels([50, 2]), class_names=("common", "rare"))
    with pytest.raises(GalmorphError, match="leaves nothing to train on"):
        splits.stratified(_labels([50, 50]), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(GalmorphError, match="val_fraction must be between 0 and 1"):
        splits.stratified(_labels([50, 50]), val_fraction=0)


def test_saved_split_is_reused_through_source_rows(tmp_path):
    labels = _labels([40, 40, 40])
    rows = np.arange(1000, 1120)
    sp = splits.stratified(labels, seed=5)
    path = splits.save(sp, rows, tmp_path / "splits.json", dataset_digest="abc")
    assert [p.name for p in tmp_path.iterdir()] == ["splits.json"]
    back = splits.load(path, rows)
    assert all(np.array_equal(sp[n], back[n]) for n in splits.SPLITS)
    with pytest.raises(GalmorphError, match="not in this dataset"):
        splits.load(path, rows[:60])


def test_stratified_subset_is_proportional_and_keeps_rare_classes():
    labels = _labels([900, 90, 10])
    keep = splits.stratified_subset(labels, 100, seed=0)
    assert keep.size == 100
    counts = np.bincount(labels[keep], minlength=3)
    assert counts[0] in (89, 90, 91) and counts[2] >= 3
    with pytest.raises(GalmorphError, match="max_images must be at least 1"):
        splits.stratified_subset(labels, -1)


# --- augmentation ------------------------------------------------------------------------

def test_crop_sizes_scale_with_the_image():
    assert augment.crop_size(110) == 100
    assert augment.crop_size(69) == 63
    with pytest.raises(GalmorphError, match="crop_fraction"):
        augment.crop_size(69, 1.5)


def test_the_40_views_are_the_paper_crops_rotations_and_mirrors():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, size=(1, 11, 11, 3), dtype=np.uint8)
    maker = augment.BatchMaker(img, (2,), crop_fraction=10 / 11)
    views = np.stack([maker.batch_uint8(np.array([0]), v)[0, ..., 0] for v in range(augment.N_VIEWS)])
    band = img[0, ..., 2]
    crops = [band[0:10, 0:10]] + [band[y:y + 10, x:x + 10] for y, x in [(0, 0), (0, 1), (1, 0), (1, 1)]]
    expected = []
    for crop in crops:
        for rot in range(4):
            r = np.rot90(crop, rot)
            expected += [r, r[:, ::-1]]
    assert np.array_equal(views, np.stack(expected))
    # the centre crop of 11 -> 10 starts at (0, 0) only because the offset is odd: check a bigger one
    big = rng.integers(0, 255, size=(1, 69, 69, 1), dtype=np.uint8).repeat(3, axis=3)
    m2 = augment.BatchMaker(big, (0,))
    assert np.array_equal(m2.batch_uint8(np.array([0]))[0, ..., 0], big[0, 3:66, 3:66, 0])
    distinct = {m2.batch_uint8(np.array([0]), v).tobytes() for v in range(augment.N_VIEWS)}
    assert len(distinct) == augment.N_VIEWS


def test_normalisation_is_one_function():
    x = np.array([0, 51, 255], np.uint8)
    assert augment.normalise(x).dtype == np.float32
    assert np.allclose(augment.normalise(x), [0.0, 0.2, 1.0])


@pytest.mark.parametrize("mode,per_epoch", [("paper40", 40 * 25), ("random", 25), ("none", 25), ("dihedral", 25),
                                            ("rotate", 25)])
def test_train_stream_modes(mode, per_epoch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(50, 20, 20, 3), dtype=np.uint8)
    labels = np.arange(50) % 2
    train = np.arange(0, 50, 2)
    maker = augment.BatchMaker(images, (2,))
    stream = augment.TrainStream(maker, train, labels, mode=mode, batch_size=16, seed=0)
    assert stream.images_per_epoch == per_epoch
    xs, ys = zip(*stream.epoch(0))
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == (per_epoch, 18, 18, 1) and x.dtype == np.float32
    assert (y == 0).all()  # only training images (even positions, label 0) are ever served
    idx, views = stream.plan(0)
    assert set(idx.tolist()) == set(train.tolist())
    if mode == "paper40":
        pairs = set(zip(idx.tolist(), views.tolist()))
        assert len(pairs) == 40 * 25
    if mode == "none":
        assert (views == 0).all()
    if mode == "dihedral":  # the centre crop's 8 rotations and mirrors
        assert set(views.tolist()) <= set(range(augment.N_DIHEDRAL)) and len(set(views.tolist())) > 4
    assert not np.array_equal(stream.plan(1)[0], idx)  # reshuffled every epoch
    again_idx, again_views = stream.plan(0)  # a pure function of (seed, epoch): resume sees the same
    assert np.array_equal(again_idx, idx) and np.array_equal(again_views, views)


def test_rotate_turns_about_the_centre_and_meets_the_dihedral_views_at_right_angles():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(3, 21, 21, 3), dtype=np.uint8)
    maker = augment.BatchMaker(images, (2, 1, 0), crop_fraction=17 / 21)
    index = np.arange(3)
    dihedral = [maker.batch_uint8(index, v) for v in range(augment.N_DIHEDRAL)]
    plain = maker.batch_turned(index, np.tile([0.0, 1.0, 0.0], (3, 1)))
    assert np.array_equal(plain, dihedral[0])  # no turn: the centre crop, view 0
    for angle in (np.pi / 2, np.pi, 3 * np.pi / 2):
        for mirror in (0.0, 1.0):
            turned = maker.batch_turned(index, np.tile([angle, 1.0, mirror], (3, 1)))
            assert any(np.array_equal(turned, d) for d in dihedral[1:]), (angle, mirror)
    zoomed = maker.batch_turned(index, np.tile([0.0, 1.1, 0.0], (3, 1)))
    assert zoomed[:, 8, 8].tolist() == dihedral[0][:, 8, 8].tolist()  # the centre stays put
    assert not np.array_equal(zoomed, dihedral[0])
    odd = maker.batch_turned(index, np.tile([0.3, 0.9, 0.0], (3, 1)))  # any angle, and 10 % out
    assert odd.shape == (3, 17, 17, 3) and odd.dtype == np.uint8
    assert set(np.unique(odd)) <= set(np.unique(images))  # nearest neighbour: no new values


def test_tta_settings_name_their_views():
    assert list(augment.tta_views("false")) == [0] and list(augment.tta_views(False)) == [0]
    assert list(augment.tta_views("true")) == list(range(40)) == list(augment.tta_views(True))
    assert list(augment.tta_views("dihedral")) == list(range(8))
    assert augment.tta_name("True") == "true" and augment.tta_name("paper40") == "true"
    with pytest.raises(GalmorphError, match="unknown tta 'sideways'; choose one of false, true, dihedral"):
        augment.tta_views("sideways")


def test_batches_do_not_copy_the_image_array():
    images = np.zeros((10, 20, 20, 3), np.uint8)
    maker = augment.BatchMaker(images, (2, 1, 0))
    assert np.shares_memory(maker._flat, images)


def test_prefetch_propagates_errors():
    def gen():
        yield 1
        raise ValueError("boom")

    it = augment.prefetched(gen())
    assert next(it) == 1
    with pytest.raises(ValueError, match="boom"):
        next(it)
