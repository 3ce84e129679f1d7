"""Leakage-free, stratified, seeded train/validation/test splits.

Splits are made over galaxies, not images: where a dataset has galaxy ids, every image of
one galaxy lands in the same split. Within each class the galaxies are shuffled with the
seed and cut by the fractions, so each split keeps the class proportions and every class
with at least three galaxies appears in all three splits. Indices are stored as rows of
the source file, so a saved split can be reused by a later run (and by the other backend).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galmorph.core.errors import GalmorphError
from galmorph.core.io import atomic_write

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Positions into a Dataset for each split, plus how they were made."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    val_fraction: float
    test_fraction: float

    def __getitem__(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {name: int(self[name].size) for name in SPLITS}

    def to_rows(self, rows: np.ndarray) -> dict[str, list[int]]:
        return {name: rows[self[name]].tolist() for name in SPLITS}


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise GalmorphError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise GalmorphError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves nothing to train on; "
            "make them add up to less than 1 (e.g. 0.15 + 0.15)"
        )


def stratified(labels: np.ndarray, *, val_fraction: float = 0.15, test_fraction: float = 0.15,
               seed: int = 0, groups: np.ndarray | None = None, class_names=None) -> Split:
    """Split positions 0..N-1 by galaxy, stratified by class.

    A class with fewer than 3 galaxies cannot be in all three splits: that is an error
    naming the class (merge or drop it with a scheme, or use more images).
    """
    check_fractions(val_fraction, test_fraction)
    labels = np.asarray(labels)
    if labels.size == 0:
        raise GalmorphError("no images to split; check max_images and the scheme")
    if groups is None:
        group_of = np.arange(labels.size)
    else:
        _, group_of = np.unique(groups, return_inverse=True)
    n_groups = int(group_of.max()) + 1
    group_label = np.full(n_groups, -1, dtype=np.int64)
    group_label[group_of] = labels
    if groups is not None and not np.array_equal(group_label[group_of], labels):
        raise GalmorphError("images of one galaxy carry different labels; fix the labels or the galaxy ids")

    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for cls in np.unique(group_label):
        members = np.flatnonzero(group_label == cls)
        n = members.size
        if n < 3:
            name = class_names[cls] if class_names is not None else str(cls)
            raise GalmorphError(
                f"class {name} has only {n} galaxy(ies), too few to appear in train, validation and test; "
                "merge or drop it with a scheme, or raise max_images"
            )
        members = members[rng.permutation(n)]
        n_test = min(max(1, int(round(n * test_fraction))), n - 2)
        n_val = min(max(1, int(round(n * val_fraction))), n - n_test - 1)
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    out = {}
    for name in SPLITS:
        chosen = np.zeros(n_groups, dtype=bool)
        chosen[np.concatenate(parts[name])] = True
        out[name] = np.flatnonzero(chosen[group_of])
    return Split(out["train"], out["val"], out["test"], seed, val_fraction, test_fraction)


def kfold(split: Split, labels: np.ndarray, k: int, *, seed: int = 0, groups: np.ndarray | None = None,
          class_names=None) -> list[Split]:
    """K cross-validation folds of the part of `split` that is not test (train + val): fold i
    validates on one K-th of those galaxies and trains on the rest; the test split is the
    same in every fold, untouched. Stratified by class and by galaxy (as `stratified`): each
    class's galaxies are shuffled with `seed` and dealt round-robin to the folds, so every
    fold holds each class in proportion. A class with fewer than K galaxies outside the test
    split would leave some fold without it: an error naming the class."""
    labels = np.asarray(labels)
    if k < 2:
        raise GalmorphError(f"cross-validation needs at least 2 folds, got {k}")
    pool = np.sort(np.concatenate([split.train, split.val]))
    group_of = np.arange(labels.size) if groups is None else np.unique(groups, return_inverse=True)[1]
    ids = np.unique(group_of[pool])  # the galaxies outside the test split
    first = {g: i for i, g in reversed(list(enumerate(group_of[pool])))}
    id_label = np.array([labels[pool[first[g]]] for g in ids])
    rng = np.random.default_rng(seed)
    fold_of_id = np.empty(ids.size, dtype=np.int64)
    dealt = 0  # each class continues the deal where the previous one stopped: even fold sizes
    for cls in np.unique(id_label):
        members = np.flatnonzero(id_label == cls)
        if members.size < k:
            name = class_names[cls] if class_names is not None else str(cls)
            raise GalmorphError(f"class {name} has {members.size} galaxy(ies) outside the test split, fewer than "
                                f"the {k} cross-validation folds; use fewer folds or more images")
        fold_of_id[members[rng.permutation(members.size)]] = (dealt + np.arange(members.size)) % k
        dealt += members.size
    fold_of_pos = fold_of_id[np.searchsorted(ids, group_of[pool])]
    return [Split(pool[fold_of_pos != i], pool[fold_of_pos == i], split.test, seed, split.val_fraction,
                  split.test_fraction) for i in range(k)]


def stratified_subset(labels: np.ndarray, max_images: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of a class-proportional subset of at most `max_images` images.

    Every class keeps at least 3 images where it has them (so it can still be split); a
    `max_images` below that sum is an error stating the minimum, never a larger subset.
    """
    labels = np.asarray(labels)
    if max_images < 1:
        raise GalmorphError(f"max_images must be at least 1 (or 0 for all), got {max_images}")
    if max_images >= labels.size:
        return np.arange(labels.size)
    rng = np.random.default_rng([seed, 7])
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * max_images / labels.size
    floor = np.minimum(counts, 3)
    if max_images < floor.sum():
        raise GalmorphError(
            f"max_images {max_images} is below the {floor.sum()} images a stratified split of {classes.size} classes "
            f"needs (3 per class); use at least {floor.sum()} or 0 for all"
        )
    quota = np.maximum(floor, np.floor(exact)).astype(int)
    # rounding and the 3-image floor rarely hit the budget exactly: take the excess from the
    # classes furthest above their share, hand any shortfall to the largest remainders
    while quota.sum() > max_images and (quota > floor).any():
        over = np.where(quota > floor, quota - exact, -np.inf)
        quota[np.argmax(over)] -= 1
    for i in np.argsort(-(exact - np.floor(exact))):
        if quota.sum() >= max_images:
            break
        if quota[i] < counts[i]:
            quota[i] += 1
    keep = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(keep))


