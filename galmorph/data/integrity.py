"""Content checksums of the dataset files galmorph writes or downloads, verified cheaply.

Each such file has a JSON sidecar `<file>.sha256.json` holding its SHA256 and size and the
(size, mtime, ctime) stamp of the file version last found to match. `check()` hashes a file
only when its stamp differs from the recorded one, so a file is hashed once per version:
a file rewritten, truncated or corrupted in place gets a new mtime/ctime and is hashed
again (a size change is caught without reading it). ctime is in the stamp because no tool
can set it back, so a damaged file whose mtime was restored (`cp -p`, rsync) is still hashed.
Like git's index, a stamp cannot see a change made within the same tick of the file system's
clock (1-10 ms on Linux) as the check that recorded it, nor damage that leaves every
timestamp alone (bit rot under the file system): that is the price of not hashing each load.

Sidecars are a cache of work done, never the authority on their own: a file whose expected
checksum comes from elsewhere (the Galaxy10 record, the nair2010 manifest) is checked
against that checksum, and a sidecar that disagrees with it is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from galmorph.core.io import atomic_write

SUFFIX = ".sha256.json"
FORMAT = "galmorph-checksum-1"


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA256 of the file at `path`, read `chunk_size` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_of(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def _stamp(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_sidecar(sidecar: Path) -> dict:
    try:
        doc = json.loads(Path(sidecar).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else {}


def remember(path: Path, sha256: str, *, sidecar: Path | None = None) -> None:
    """Record that `path`, as it is now, has content `sha256` (the caller has just written or
    verified it). A sidecar that cannot be written only costs a hash on the next check."""
    path = Path(path)
    _save(sidecar or sidecar_of(path), path.name, sha256.lower(), _stamp(path))


def _save(sidecar: Path, name: str, sha256: str, stamp: list[int]) -> None:
    doc = {"format": FORMAT, "file": name, "sha256": sha256, "size": stamp[0], "verified": stamp}
    try:
        atomic_write(sidecar, lambda fh: json.dump(doc, fh))
    except OSError:
        pass


def check(path: Path, sha256: str | None = None, size: int | None = None, *, sidecar: Path | None = None) -> str | None:
    """Why `path` does not hold the expected content, or None when it does.

    The expected SHA256 (and size) are the arguments when given, else the sidecar's; a file
    with neither has no known content ("no checksum recorded"). The file is hashed only if
    its stamp differs from the one recorded at the last successful check.
    """
    path = Path(path)
    sidecar = Path(sidecar) if sidecar is not None else sidecar_of(path)
    doc = _read_sidecar(sidecar)
    expected = (sha256 or doc.get("sha256") or "").lower()
    if not expected:
        return "no checksum recorded"
    if size is None and doc.get("sha256") == expected:
        size = doc.get("size")
    try:
        before = _stamp(path)
    except FileNotFoundError:
        return "file missing"
    if size is not None and before[0] != size:
        return f"size {before[0]:,} bytes, expected {size:,}: truncated or overwritten"
    if doc.get("sha256") == expected and doc.get("verified") == before:
        return None
    actual = sha256_file(path)
    if actual != expected:
        return f"SHA256 {actual[:12]}... differs from the recorded {expected[:12]}...: changed on disk"
    if _stamp(path) == before:  # unchanged while it was read: this version is the verified one
        _save(sidecar, path.name, expected, before)
    return None
