"""Where galmorph finds its declarative files and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

from galmorph.core.errors import GalmorphError

_REPO_ROOT = Path(__file__).resolve().parent.parent


def experiments_dir() -> Path:
    """The `experiments/` folder: $GALMORPH_EXPERIMENTS, the repository's, or ./experiments."""
    env = os.environ.get("GALMORPH_EXPERIMENTS")
    candidates = [Path(env)] if env else []
    candidates += [_REPO_ROOT / "experiments", Path.cwd() / "experiments"]
    for path in candidates:
        if (path / "architectures.yaml").is_file():
            return path
    raise GalmorphError(
        "cannot find the experiments/ folder (architectures.yaml, schemes.yaml); "
        "install galmorph with `pip install -e .` from a clone or set GALMORPH_EXPERIMENTS"
    )


def cache_dir() -> Path:
    """Root of galmorph's caches: $GALMORPH_CACHE or ~/.cache/galmorph."""
    env = os.environ.get("GALMORPH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "galmorph"


def load_yaml(name: str) -> dict:
    """Read experiments/<name> (a YAML mapping)."""
    import yaml

    path = experiments_dir() / name
    with open(path) as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise GalmorphError(f"{path} is not a YAML mapping; restore it from the repository")
    return data