def save(split: Split, rows: np.ndarray, path: Path, *, dataset_digest: str, extra: dict | None = None) -> Path:
    """Write the split as JSON (source-file rows per split) atomically."""
    path = Path(path)
    doc = {
        "format": "galmorph-split-1",
        "dataset_digest": dataset_digest,
        "seed": split.seed,
        "val_fraction": split.val_fraction,
        "test_fraction": split.test_fraction,
        "sizes": split.sizes(),
        "rows": split.to_rows(rows),
        **(extra or {}),
    }
    atomic_write(path, lambda fh: json.dump(doc, fh))
    return path


def load(path: Path, rows: np.ndarray, *, dataset_digest: str | None = None, groups: np.ndarray | None = None) -> Split:
    """Read a saved split and map its source rows to positions in a dataset with `rows`.

    Checked before anything trains, each problem a one-line GalmorphError: the file's layout,
    that it was made for this data (`dataset_digest`, when given, is the loaded Dataset's
    digest()), that no split is empty, that no row is in two splits (or twice in one), that
    every row exists in the data and (with `groups`, the galaxy id of each position) that no
    galaxy has images in two splits.
    """
    doc = _read_doc(path)
    fix = "use a splits.json logged by a galmorph run on the same data, or leave split_file empty to make a new split"
    if dataset_digest is not None and doc["dataset_digest"] != dataset_digest:
        raise GalmorphError(
            f"split file {path} was made for other data (dataset digest {doc['dataset_digest']}, the loaded data has "
            f"{dataset_digest}): another dataset, scheme or max_images, or the data changed; {fix}"
        )
    parts = {name: doc["rows"][name] for name in SPLITS}
    for name, part in parts.items():
        if not part:
            raise GalmorphError(f"split file {path}: the {name} split is empty; {fix}")
        if len(set(part)) != len(part):
            twice = sorted(r for r, k in Counter(part).items() if k > 1)
            raise GalmorphError(f"split file {path}: {len(twice)} row(s) (e.g. {twice[0]}) appear twice in {name}; {fix}")
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            both = sorted(set(parts[a]) & set(parts[b]))
            if both:
                raise GalmorphError(
                    f"split file {path}: {len(both)} row(s) (e.g. {both[0]}) are in both {a} and {b}, which would leak "
                    f"{b} images into {a}; {fix}"
                )
    position = {int(r): i for i, r in enumerate(rows)}
    out = {}
    for name in SPLITS:
        missing = [r for r in parts[name] if r not in position]
        if missing:
            raise GalmorphError(
                f"split file {path}: {len(missing)} {name} row(s) (e.g. {missing[0]}) are not in this dataset "
                "after scheme and max_images; use the same dataset, scheme and max_images as the run that made it"
            )
        out[name] = np.array([position[r] for r in parts[name]], dtype=np.int64)
    if groups is not None:
        _check_galaxies(path, {name: np.asarray(groups)[out[name]] for name in SPLITS}, fix)
    return Split(out["train"], out["val"], out["test"], doc["seed"], doc["val_fraction"], doc["test_fraction"])


