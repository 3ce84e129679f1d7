"""Small helpers the catalogue, cutout and build modules share: JSON reads, one-line messages
and timestamps (folder checks: galmorph.core.io.ensure_writable_dir)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def one_line(x) -> str:
    """``str(x)`` with every run of whitespace, newlines included, made one space."""
    return " ".join(str(x).split())


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
