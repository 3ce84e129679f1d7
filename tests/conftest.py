"""Shared fixtures: everything a test writes goes under tmp_path, MLflow included."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

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


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store in tmp_path, for this process and its children."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    import mlflow

    mlflow.set_tracking_uri(uri)
    # create the schema now: two processes creating it at once race ("table already exists")
    mlflow.MlflowClient().search_experiments()
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


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


@pytest.fixture
def small_h5(tmp_path):
    return make_h5(tmp_path / "small.h5")


def run_python(code: str, env: dict | None = None, timeout: int = 600):
    """Run `code` in a fresh interpreter (one deep-learning framework per process)."""
    import subprocess

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)
