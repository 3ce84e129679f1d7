"""Kill `galmorph train` with SIGKILL just after a file operation of its checkpoints (run by
test_resume.py, test_checkpoint_kills.py and test_run_endings.py).

    python kill_points.py at OP:NAME:N[:SIGNAL] -- TRAIN_ARGS...
    python kill_points.py every REPORT.json -- TRAIN_ARGS...

`at` trains in this process and sends it SIGNAL (SIGKILL unless named) after the N-th (1-based)
operation OP on a path named NAME (e.g. rename:epoch-0001:1, the second epoch's checkpoint
renamed into place).

`every` first trains once uninterrupted (run name `reference`) and records the run's file
operations (galmorph.core.checkpoints.after_file_op), then, for each of them, trains a new run
(`killed-K`) that SIGKILLs itself just after operation K, then resumes every killed run with
`galmorph train --resume`. Not after the removal of each file inside a folder being removed
(renamed aside first, no reader looks into it): tests/core/test_checkpoints.py kills there.
Every run goes to the experiment named in TRAIN_ARGS. The runs are children forked from this
process, which imports what the reference run imported (and runs nothing of it) before the next
forks, so that each does not import it again. REPORT.json gets the reference run, the
operations, and per kill point the run, the resume's exit code and its stderr.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

from galmorph import backends, cli
from galmorph.core import checkpoints


def _kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)


def _active_run_id() -> str:
    import mlflow

    return mlflow.active_run().info.run_id


def at(spec: str, args: list[str]) -> int:
    op, name, nth, *sig = spec.split(":")
    seen = []

    def hook(done: str, path: Path) -> None:
        if done == op and path.name == name:
            seen.append(1)
            if len(seen) == int(nth):
                _kill_self(getattr(signal, sig[0]) if sig else signal.SIGKILL)

    checkpoints.after_file_op = hook
    return cli.main(args)


def inside_removed(op: str, name: str) -> bool:
    """Whether operation (op, name) removed a file or folder inside a folder being removed."""
    return op == "remove" and not name.endswith(checkpoints.TMP_SUFFIX)


def _forked(work, *args) -> int:
    """Run work(*args) in a forked child; its exit status (negative: the signal that ended it)."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            code = work(*args)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _reference(args: list[str], out: Path) -> int:
    ops: list[list[str]] = []

    def hook(done: str, path: Path) -> None:  # the first operation is in the run, the last ones after it
        ops.append([done, path.name, ops[0][2] if ops else _active_run_id()])

    checkpoints.after_file_op = hook
    code = cli.main([*args, "--run-name", "reference"])
    out.write_text(json.dumps({"ops": ops, "modules": sorted(sys.modules)}))
    return code


def _import_all(names: list[str]) -> None:
    """Import what a run imported (MLflow's store, scikit-learn, torch._dynamo...), so that the
    children forked next start with it: most of a tiny run's time is imports."""
    for name in names:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _killed(args: list[str], k: int, out: Path) -> int:
    run_ids: list[str] = []

    def hook(done: str, path: Path) -> None:
        run_ids.append(run_ids[0] if run_ids else _active_run_id())
        if len(run_ids) == k:
            out.write_text(json.dumps({"run_id": run_ids[0], "op": done, "path": path.name}))
            _kill_self()

    checkpoints.after_file_op = hook
    return cli.main([*args, "--run-name", f"killed-{k}"])


def _resume_all(points: list[dict], out: Path) -> int:
    for point in points:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            point["resume_code"] = cli.main(["train", "--resume", point["run_id"], "--quiet", "true"])
        point["resume_stderr"] = err.getvalue()
    out.write_text(json.dumps(points))
    return 0


def every(report: Path, args: list[str]) -> int:
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # no telemetry thread in this forking process
    with tempfile.TemporaryDirectory() as tmp:
        ops_file = Path(tmp) / "ops.json"
        code = _forked(_reference, args, ops_file)
        if code != 0:
            raise SystemExit(f"the reference run exited {code}")
        reference = json.loads(ops_file.read_text())
        ops = reference["ops"]
        _import_all(reference["modules"])
        points = []
        for k in range(1, len(ops) + 1):
            if inside_removed(*ops[k - 1][:2]):
                continue
            out = Path(tmp) / f"killed-{k}.json"
            code = _forked(_killed, args, k, out)
            if code != -signal.SIGKILL:
                raise SystemExit(f"the run to be killed after operation {k} ({ops[k - 1]}) exited {code}")
            points.append({"k": k, **json.loads(out.read_text())})
        resumed = Path(tmp) / "resumed.json"
        code = _forked(_resume_all, points, resumed)
        if code != 0:
            raise SystemExit(f"the resuming process exited {code}")
        report.write_text(json.dumps({"reference": ops[0][2], "ops": [op[:2] for op in ops],
                                      "points": json.loads(resumed.read_text())}, indent=1))
    return 0


def main() -> int:
    mode, target, sep, *args = sys.argv[1:]
    assert sep == "--", sys.argv
    backends.get(args[args.index("--backend") + 1])  # KERAS_BACKEND set before anything imports keras
    if mode == "at":
        return at(target, args)
    return every(Path(target), args)


if __name__ == "__main__":
    sys.exit(main())
