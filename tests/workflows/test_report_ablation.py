"""The report's recipe ablation: runs of one network and data set with different training
recipes become separate groups, named by what they change from the reference recipe, with
gains paired by seed (galmorph.core.stats). Built from fake runs, no MLflow."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from galmorph import presets
from galmorph.core import stats
from galmorph.workflows.report import build, collect


def _run(seed, acc, bal, tags=None, **params):
    metrics = {"test_accuracy": acc, "test_balanced_accuracy": bal,
               "test_tta_accuracy": acc + 0.02, "test_tta_balanced_accuracy": bal}
    return SimpleNamespace(data=SimpleNamespace(metrics=metrics, params={"seed": str(seed), **params},
                                                tags={"dataset": "gz.h5", "scheme": "native", "model": "c2",
                                                      "backend": "torch", **(tags or {})}),
                           info=SimpleNamespace(run_id=f"{seed:032d}"))


class NoArtifacts:
    def download_artifacts(self, *a, **k):
        raise OSError("no artifacts in this test")


# the recommended preset's settings, logged as strings (the others: their built-in defaults)
BASE = {k: str(v) for k, v in presets.values("recommended", "c2").items()}
LONGER = {"epochs": "45", "patience": "7"}  # values no preset has


def _groups(tmp_path, runs):
    return collect.group(runs, NoArtifacts(), tmp_path)


def test_recipes_split_groups_and_are_named_by_their_changes(tmp_path):
    runs = [_run(s, 0.80 + 0.01 * s, 0.60, **BASE) for s in range(3)]
    runs += [_run(s, 0.83 + 0.01 * s + 0.001 * s * s, 0.62, **{**BASE, **LONGER}) for s in range(3)]
    runs += [_run(s, 0.80, 0.60, **{**BASE, "band": "r"}) for s in range(2)]
    rate = f"{float(BASE['learning_rate']):e}"  # the same rate, written another way
    runs += [_run(0, 0.70, 0.65, **{**BASE, "learning_rate": rate, "class_weights": "balanced"})]
    groups = _groups(tmp_path, runs)
    assert [g.variant for g in groups] == ["preset recommended", "band r", "class_weights balanced",
                                           "epochs 45, patience 7"]
    assert [len(g.runs) for g in groups] == [3, 2, 1, 3] and groups[0].reference
    assert len({g.slug for g in groups}) == 4
    rows = {row[0]: row for b in build.ablation_section(groups) if b[0] == "table" for row in b[2]}
    assert rows["preset recommended (reference)"][-2:] == ["-", "-"]
    longer = rows["epochs 45, patience 7"]
    assert longer[1] == "3 (0,1,2)" and longer[-1] == "+2.0 +- 0.0 (holds)"
    assert longer[-2] == "+3.2 +- 0.1 (holds)"  # differences 3.0, 3.1, 3.4 points
    assert rows["band r"][-2] == "-0.5 +- 0.5"  # two seeds: never "holds"
    assert rows["class_weights balanced"][-2:] == ["-10.0", "+5.0"]  # one seed: no error to give


def test_one_recipe_per_network_has_no_ablation_and_no_recipe_names(tmp_path):
    groups = _groups(tmp_path, [_run(s, 0.8, 0.6, **BASE) for s in range(2)])
    assert [g.variant for g in groups] == [""] and groups[0].label == "c2 torch"
    assert build.ablation_section(groups) == []
    header = next(b for b in build.accuracy_section(groups, {}) if b[0] == "table")[1]
    assert "recipe" not in header


def test_the_paper_preset_is_the_reference_when_it_ran(tmp_path):
    paper = {"augment": "paper40", "batch_size": "400", "epochs": "100", "patience": "5", "test_fraction": "0.15",
             "val_fraction": "0.1275"}
    runs = [_run(0, 0.8, 0.6, **BASE), _run(0, 0.7, 0.5, **paper)]
    groups = _groups(tmp_path, runs)
    assert [(g.variant, g.reference) for g in groups] == [("preset paper", True), ("preset recommended", False)]
    rows = [row for b in build.ablation_section(groups) if b[0] == "table" for row in b[2]]
    # the paper preset validates on 12.75 % of the galaxies: other test galaxies per seed, so no pairing
    assert rows[0][0] == "preset paper (reference)" and rows[1][-2:] == ["+10.0 (unpaired)", "+10.0 (unpaired)"]


def test_paired_gain_and_its_standard_error():
    gain = stats.paired_gain({0: 0.5, 1: 0.6, 2: 0.7, 3: 0.9}, {0: 0.6, 1: 0.65, 2: 0.85})  # seed 3 unpaired
    assert gain.n == 3 and gain.mean == pytest.approx(0.1)
    assert gain.se == pytest.approx(0.05 / 3 ** 0.5)
    assert gain.holds and gain.text() == "+10.0 +- 2.9 (holds)"
    assert not stats.Gain(0.1, 0.06, 3).holds and stats.paired_gain({0: 1.0}, {1: 1.0}) is None
    assert stats.mean_std([1.0]) == (1.0, 0.0)


def test_settings_that_train_alike_are_one_recipe(tmp_path):
    """The network's own values and their stand-ins, a warm-up without a schedule: one group."""
    base = {**BASE, "lr_schedule": "constant", "warmup_epochs": "0"}
    runs = [_run(0, 0.8, 0.6, **base), _run(1, 0.8, 0.6, **{**base, "dropout": "0.5", "dense_units": "256"}),
            _run(2, 0.8, 0.6, **{**base, "dropout": "-1", "warmup_epochs": "3"})]
    (group,) = _groups(tmp_path, runs)
    assert len(group.runs) == 3 and group.variant == ""
    # a multi-seed group's later seeds train on the first seed's split, read from a split file
    (group,) = _groups(tmp_path, [_run(0, 0.8, 0.6, **BASE), _run(1, 0.8, 0.6, **BASE, split_file="/tmp/s.json")])
    assert len(group.runs) == 2
    assert collect.recipe_of({"lr_schedule": "cosine", "warmup_epochs": "3"}, "c2") != \
        collect.recipe_of({"lr_schedule": "cosine", "warmup_epochs": "0"}, "c2")


