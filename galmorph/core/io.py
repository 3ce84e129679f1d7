"""Atomic file writes: nothing half-written is ever left under a final name.

Every file galmorph produces (datasets, splits, plots, reports, manifests) is written to a
temporary name in the destination folder and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, else it is removed.

    The file gets the permissions a plain open() would give it (0666 less the umask),
    not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish(tmp: Path, path: Path) -> None:
    """Give a finished temporary file ordinary permissions and rename it onto `path`."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write(path: Path, write: Callable, *, text: bool = True, sync: bool = False) -> Path:
    """Write `path` through `write(fh)` atomically (text: UTF-8, no newline translation)."""
    with atomic_path(path) as tmp:
        kwargs = {"newline": "", "encoding": "utf-8"} if text else {}
        with open(tmp, "w" if text else "wb", **kwargs) as fh:
            write(fh)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
    return Path(path)
