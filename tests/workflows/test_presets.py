"""Presets (experiments/presets.yaml, galmorph.presets): resolved once for every entry point,
explicit flags first, and what a run logs (through `mlflow run`, the hardest path)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, child_env

from galmorph import cli, presets
from galmorph.config import TrainConfig, settings_of
from galmorph.core.errors import GalmorphError
from galmorph.workflows.hierarchy import HierarchyConfig
from galmorph.workflows.multiseed import MultiseedConfig
from galmorph.workflows.tune import TuneConfig

CLASSES = {"train": TrainConfig, "tune": TuneConfig, "multiseed": MultiseedConfig, "hierarchy": HierarchyConfig}


def parsed(*argv: str) -> TrainConfig:
    """The TrainConfig a command line gives (the base of tune, multiseed and hierarchy)."""
    args = cli.build_parser().parse_args(cli._underscored_flags(list(argv)))
    config = cli.config_from(args, CLASSES[argv[0]])
    return config if argv[0] == "train" else config.base


def test_train_without_a_preset_is_the_recommended_one_and_paper_is_one_flag_away():
    rec, paper = presets.values("recommended", "c2"), presets.values("paper", "c2")
    plain = parsed("train")
    assert plain.preset == "recommended" and all(getattr(plain, k) == v for k, v in rec.items())
    # the recipe measured on real galaxies (experiments/presets.yaml says why): the former
    # default trained longer
    assert (plain.optimizer, plain.lr_schedule, plain.class_weights) == ("adam", "constant", "none")
    assert (plain.epochs, plain.patience) == (60, 10)
    c2 = parsed("train", "--preset", "paper")
    assert all(getattr(c2, k) == v for k, v in paper.items())
    assert (c2.augment, c2.batch_size, c2.epochs, c2.optimizer, c2.learning_rate) == ("paper40", 400, 100, "adam", 2e-4)
    assert (c2.test_fraction, c2.val_fraction) == (0.15, pytest.approx(0.15 * 0.85))
    c2.validate()
    c1 = parsed("train", "--preset", "paper", "--model", "c1")  # a value per network
    assert (c1.optimizer, c1.learning_rate, c1.batchnorm) == ("adadelta", 1.0, "false")
    c1.validate()
    none = parsed("train", "--preset", "none")
    assert none == TrainConfig(preset="none")  # the built-in defaults


def test_explicit_flags_beat_the_preset_even_when_they_equal_the_built_in_default():
    c = parsed("train", "--preset", "paper", "--epochs", "30", "--augment", "random", "--batch_size", "64")
    assert (c.epochs, c.augment, c.batch_size, c.optimizer) == (30, "random", 64, "adam")
    assert presets.overrides(c) == ["augment", "batch_size", "epochs"]
    assert presets.overrides(presets.of(preset="paper", model="c1")) == []
    # the Python constructor is literal: the run says where it leaves its preset
    assert {"augment", "batch_size", "epochs"} <= set(presets.overrides(TrainConfig(preset="paper")))


@pytest.mark.parametrize("command", ["tune", "multiseed", "hierarchy"])
def test_every_command_that_trains_resolves_the_same_preset(command):
    assert parsed(command, "--preset", "paper", "--model", "c1") == parsed(
        "train", "--preset", "paper", "--model", "c1").replace(
        **({"tta": False, "log_model": False} if command == "tune" else {}))
    if command == "tune":  # tune's own 10 epochs lose to a preset's, and hold without one
        assert parsed("tune").epochs == presets.values("recommended", "c2")["epochs"]
        assert parsed("tune", "--preset", "none").epochs == 10


@pytest.mark.parametrize("command", ["train", "tune", "multiseed", "hierarchy"])
def test_help_names_the_preset_and_what_a_flag_defaults_to(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0 and "--preset PRESET" in out and "(default: recommended)" in out
    epochs = 10 if command == "tune" else 30  # tune's own default for its trials
    assert "30 % of the epochs" in out and f"(default: the preset's, else {epochs})" in out


def test_unknown_preset_is_one_line_naming_the_known_ones(capsys, tracking_uri):
    assert cli.main(["train", "--preset", "fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # (the fixture's store set-up logs before it)
    assert err[-1] == "galmorph: error: unknown preset 'fast'; choose one of paper, recommended, none"
    from galmorph.workflows import train

    with pytest.raises(GalmorphError, match="unknown preset 'fast'"):  # the Python API: before any data or training
        train.run(TrainConfig(preset="fast", experiment="presets"))
    with pytest.raises(GalmorphError, match="unknown preset 'fast'"):
        TuneConfig.of(preset="fast").validate()


def test_presets_file_is_checked(tmp_path, monkeypatch):
    copy = tmp_path / "experiments"
    shutil.copytree(REPO / "experiments", copy)
    monkeypatch.setenv("GALMORPH_EXPERIMENTS", str(copy))
    cases = [({"fast": {"dataset": "galaxy10"}}, "preset fast sets 'dataset', which presets cannot set"),
             ({"fast": {"epochs": 2.5}}, r"fast, epochs: 2.5 is not a int"),
             ({"fast": {"optimizer": {"c3": "sgd"}}}, "unknown network"),
             ({"fast": {"optimizer": "lbfgs"}}, "'lbfgs' is not one of adam")]
    try:
        for body, match in cases:
            (copy / "presets.yaml").write_text(yaml.safe_dump(body))
            presets._load.cache_clear()
            with pytest.raises(GalmorphError, match=match):
                presets.names()
    finally:
        presets._load.cache_clear()


def test_every_presettable_setting_is_one_a_recipe_can_vary():
    names = {s.name for s in settings_of(TrainConfig) if s.presettable}
    assert {"epochs", "optimizer", "learning_rate", "lr_schedule", "batchnorm", "val_fraction"} <= names
    assert not names & {"preset", "model", "backend", "dataset", "seed", "experiment"}
    for name in presets.names()[:-1]:
        assert presets.describe(name)


@pytest.mark.slow
def test_mlflow_run_logs_the_preset_and_the_resolved_values(tracking_uri, tmp_path):
    """`mlflow run -P preset=paper -P epochs=1`: MLflow passes only the given settings, the
    preset fills the rest, and the run's params are the resolved values."""
    import mlflow

    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "c2_torch", "--env-manager", "local",
           "--experiment-name", "presets"]
    for k, v in {"preset": "paper", "epochs": 1, "augment": "random", "dataset": "synthetic", "synthetic_n": 160,
                 "log_model": "false", "width": 0.25, "threads": 2}.items():
        cmd += ["-P", f"{k}={v}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("presets").experiment_id])
    params, tags = run.data.params, run.data.tags
    assert tags["preset"] == params["preset"] == "paper"
    assert params["preset_overrides"] == "augment,epochs,width"
    assert (params["epochs"], params["augment"]) == ("1", "random")  # given
    assert (params["batch_size"], params["val_fraction"], params["optimizer"]) == ("400", "0.1275", "adam")  # paper's
    assert params["lr_schedule"] == "constant" and "patience" in params
    lr = client.get_metric_history(run.info.run_id, "learning_rate")
    assert [m.value for m in lr] == [2e-4]
