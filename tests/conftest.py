"""Shared fixtures: everything a test writes goes under tmp_path, MLflow included."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# the `server` fixture: a local VizieR + SkyServer stand-in (tests/skyserver.py)
pytest_plugins = ["skyserver"]

REPO = Path(__file__).resolve().parent.parent
GZ2_SAMPLE = REPO.parent / "shared" / "data" / "gz2_zhu5_sample.h5"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep galmorph's cache (synthetic sets, downloads) out of the user's home."""
    cache = tmp_path_factory.mktemp("galmorph-cache")
    old = os.environ.get("GALMORPH_CACHE")
    os.environ["GALMORPH_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("GALMORPH_CACHE", None)
    else:
        os.environ["GALMORPH_CACHE"] = old


# Variables that choose an MLflow run or experiment. MLflow 3's set_experiment exports
# MLFLOW_EXPERIMENT_ID into os.environ, so a test that trains in-process would otherwise pin
# every later child process (and `mlflow run --experiment-name`) to its experiment.
RUN_CHOICE = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def child_env(extra: dict | None = None) -> dict:
    """This process's environment for a child process, with no MLflow run or experiment chosen."""
    return {**{k: v for k, v in os.environ.items() if k not in RUN_CHOICE}, **(extra or {})}


@pytest.fixture(autouse=True)
def _no_leaked_run_choice():
    """Put the run-choosing variables back as they were after every test."""
    saved = {k: os.environ.get(k) for k in RUN_CHOICE}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store in tmp_path, for this process and its children."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in RUN_CHOICE:
        monkeypatch.delenv(var, raising=False)
    import mlflow

    mlflow.set_tracking_uri(uri)
    # create the schema now: two processes creating it at once race ("table already exists")
    mlflow.MlflowClient().search_experiments()
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def check_entry_point(entry_point: dict, config_cls, skip: tuple = ()) -> None:
    """An MLproject entry point exposes exactly config_cls's MLproject settings (but `skip`),
    with the same defaults, each passed to the command as --<name> {<name>}."""
    import pytest

    from galmorph.config import settings_of

    expected = {s.name: s for s in settings_of(config_cls) if s.mlproject and s.name not in skip}
    params = entry_point["parameters"]
    assert set(params) == set(expected), set(params) ^ set(expected)
    for key, s in expected.items():
        assert params[key]["type"] in ("string", "float"), key
        assert f"--{key.replace('_', '-')} {{{key}}}" in entry_point["command"], key
        if s.required:
            assert "default" not in params[key], key
            continue
        got, default = params[key]["default"], s.default
        if isinstance(default, bool):
            assert str(got).lower() == str(default).lower(), key
        elif isinstance(default, (int, float)):
            assert float(got) == pytest.approx(default), key
        else:
            assert str(got) == default, key


def make_h5(path: Path, n: int = 60, size: int = 32, n_classes: int = 3, seed: int = 0, **extra) -> Path:
    """A small Galaxy10-format file: class k is a bright square at one of k positions."""
    from galmorph.data import hdf5

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    images = rng.integers(0, 40, size=(n, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        y = 4 + 6 * label
        images[i, y : y + 5, 4:9, :] = 250
    names = extra.pop("class_names", [f"k{i}" for i in range(n_classes)])
    return hdf5.write(path, images, labels.astype(np.uint8), names, **extra)


def next_timestamp(path: Path) -> None:
    """Wait until a file written now gets a later timestamp than `path`'s last change.

    File timestamps come from a coarse clock (1-10 ms on Linux), so a change made in the same
    tick as a check is invisible to any (size, mtime, ctime) stamp, as with git's index; tests
    that damage a file right after galmorph verified it wait for the next tick first.
    """
    st = os.stat(path)
    last = max(st.st_mtime_ns, st.st_ctime_ns)
    probe = Path(path).with_name(".next-timestamp-probe")
    try:
        for _ in range(10_000):
            probe.write_bytes(b"")
            if probe.stat().st_mtime_ns > last:
                return
        raise RuntimeError(f"the file system clock did not move past {last} ns")
    finally:
        probe.unlink(missing_ok=True)


@pytest.fixture
def small_h5(tmp_path):
    return make_h5(tmp_path / "small.h5")


def run_python(code: str, env: dict | None = None, timeout: int = 600, cwd=REPO):
    """Run `code` in a fresh interpreter (one deep-learning framework per process)."""
    import subprocess

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=child_env(env), cwd=cwd)
