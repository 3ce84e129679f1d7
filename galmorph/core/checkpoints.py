"""Per-epoch checkpoints of a training run: one neutral layout, written atomically, validated.

A run's checkpoints live in `<cache>/checkpoints/<run_id>/` (galmorph.core.paths.cache_dir),
one folder per kept epoch, `epoch-NNNN/`, holding:

- `state`: what the backend's `save_state` wrote (weights, optimiser state, framework RNG);
- `best`: the same kind of file for the best epoch so far (a hard link to an earlier `state`
  when the best epoch is an earlier one: no copy), absent before any epoch improved;
- `reporter.json`: the EpochReporter's state (history, best epoch and loss, patience count);
- `manifest.json`, written last: epoch, backend, run, tracking store, and the size and sha256
  of every other file, so that a checkpoint cut short (a full disk, a copy stopped half way)
  is refused rather than trained from.

A run killed at any instant (SIGKILL, a power cut aside) leaves a resumable run: a folder
named `epoch-NNNN/` is always whole. It is written under a temporary name (`.epoch-NNNN.*.tmp`)
and renamed into place; a folder that goes (an older epoch, once the new one is in place, or
the run's folder once the run is FINISHED) is first renamed to such a temporary name, then
removed. Temporary folders left by a killed process are removed by the next save (or the next
run's end). Only the latest checkpoint is kept, and the best weights inside it. Nothing else
about the training stream is stored: its batches are a pure function of (seed, epoch)
(galmorph.data.augment.TrainStream.plan), so the epoch number says where to continue.

`after_file_op`, None in normal use, is called after each file operation of a checkpoint's
writing, rotation and removal: tests kill the process there to prove the above
(tests/core/test_checkpoints.py at every one, tests/workflows/test_checkpoint_kills.py in a
real training run of each backend).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from galmorph.core.errors import GalmorphError
from galmorph.core.paths import cache_dir

FORMAT = "galmorph-checkpoint-1"
FILES = ("state", "best", "reporter.json")
ARTIFACT_PATH = "checkpoint"  # where a run's last checkpoint goes among its MLflow artifacts
TMP_SUFFIX = ".tmp"  # a folder being written or removed; never read from

after_file_op: Callable[[str, Path], None] | None = None  # (operation, path) once done; see the docstring


def _done(op: str, path: Path) -> None:
    if after_file_op is not None:
        after_file_op(op, path)


def run_folder(run_id: str) -> Path:
    """The checkpoint folder owned by MLflow run `run_id`."""
    return cache_dir() / "checkpoints" / run_id


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint: the last completed epoch and where its files are."""

    folder: Path
    epoch: int
    backend: str
    run_id: str
    tracking_uri: str
    stopped: bool  # early stopping had decided to stop after this epoch
    reporter: dict

    @property
    def state(self) -> Path:
        return self.folder / "state"

    @property
    def best(self) -> Path | None:
        """The best epoch's state file, or None when no epoch improved yet."""
        path = self.folder / "best"
        return path if path.exists() else None

    def next_epoch(self, epochs: int) -> int:
        """The epoch training continues at (`epochs`, i.e. none, when it had stopped early)."""
        return epochs if self.stopped else self.epoch + 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Checkpointer:
    """Writes a run's checkpoint after every epoch; `resume` is the checkpoint it continues from.

    A backend's fit() calls `save(epoch, reporter, improved, stop, write_state)` once per epoch,
    after `reporter.end_epoch`, with `write_state(path)` writing the backend's state file.
    """

    def __init__(self, run_id: str, backend: str, tracking_uri: str = "", resume: Checkpoint | None = None,
                 folder: Path | None = None):
        self.run_id, self.backend, self.tracking_uri, self.resume = run_id, backend, tracking_uri, resume
        self.folder = Path(folder) if folder is not None else run_folder(run_id)
        self._best: tuple[Path, dict] | None = None  # the latest checkpoint's best file and its record
        if resume is not None and resume.best is not None:
            self._best = (resume.best, _read_manifest(resume.folder)["files"]["best"])

    def save(self, epoch: int, reporter, improved: bool, stop: bool, write_state: Callable[[Path], None]) -> Path:
        """Write `epoch-NNNN/` atomically, then drop older epochs; returns the new folder."""
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            _done("mkdir", self.folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".epoch-{epoch:04d}.", suffix=TMP_SUFFIX, dir=self.folder))
        _done("mkdtemp", tmp)
        try:
            files = {}
            write_state(tmp / "state")
            _done("write", tmp / "state")
            files["state"] = {"bytes": (tmp / "state").stat().st_size, "sha256": _sha256(tmp / "state")}
            if improved:
                _link_or_copy(tmp / "state", tmp / "best")
                files["best"] = files["state"]
            elif self._best is not None:
                _link_or_copy(self._best[0], tmp / "best")
                files["best"] = self._best[1]
            text = json.dumps(reporter.state(), allow_nan=True)
            _write(tmp / "reporter.json", text)
            files["reporter.json"] = {"bytes": len(text.encode()), "sha256": hashlib.sha256(text.encode()).hexdigest()}
            manifest = {"format": FORMAT, "epoch": epoch, "backend": self.backend, "run_id": self.run_id,
                        "tracking_uri": self.tracking_uri, "stopped": bool(stop), "files": files}
            _write(tmp / "manifest.json", json.dumps(manifest, indent=1))
            final = self.folder / f"epoch-{epoch:04d}"
            if final.exists():  # a run resumed from an earlier epoch had written this one before
                _discard(final)
            os.rename(tmp, final)
            _done("rename", final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if "best" in files:
            self._best = (final / "best", files["best"])
        for old in sorted(self.folder.iterdir()):
            with contextlib.suppress(OSError):  # what stays is garbage, removed by a later save
                if old != final and old.name.startswith("epoch-"):
                    _discard(old)
                elif old.name.endswith(TMP_SUFFIX):  # left by a killed process
                    _remove(old)
        return final


def discard(folder: Path) -> None:
    """Remove a run's checkpoint folder (`run_folder`), first renamed aside so that no reader
    ever sees part of it (nothing if it does not exist); then what is left of others whose
    removal a killed process did not finish."""
    if folder.exists():
        _discard(folder)
    for stale in folder.parent.glob(f".*{TMP_SUFFIX}"):
        shutil.rmtree(stale, ignore_errors=True)


def _discard(folder: Path) -> None:
    """Rename `folder` to a temporary name (one atomic step), then remove it."""
    aside = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    os.rename(folder, aside)
    _done("rename", aside)
    _remove(aside)


def _remove(path: Path) -> None:
    """shutil.rmtree of a temporary folder, one file at a time (each an operation for
    after_file_op); a kill part way leaves part of it, which no reader looks into."""
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.iterdir()):
            _remove(child)
        path.rmdir()
    else:
        path.unlink()
    _done("remove", path)


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    _done("write", path)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same inode: the best weights are never written twice
    except OSError:  # a file system without hard links
        shutil.copyfile(src, dst)
    _done("link", dst)


