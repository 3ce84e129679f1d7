"""Studies that keep their reference: trial 0 is the base configuration itself, --cv-folds K
scores a trial by the mean over K folds of the non-test galaxies (pruned on the running mean),
and the summary says whether the best trial beats trial 0 by more than its spread."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import optuna
import pytest
from conftest import REPO, child_env

from galmorph import presets
from galmorph.core import specs
from galmorph.core.errors import GalmorphError
from galmorph.data import splits
from galmorph.workflows.tune import TuneConfig, load_space, sample
from galmorph.workflows.tune.space import baseline
from galmorph.workflows.tune.summary import against_baseline

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _network(config):
    return specs.resolve(config.model, (69, 69, 1), 4, **config.arch_kwargs())


@pytest.mark.parametrize("preset,model", [("recommended", "c2"), ("paper", "c2"), ("paper", "c1"), ("none", "c1")])
def test_trial_zero_of_the_real_spaces_is_the_base_configuration(preset, model):
    base = presets.of(preset=preset, model=model)
    space = load_space(model)
    params, unexpressed = baseline(space, base)
    if preset == "paper":  # outside the spaces' choices: not suggested, kept from base
        assert unexpressed == {"batch_size": 400, "augment": "paper40"}
    elif preset == "recommended":
        assert unexpressed == {"augment": "rotate"}
    else:
        assert unexpressed == {}
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(params)
    trial = study.ask()
    overrides = sample(trial, space, fixed=unexpressed)
    assert trial.params == params and not set(overrides) & {"batch_size", "augment"} - set(params)
    config = base.replace(**overrides)
    assert _network(config) == _network(base)  # dropout 0.5 is the architecture's -1, etc.
    same = ("optimizer", "learning_rate", "weight_decay", "batch_size", "augment", "label_smoothing", "class_weights")
    assert {k: getattr(config, k) for k in same} == {k: getattr(base, k) for k in same}


def test_folds_cover_the_non_test_galaxies_once_each_stratified_and_whole():
    labels = np.repeat([0, 1, 2], [40, 24, 16])
    groups = np.arange(80) // 2  # two images per galaxy
    split = splits.stratified(labels, groups=groups, seed=3)
    folds = splits.kfold(split, labels, 4, seed=3, groups=groups)
    pool = np.sort(np.concatenate([split.train, split.val]))
    assert np.array_equal(np.sort(np.concatenate([f.val for f in folds])), pool)
    for f in folds:
        assert np.array_equal(f.test, split.test)
        assert np.array_equal(np.sort(np.concatenate([f.train, f.val])), pool)
        assert not set(groups[f.train]) & set(groups[f.val])
        assert all(abs(c - len(f.val) * p) <= 2 for c, p in zip(np.bincount(labels[f.val]), (0.5, 0.3, 0.2)))
    with pytest.raises(GalmorphError, match="class 2 has 7 galaxy.ies. outside the test split, fewer than the 8"):
        splits.kfold(split, labels, 8, seed=3, groups=groups)
    with pytest.raises(GalmorphError, match="cv_folds must be 0"):
        TuneConfig.of(cv_folds=1).validate()


def _trial(number: int, value: float, std: float | None, baseline_trial: bool = False):
    attrs = {"galmorph_baseline": True} if baseline_trial else {}
    if std is not None:
        attrs["cv_std"] = std
    return optuna.trial.create_trial(value=value, user_attrs=attrs)


def test_summary_says_whether_the_best_beats_trial_zero_by_more_than_its_spread():
    trials = [_trial(0, 0.70, 0.02, True), _trial(1, 0.73, 0.02), _trial(2, 0.71, 0.01)]
    for n, t in enumerate(trials):
        t.number = n
    beats = against_baseline(trials, 1)
    assert beats["beats_baseline"] is True and beats["best_minus_baseline"] == pytest.approx(0.03)
    assert "beats trial 0" in beats["baseline_verdict"]
    trials[1].user_attrs["cv_std"] = 0.05
    assert against_baseline(trials, 1)["beats_baseline"] is False
    assert against_baseline(trials, 0)["baseline_verdict"].startswith("trial 0, the base configuration, is the best")
    del trials[1].user_attrs["cv_std"]
    assert against_baseline(trials, 1)["beats_baseline"] is None  # no folds, no spread


STUDY = """
import json, optuna
from galmorph import presets
from galmorph.workflows.tune import TuneConfig, tune

class PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study, trial):  # trial 1 stops after its first fold, whatever its running mean
        return trial.number == 1

cfg = presets.resolve(TuneConfig, dict(backend="torch", dataset="synthetic", synthetic_n=120, epochs=1, n_trials=2,
    threads=2, width=0.25, dense_units=32, cv_folds=2, optimizer="adamw", lr_schedule="cosine",
    study_name="cv", storage={storage!r}, experiment="cv",
    sampler_seed=0, search_space={space!r}))
print("RESULT " + json.dumps(tune(cfg, pruner=PruneTrialOne()), default=str))
"""


@pytest.mark.slow
def test_a_cross_validated_study_starts_from_the_base_configuration(tmp_path, tracking_uri, small_space):
    import mlflow

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = subprocess.run([sys.executable, "-c", STUDY.format(storage=storage, space=small_space)],
                          capture_output=True, text=True, cwd=REPO, timeout=600, env=child_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert "0 trials so far" in proc.stderr and "against the base configuration: " in proc.stdout

    study = optuna.load_study(study_name="cv", storage=storage)
    zero, one = study.trials
    assert zero.user_attrs["galmorph_baseline"] and zero.user_attrs["config_overrides"] == {}
    # the base's optimiser adamw (given) is not among the small space's choices: kept, not suggested
    assert zero.user_attrs["galmorph_unexpressed"] == {"optimizer": "adamw"}
    assert zero.params == {"dropout": 0.5, "width": 0.25, "dense_units": 32}
    values = zero.user_attrs["cv_values"]
    assert len(values) == 2 and zero.value == pytest.approx(np.mean(values))
    assert zero.user_attrs["cv_std"] == pytest.approx(np.std(values, ddof=1))
    assert one.state.name == "PRUNED" and list(one.intermediate_values) == [0]  # after its first fold
    assert summary["baseline_trial"] == 0 and summary["baseline_std"] == pytest.approx(zero.user_attrs["cv_std"])
    assert summary["beats_baseline"] is False  # trial 0 is the only complete trial
    assert summary["step_unit"] == "folds" and "; folds run 3 of 4 (1 saved by pruning)" in proc.stdout

    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("cv").experiment_id])
    (trial0,) = [r for r in runs if r.info.run_id == zero.user_attrs["mlflow_run_id"]]
    assert trial0.data.tags["galmorph_baseline"] == "true" and trial0.data.tags["optuna_state"] == "complete"
    assert trial0.data.metrics["cv_std"] == pytest.approx(zero.user_attrs["cv_std"])
    assert trial0.data.params["optimizer"] == "adamw" and trial0.data.params["lr_schedule"] == "cosine"
    folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == trial0.info.run_id]
    assert sorted(r.data.tags["cv_fold"] for r in folds) == ["0", "1"]
    assert sorted(r.data.metrics["best_val_accuracy"] for r in folds) == pytest.approx(sorted(values))
    assert {r.data.params["n_test"] for r in folds} == {"16"}  # the same untouched test split
    (parent,) = [r for r in runs if r.data.tags.get("galmorph.role") == "study"]
    assert parent.data.tags["beats_baseline"] == "false"
