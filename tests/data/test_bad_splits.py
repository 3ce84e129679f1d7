"""Split files (split_file) are checked before anything trains: layout, the data they were made
for, empty splits, rows in two splits (leakage), rows the data does not have."""

import json

import numpy as np
import pytest
from conftest import make_h5

from galmorph.config import TrainConfig
from galmorph.core.errors import GalmorphError
from galmorph.data import splits
from galmorph.workflows.prepare import prepare


@pytest.fixture
def made(tmp_path):
    """A dataset file, the config that uses it, and the splits.json a run on it would log."""
    path = make_h5(tmp_path / "d.h5", n=60, n_classes=3)
    config = TrainConfig(dataset=str(path), seed=4)
    prepared = prepare(config)
    out = splits.save(prepared.split, prepared.data.rows, tmp_path / "splits.json",
                      dataset_digest=prepared.data.digest())
    return {"config": config.replace(split_file=str(out)), "doc": json.loads(out.read_text()), "file": out,
            "prepared": prepared, "tmp": tmp_path}


def _set(path, value):
    def mutate(doc):
        *parents, last = path
        for key in parents:
            doc = doc[key]
        if value is KeyError:
            del doc[last]
        else:
            doc[last] = value(doc[last]) if callable(value) else value
    return mutate


def _leak(doc):
    doc["rows"]["val"].append(doc["rows"]["train"][3])


def _twice(doc):
    doc["rows"]["train"].append(doc["rows"]["train"][0])


CASES = {
    "a-list": (lambda doc: [doc], r"holds a JSON list, not a galmorph split \(an object\)"),
    "no-format": (_set(("format",), KeyError), r"is not a galmorph split file \(no format galmorph-split-1\)"),
    "no-rows": (_set(("rows",), KeyError), r"lacks `rows` \(an object with train, val and test lists\)"),
    "rows-a-list": (_set(("rows",), [[1, 2], [3], [4]]), r"lacks `rows`"),
    "no-test": (_set(("rows", "test"), KeyError), r"rows.test is missing"),
    "string-rows": (_set(("rows", "val"), lambda v: [str(r) for r in v]), r"rows.val is not a list of integer rows"),
    "float-rows": (_set(("rows", "train"), lambda v: [r + 0.5 for r in v]), r"rows.train is not a list of integer rows"),
    "bool-rows": (_set(("rows", "test"), [True, False]), r"rows.test is not a list of integer rows"),
    "no-digest": (_set(("dataset_digest",), KeyError), r"lacks its dataset_digest"),
    "bad-seed": (_set(("seed",), "four"), r"lacks a valid seed, val_fraction or test_fraction"),
    "other-data": (_set(("dataset_digest",), "0123456789abcdef"),
                   r"was made for other data \(dataset digest 0123456789abcdef, the loaded data has [0-9a-f]{16}\)"),
    "empty-test": (_set(("rows", "test"), []), r"the test split is empty"),
    "empty-train": (_set(("rows", "train"), []), r"the train split is empty"),
    "val-in-train": (_leak, r"1 row\(s\) \(e.g. \d+\) are in both train and val, which would leak val images into train"),
    "twice-in-train": (_twice, r"1 row\(s\) \(e.g. \d+\) appear twice in train"),
    "unknown-row": (_set(("rows", "test"), lambda v: v + [9999]), r"1 test row\(s\) \(e.g. 9999\) are not in this dataset"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_split_file_is_refused_before_training(made, case):
    mutate, message = CASES[case]
    doc = made["doc"]
    doc = mutate(doc) or doc
    made["file"].write_text(json.dumps(doc))
    with pytest.raises(GalmorphError) as err:
        prepare(made["config"])
    text = str(err.value)
    assert "\n" not in text and str(made["file"]) in text
    assert err.match(message)


def test_not_json_at_all(made):
    made["file"].write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(GalmorphError, match=r"is not valid JSON; use a splits.json logged by a galmorph run"):
        prepare(made["config"])


def test_the_logged_split_is_reused_exactly(made):
    again = prepare(made["config"])
    for name in splits.SPLITS:
        assert np.array_equal(again.split[name], made["prepared"].split[name])


def test_split_for_another_scheme_or_subset_is_refused(made, tmp_path):
    user = tmp_path / "s.yaml"
    user.write_text("d:\n  schemes:\n    pair:\n      classes:\n        a: [0]\n        b: [1, 2]\n")
    for other in (made["config"].replace(scheme="pair", schemes_file=str(user)),
                  made["config"].replace(max_images=59)):
        with pytest.raises(GalmorphError, match="was made for other data"):
            prepare(other)


def test_a_galaxy_split_across_train_and_val_is_refused(tmp_path):
    n = 60
    path = make_h5(tmp_path / "g.h5", n=n, n_classes=3, id=np.arange(n) % 30)  # images i and i+30: one galaxy
    config = TrainConfig(dataset=str(path))
    prepared = prepare(config)
    split = prepared.split
    # move one image of a training galaxy into val: rows stay disjoint, the galaxy does not
    galaxy = prepared.data.groups[split.train[0]]
    twin = int(np.flatnonzero(prepared.data.groups == galaxy)[1])
    moved = splits.Split(np.setdiff1d(split.train, [twin]), np.append(split.val, twin), split.test, 0, 0.15, 0.15)
    out = splits.save(moved, prepared.data.rows, tmp_path / "splits.json", dataset_digest=prepared.data.digest())
    with pytest.raises(GalmorphError, match=rf"1 galaxy\(ies\) \(e.g. {galaxy}\) have images in both train and val"):
        prepare(config.replace(split_file=str(out)))
