"""The report's reference numbers: each published number with its source (the paper's
abstract or the PHYS449 reproduction) beside it, in the reference table and next to the run
groups it matches, the Galaxy Zoo check included. Built from fake run groups, no MLflow."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from galmorph.workflows.report import build, render
from galmorph.workflows.report.collect import Group, matches, references

ABSTRACT = "paper abstract"
PHYS449 = "PHYS449 reproduction"
PUBLISHED = [  # (label, value as the report prints it, source)
    ("C2 3-way", "83.0 %", ABSTRACT), ("C2 4-way", "81.0 %", ABSTRACT),
    ("binary E vs Sp (easiest pair)", "> 98.0 %", ABSTRACT), ("binary Sp vs Irr (hardest pair)", "78.0 %", ABSTRACT),
    ("hierarchical 3-way", "81.0 %", ABSTRACT), ("hierarchical 4-way", "65.0 %", ABSTRACT),
    ("Galaxy Zoo check, binary", "92.0 %", ABSTRACT), ("Galaxy Zoo check, 3-way", "82.0 %", ABSTRACT),
    ("Galaxy Zoo check, 4-way", "77.0 %", ABSTRACT),
    ("Keras C2 4-way", "88.0 %", PHYS449), ("Keras C1 4-way, no BN", "60.3 %", PHYS449),
    ("Keras C1 4-way, with BN", "65.3 %", PHYS449), ("C2 4-way (phys449_4way)", "84.3 %", PHYS449),
    ("C1 4-way (phys449_4way)", "81.5 %", PHYS449),
]


def _group(dataset, scheme, kind, classes, model="c2", acc=0.5):
    run = SimpleNamespace(data=SimpleNamespace(metrics={"test_accuracy": acc}, params={"seed": "0"}),
                          info=SimpleNamespace(run_id="0" * 32))
    return Group(dataset, scheme, model, "torch", kind, tuple(classes), runs=[run], reports=[None])


def _rows(blocks):
    return [row for b in blocks if b[0] == "table" for row in b[2]]


def test_reference_table_gives_every_number_its_source(tmp_path):
    refs = references()
    blocks = build.references_section(refs)
    rows = {row[1]: row for row in _rows(blocks)}
    assert set(rows) == {label for label, _, _ in PUBLISHED}
    for label, value, source in PUBLISHED:
        assert rows[label][0] == source and rows[label][2] == value, label
    md = render.render_markdown([("h1", "r")] + blocks, tmp_path)
    for label, value, source in PUBLISHED:  # the rendered line holds the number and its source together
        (line,) = [ln for ln in md.splitlines() if ln.startswith(f"| {source} | {label} |")]
        assert f"| {value} |" in line
    assert "arXiv:2106.01571" in md and "abstract" in md and "not numbers of the paper" in md


def test_phys449_facts_are_stated_correctly():
    refs = references()
    notes = {r["label"]: r.get("note", "") for r in refs["phys449"]}
    assert "mislabelled" not in notes["C2 4-way (phys449_4way)"]  # its Galaxy10 plots are labelled right
    assert "labelled correctly" in notes["C2 4-way (phys449_4way)"]
    keras = notes["Keras C2 4-way"]
    for fact in ("Adam 1e-4", "raw 0-255 pixels", "first 7,500 catalogue rows", "20 epochs", "leakage",
                 "E, Sp, S0, Irr"):
        assert fact in keras, fact
    (timing,) = build.timing_section([], refs, Path("/nonexistent"))[2:3]
    assert "216,750 images" in timing[1] and "6,774 steps of 32" in timing[1] and "255,000" not in timing[1]
    assert f"[{PHYS449}]" in timing[1]


@pytest.mark.parametrize("dataset, scheme, kind, classes, want, unwanted", [
    ("galaxy10", "phys449_4way", "flat", ["E", "S0", "Sp", "Irr"],
     ["81.0 % (C2 4-way; nair2010) [paper abstract]",
      "77.0 % (Galaxy Zoo check, 4-way; small Galaxy Zoo sample) [paper abstract]",
      "84.3 % (C2 4-way (phys449_4way); galaxy10) [PHYS449 reproduction]"], ["82.0 %", "92.0 %"]),
    ("galaxy10_decals", "morph_3way", "flat", ["E", "S0", "Sp"],
     ["83.0 % (C2 3-way; nair2010) [paper abstract]",
      "82.0 % (Galaxy Zoo check, 3-way; small Galaxy Zoo sample) [paper abstract]"], ["77.0 %"]),
    ("/data/gz2_zhu5_sample.h5", "3way", "flat", ["Smooth", "EdgeOn", "Spiral"],
     ["82.0 % (Galaxy Zoo check, 3-way; small Galaxy Zoo sample) [paper abstract]"], ["83.0 %"]),
    ("galaxy10_decals", "morph_4way:E-vs-Sp", "pair", ["E", "Sp"],
     ["> 98.0 % (binary E vs Sp (easiest pair); nair2010) [paper abstract]",
      "92.0 % (Galaxy Zoo check, binary; small Galaxy Zoo sample) [paper abstract]"], []),
    ("synthetic", "4way", "flat", ["E", "S0", "Sp", "Irr"],  # not Galaxy Zoo data: no Galaxy Zoo check
     ["81.0 % (C2 4-way; nair2010) [paper abstract]", "88.0 % (Keras C2 4-way; nair2010) [PHYS449 reproduction]"],
     ["Galaxy Zoo"]),
])
def test_accuracy_table_sets_each_matching_number_with_its_source(dataset, scheme, kind, classes, want, unwanted):
    refs = references()
    g = _group(dataset, scheme, kind, classes)
    (row,) = _rows(build.accuracy_section([g], refs))
    text = " | ".join(row[-2:])
    for item in want:
        assert item in text, (item, text)
    for item in unwanted:
        assert item not in text, (item, text)


def test_galaxy_zoo_check_matches_by_class_count_kind_and_data():
    refs = references()
    labels = lambda g: [r["label"] for r in matches(refs, "paper", g) if "Galaxy Zoo" in r["label"]]  # noqa: E731
    assert labels(_group("galaxy10", "x", "flat", ["a", "b"])) == ["Galaxy Zoo check, binary"]
    assert labels(_group("galaxy10", "morph_4way", "flat", ["E", "S0", "Sp", "EdgeOn"])) == ["Galaxy Zoo check, 4-way"]
    assert labels(_group("galaxy10", "y", "flat", list("abcde"))) == []  # no 5-way check
    assert labels(_group("galaxy10", "hierarchy:t", "hierarchy", ["E", "S0", "Sp"])) == []  # a flat number
    assert labels(_group("nair2010", "3way", "flat", ["E", "S0", "Sp"])) == []  # not Galaxy Zoo-labelled
