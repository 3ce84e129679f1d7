"""Where galmorph finds its declarative files and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

from galmorph.core.errors import GalmorphError

_PACKAGE = Path(__file__).resolve().parent.parent  # the galmorph package folder


def experiments_dir() -> Path:
    """The `experiments/` folder: $GALMORPH_EXPERIMENTS if set; else the copy installed inside
    the package (a wheel puts it at galmorph/experiments); else the clone's top-level folder
    (an editable install or a checkout)."""
    env = os.environ.get("GALMORPH_EXPERIMENTS")
    candidates = [Path(env)] if env else [_PACKAGE / "experiments", _PACKAGE.parent / "experiments"]
    for path in candidates:
        if (path / "architectures.yaml").is_file():
            return path
    where = "GALMORPH_EXPERIMENTS" if env else "the galmorph installation"
    raise GalmorphError(f"cannot find the experiments/ folder (architectures.yaml) in {where}; "
                        "reinstall galmorph, or point GALMORPH_EXPERIMENTS at a copy of the repository's experiments/")


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