def _check_galaxies(path, ids: dict, fix: str) -> None:
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            both = np.intersect1d(ids[a], ids[b])
            if both.size:
                raise GalmorphError(
                    f"split file {path}: {both.size} galaxy(ies) (e.g. {both[0]}) have images in both {a} and {b}, "
                    f"which would leak {b} galaxies into {a}; {fix}"
                )


def _read_doc(path: Path) -> dict:
    """The JSON of a split file, its layout checked: an object with format galmorph-split-1, a
    dataset_digest string, seed and fractions, and `rows` holding lists of integer rows for
    train, val and test."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise GalmorphError(f"cannot read split file {path} ({exc.strerror}); check the path") from None
    except ValueError:  # not JSON, or not text at all
        raise GalmorphError(f"split file {path} is not valid JSON; use a splits.json logged by a galmorph run") from None
    use = "use a splits.json logged by a galmorph run"
    if not isinstance(doc, dict):
        raise GalmorphError(f"split file {path} holds a JSON {type(doc).__name__}, not a galmorph split (an object); {use}")
    if doc.get("format") != "galmorph-split-1":
        raise GalmorphError(f"{path} is not a galmorph split file (no format galmorph-split-1); {use}")
    rows = doc.get("rows")
    if not isinstance(rows, dict):
        raise GalmorphError(f"split file {path} lacks `rows` (an object with train, val and test lists); {use}")
    for name in SPLITS:
        part = rows.get(name)
        if not isinstance(part, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in part):
            what = "is missing" if part is None else "is not a list of integer rows"
            raise GalmorphError(f"split file {path}: rows.{name} {what}; {use}")
    if not isinstance(doc.get("dataset_digest"), str):
        raise GalmorphError(f"split file {path} lacks its dataset_digest, so it cannot be checked against the data; {use}")
    try:
        doc["seed"], doc["val_fraction"], doc["test_fraction"] = (
            int(doc["seed"]), float(doc["val_fraction"]), float(doc["test_fraction"]))
    except (KeyError, TypeError, ValueError):
        raise GalmorphError(f"split file {path} lacks a valid seed, val_fraction or test_fraction; {use}") from None
    return doc
