"""Atomic file writes: nothing half-written is ever left under a final name; and the check,
before any work, that an output can be written at all.

Every file galmorph produces (datasets, splits, plots, reports, manifests) is written to a
temporary name in the destination folder and renamed into place only when complete.
Every command that writes (predict, report, data download/generate/prepare, explain, the
tracking store) first asks `check_writable` (or `folder_problem`), so that a folder it
cannot write is one line before minutes of work, not a traceback after them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from galmorph.core.errors import GalmorphError


def folder_problem(folder: Path) -> str | None:
    """Why no file can be made in `folder` (or, where it does not exist yet, in the nearest
    folder that does, where it would be created), or None. It tries, creating and removing one
    empty file: the permission bits say nothing for root, and nothing about read-only file
    systems. A file where a folder should be is named as such."""
    existing = Path(os.path.abspath(Path(folder).expanduser()))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".galmorph-probe-", dir=existing)
    except OSError as exc:
        return os_problem(existing, exc)
    os.close(fd)
    os.unlink(probe)
    return None


def os_problem(path: Path, exc: OSError) -> str:
    """`exc`, met writing in `path`, as a few words for a one-line message."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path} is read-only ({exc.strerror})"
    return f"no file can be made in {path} ({exc.strerror or exc})"


def check_writable(path: Path, what: str, fix: str, *, folder: bool = False) -> Path:
    """`path` (expanded) if galmorph can write it: a file (`folder=False`: its folder, or the
    nearest one that exists, takes new files, and `path` is not a folder) or a folder
    (`folder=True`: it, or the nearest folder that exists, takes new files, and `path` is not
    a file). Else GalmorphError `cannot write to the <what> <path>: <why>; <fix>`. Creates
    nothing: a folder that is missing is made by the writer, later."""
    path = Path(path).expanduser()
    if not folder and path.is_dir():
        raise GalmorphError(f"cannot write to the {what} {path}: it is a folder; {fix}")
    why = folder_problem(path if folder else path.parent)
    if why is not None:
        raise GalmorphError(f"cannot write to the {what} {path}: {why}; {fix}")
    return path


def ensure_writable_dir(path: Path, what: str, fix: str = "pass a writable folder") -> Path:
    """`check_writable(path, what, fix, folder=True)`, then the folder created."""
    path = check_writable(path, what, fix, folder=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # between the check and here (a race), or a quota
        raise GalmorphError(f"cannot write to the {what} {path}: {os_problem(path, exc)}; {fix}") from None
    return path


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


def errors_path(output: Path) -> Path:
    """The file that lists what an output left out (`source`, `error` rows): <stem>.errors.csv
    beside it (galmorph predict, galmorph data convert)."""
    output = Path(output)
    return output.with_name(output.stem + ".errors.csv")
