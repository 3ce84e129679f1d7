"""The checkpoint writer killed (SIGKILL) just after each of its file operations, without a
framework: every `epoch-NNNN/` folder left is whole, and continuing from the latest one ends
with the files an uninterrupted writer ends with. (A real training run of each backend killed
at these points: tests/workflows/test_checkpoint_kills.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from galmorph.core import checkpoints

EPOCHS = 3
IMPROVED = (True, False, True)  # epoch 1 keeps epoch 0's best: a link to the previous checkpoint's file

# A writer in its own process: saves epochs START..EPOCHS-1 (continuing from the latest
# checkpoint when START > 0), then, with DISCARD, removes the run's folder, as a FINISHED run
# does; with KILL > 0 it SIGKILLs itself just after its KILL-th file operation. It prints the
# operations.
WRITER = """
import json, os, signal, sys
from pathlib import Path
from galmorph.core import checkpoints

folder, start, kill, discard = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[5] == "1"
improved = json.loads(sys.argv[4])
ops = []

def hook(op, path):
    ops.append([op, path.name])
    print(json.dumps(ops[-1]), flush=True)
    if len(ops) == kill:
        os.kill(os.getpid(), signal.SIGKILL)

class Reporter:
    def __init__(self, epoch):
        self.epoch = epoch
    def state(self):
        return {"epoch": self.epoch}

checkpoints.after_file_op = hook
resume = checkpoints.load(checkpoints.latest(folder)) if start else None
writer = checkpoints.Checkpointer("run", "neutral", folder=folder, resume=resume)
for epoch in range(start, len(improved)):
    writer.save(epoch, Reporter(epoch), improved[epoch], False,
                lambda path: path.write_bytes(f"state of epoch {epoch}".encode() * 1000))
if discard:
    checkpoints.discard(folder)
"""


def _writer(folder: Path, start: int = 0, kill: int = 0, discard: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRITER, str(folder), str(start), str(kill), json.dumps(IMPROVED),
                           str(int(discard))], cwd=REPO, capture_output=True, text=True, timeout=120)


def _best_epoch(epoch: int) -> int:
    return max(e for e in range(epoch + 1) if IMPROVED[e])


def _check_whole(folder: Path) -> int | None:
    """Every epoch folder under `folder` loads (manifest, sizes, sha256) and holds what its epoch
    wrote; the latest epoch, or None when there is none."""
    found = sorted(p for p in folder.glob("epoch-*")) if folder.is_dir() else []
    for path in found:
        got = checkpoints.load(path)
        assert got.folder.name == f"epoch-{got.epoch:04d}"
        assert got.state.read_bytes() == f"state of epoch {got.epoch}".encode() * 1000
        assert got.best.read_bytes() == f"state of epoch {_best_epoch(got.epoch)}".encode() * 1000
        assert got.reporter == {"epoch": got.epoch}
    return checkpoints.load(checkpoints.latest(folder)).epoch if found else None


@pytest.mark.slow
def test_the_checkpoint_writer_killed_after_any_file_operation_leaves_whole_checkpoints(tmp_path):
    whole = _writer(tmp_path / "uninterrupted")
    assert whole.returncode == 0, whole.stderr
    ops = [json.loads(line) for line in whole.stdout.splitlines()]
    assert not (tmp_path / "uninterrupted").exists()
    # each epoch renamed into place before the one before it is renamed aside; the run's folder last
    renamed = [name for op, name in ops if op == "rename"]
    assert [n if n.startswith("epoch-") else n.split(".")[1] for n in renamed] == [
        "epoch-0000", "epoch-0001", "epoch-0000", "epoch-0002", "epoch-0001", "uninterrupted"], ops
    run_aside = [name for _, name in ops].index(renamed[-1]) + 1

    last_checkpoint = None
    for k in range(1, len(ops) + 1):
        folder = tmp_path / f"killed-{k}"
        killed = _writer(folder, kill=k)
        where = f"killed after operation {k} {ops[k - 1]}"
        assert killed.returncode == -signal.SIGKILL, (where, killed.stderr)
        assert [json.loads(line)[0] for line in killed.stdout.splitlines()] == [op for op, _ in ops[:k]], where
        op, name = ops[k - 1]
        if op == "rename" and name.startswith("epoch-"):
            last_checkpoint = int(name.removeprefix("epoch-"))
        latest = _check_whole(folder)
        if k >= run_aside:  # FINISHED: its folder renamed aside, nothing left to resume from
            assert latest is None and not folder.exists(), where
            continue
        assert latest == last_checkpoint, where  # the newest epoch renamed into place, never an older one
        if latest is None:  # before the first checkpoint: nothing to resume from
            continue
        resumed = _writer(folder, start=latest + 1, discard=False)
        assert resumed.returncode == 0, (where, resumed.stderr)
        assert _check_whole(folder) == EPOCHS - 1, where
        if latest + 1 < EPOCHS:  # a save cleared what the kill left (else the run's end will)
            assert sorted(p.name for p in folder.iterdir()) == [f"epoch-{EPOCHS - 1:04d}"], where