def test_the_reference_is_the_tagged_recipe_then_a_preset(tmp_path):
    quick = {**BASE, "epochs": "2"}
    runs = [_run(0, 0.5, 0.4, **quick), _run(0, 0.85, 0.7, **BASE)]
    first, second = _groups(tmp_path, runs)  # a quick test ran first: the preset is still the reference
    assert (first.variant, first.reference, second.variant) == ("preset recommended", True, "epochs 2")
    # benchmarks/ablation.py tags its baseline, whatever it is
    runs = [_run(s, 0.8, 0.6, tags={"galmorph.recipe_reference": "true"}, **quick) for s in range(3)]
    runs += [_run(s, 0.85, 0.7, **BASE) for s in range(3)]
    runs += [_run(0, 0.6, 0.5, **{**BASE, "epochs": "4"}), _run(0, 0.62, 0.5, **{**BASE, "epochs": "4"})]
    groups = _groups(tmp_path, runs)
    assert [(g.variant, g.reference) for g in groups] == [("epochs 2", True), ("epochs 4", False),
                                                         ("preset recommended", False)]
    rows = {row[0]: row for b in build.ablation_section(groups) if b[0] == "table" for row in b[2]}
    assert rows["epochs 2 (reference)"][1] == "3 (0,1,2)"
    assert rows["epochs 4"][1:3] == ["1 (0)", "61.0 %"]  # seed 0 twice: its mean, counted once
    assert rows["epochs 4"][-2] == "-19.0" and rows["preset recommended"][-2] == "+5.0 +- 0.0 (holds)"
    assert len({g.slug for g in groups}) == 3


def test_trials_and_folds_of_a_study_are_not_report_rows():
    runs = [_run(0, 0.8, 0.6, tags={"galmorph.role": role}, **BASE) for role in ("trial", "fold", "retrain")]
    assert [r.data.tags["galmorph.role"] for r in collect.units(runs)] == ["retrain"]