def _read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def latest(folder: Path) -> Path | None:
    """The newest complete `epoch-NNNN/` folder under `folder`, or None."""
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("epoch-"))
    return found[-1] if found else None


def load(folder: Path) -> Checkpoint:
    """Validate the checkpoint in `folder` (an `epoch-NNNN/` folder) against its manifest:
    every file present, of the recorded size and sha256. A one-line GalmorphError otherwise."""
    try:
        manifest = _read_manifest(folder)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
        for name, record in manifest["files"].items():
            path = folder / name
            if not path.is_file():
                raise ValueError(f"{name} is missing")
            if path.stat().st_size != record["bytes"] or _sha256(path) != record["sha256"]:
                raise ValueError(f"{name} is not the file that was written ({path.stat().st_size} of "
                                 f"{record['bytes']} bytes, or another sha256)")
        reporter = json.loads((folder / "reporter.json").read_text(encoding="utf-8"))
        return Checkpoint(folder, int(manifest["epoch"]), manifest["backend"], manifest["run_id"],
                          manifest.get("tracking_uri", ""), bool(manifest.get("stopped")), reporter)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GalmorphError(f"the checkpoint {folder} is damaged ({str(exc).splitlines()[0]}); "
                            "it cannot be resumed from: start a new run") from None


def recorded_store(run_id: str) -> str | None:
    """The tracking store the local checkpoint of `run_id` was written for (manifest), if any."""
    found = latest(run_folder(run_id))
    with contextlib.suppress(OSError, ValueError, KeyError):
        return _read_manifest(found)["tracking_uri"] if found else None
    return None
