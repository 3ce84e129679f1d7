"""Small helpers the catalogue, cutout and build modules share: folder checks, JSON reads,
one-line messages and timestamps."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from galmorph.core.errors import GalmorphError


def ensure_writable_dir(path: Path, what: str) -> None:
    """Create ``path`` if needed and prove a file can be written in it; else GalmorphError
    naming ``what`` (e.g. "cache folder")."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise GalmorphError(f"cannot write to the {what} {path} ({exc.strerror or type(exc).__name__}); "
                            "pass a writable folder") from exc


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
