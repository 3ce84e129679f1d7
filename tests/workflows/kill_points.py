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
forks, so that each does not import it again; the killed runs, then their resumes, run two at a time. REPORT.json gets the reference run, the
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


def _start(work, *args) -> int:
    """Run work(*args) in a forked child; its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            code = work(*args)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def _forked(work, *args) -> int:
    """Run work(*args) in a forked child; its exit status (negative: the signal that ended it)."""
    _, status = os.waitpid(_start(work, *args), 0)
    return os.waitstatus_to_exitcode(status)


def _forked_in_pairs(jobs: list[tuple]) -> list[int]:
    """Run each (work, *args) of `jobs` in a forked child, two at a time (each run is one
    thread); their exit statuses, in order."""
    codes: list[int] = [0] * len(jobs)
    running: dict[int, int] = {}
    for i, (work, *args) in enumerate(jobs):
        while len(running) >= 2:
            _reap(running, codes)
        running[_start(work, *args)] = i
    while running:
        _reap(running, codes)
    return codes


def _reap(running: dict[int, int], codes: list[int]) -> None:
    """Wait for one of the `running` children (pid -> job) and record its exit status; a
    child of something else this process imported is reaped and passed over."""
    pid, status = os.wait()
    if pid in running:
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)


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


def _resume(run_id: str, out: Path) -> int:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["train", "--resume", run_id, "--quiet", "true"])
    out.write_text(json.dumps({"resume_code": code, "resume_stderr": err.getvalue()}))
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
        ks = [k for k in range(1, len(ops) + 1) if not inside_removed(*ops[k - 1][:2])]
        codes = _forked_in_pairs([(_killed, args, k, Path(tmp) / f"killed-{k}.json") for k in ks])
        for k, code in zip(ks, codes):
            if code != -signal.SIGKILL:
                raise SystemExit(f"the run to be killed after operation {k} ({ops[k - 1]}) exited {code}")
        points = [{"k": k, **json.loads((Path(tmp) / f"killed-{k}.json").read_text())} for k in ks]
        codes = _forked_in_pairs([(_resume, p["run_id"], Path(tmp) / f"resumed-{p['k']}.json") for p in points])
        for point, code in zip(points, codes):
            if code != 0:
                raise SystemExit(f"the process resuming {point['run_id']} exited {code}")
            point.update(json.loads((Path(tmp) / f"resumed-{point['k']}.json").read_text()))
        report.write_text(json.dumps({"reference": ops[0][2], "ops": [op[:2] for op in ops], "points": points},
                                     indent=1))
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
