"""Interrupt `galmorph train` at chosen points, several in one process (run by test_train.py).

    python interrupt_points.py BACKEND REPORT.json POINT:SIGNAL[:EPOCHS] ...

For each point, cli.main trains a tiny synthetic set and a real SIGINT or SIGTERM is sent to
this process when the training reaches the point; the code around the point runs as it is,
the wrappers below only fire the signal. Each point logs to the experiment `interrupt-POINT`.
REPORT.json gets, per point, main's exit code and the seconds from the signal to main's
return. The last point goes through cli.entry, so the caller sees the process's own exit code
and exit time; "fired <time.time()>" on stderr tells it when the last signal left.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time

from galmorph import cli
from galmorph.core import training
from galmorph.data import augment
from galmorph.tracking import artifacts
from galmorph.workflows import train

MAIN = threading.main_thread().ident
fired: list[float] = []


def fire(sig: int, to_main: bool = False) -> None:
    """Send `sig` once per point: to the process (as a terminal or `mlflow run` would), or to
    the main thread (where a finalizer runs)."""
    if fired:
        return
    fired.append(time.time())
    print(f"fired {fired[0]!r}", file=sys.stderr, flush=True)
    if to_main:
        signal.pthread_kill(MAIN, sig)
    else:
        os.kill(os.getpid(), sig)


class _SendsInItsFinalizer:
    def __init__(self, sig):
        self.sig = sig

    def __del__(self):
        fire(self.sig, to_main=True)
        for _ in range(200_000):  # the handler runs here, inside the finalizer, which drops its exception
            pass


def _patch(owner, name, make_wrapper):
    original = getattr(owner, name)
    setattr(owner, name, make_wrapper(original))
    return lambda: setattr(owner, name, original)


def arm(point: str, sig: int, backend: str):
    """Patch the function where `point` fires; returns the undo."""
    if point == "prepare":  # data preparation, before any model exists
        return _patch(train, "prepare", lambda f: lambda *a, **k: (fire(sig), f(*a, **k))[1])
    if point == "step":  # the third training batch of the first epoch (a batch-making thread)
        return _patch(augment.TrainStream, "get",
                      lambda f: lambda self, plan, i: (i == 2 and fire(sig), f(self, plan, i))[1])
    if point == "twice":  # mid-epoch, then SIGTERM as the run is being marked KILLED (`mlflow run` on Ctrl-C)
        import mlflow

        def set_tag(f):
            def wrapper(self, run_id, key, *a, **k):
                if key == "failure_reason":
                    os.kill(os.getpid(), signal.SIGTERM)
                return f(self, run_id, key, *a, **k)
            return wrapper
        undo_step, undo_tag = arm("step", sig, backend), _patch(mlflow.MlflowClient, "set_tag", set_tag)
        return lambda: (undo_step(), undo_tag())
    if point == "validation":  # the first validation batches
        def validation(f):
            def batches(*a, **k):
                fire(sig)
                yield from f(*a, **k)
            return batches
        return _patch(augment, "eval_batches", validation)
    if point == "finalizer":  # inside a finalizer run by the main thread, as the second epoch starts
        def start_epoch(f):
            def wrapper(self, *args, **kwargs):
                if self.history:
                    obj = _SendsInItsFinalizer(sig)
                    del obj
                return f(self, *args, **kwargs)
            return wrapper
        return _patch(training.EpochReporter, "start_epoch", start_epoch)
    if point == "sqlite":  # just after MLflow's SQLite INSERT of the first epoch's metrics ran
        from sqlalchemy.engine.default import DefaultDialect
        armed = []
        undo_report = _patch(training.EpochReporter, "end_epoch",
                             lambda f: lambda *a, **k: (armed.append(1), f(*a, **k))[1])

        def execute(f):
            def wrapper(self, cursor, statement, parameters, context=None):
                out = f(self, cursor, statement, parameters, context)
                if armed and threading.get_ident() == MAIN and statement.lstrip().upper().startswith("INSERT"):
                    fire(sig, to_main=True)
                return out
            return wrapper
        undo = [_patch(DefaultDialect, name, execute) for name in ("do_execute", "do_executemany")]
        return lambda: (undo_report(), [u() for u in undo])
    if point == "artifacts":  # writing the evaluation artifacts, after training
        return _patch(artifacts, "write_evaluation", lambda f: lambda *a, **k: (fire(sig), f(*a, **k))[1])
    if point == "model":  # saving the model, once MLflow created its LoggedModel (PENDING)
        # both backends log a pyfunc model (galmorph.inference.pyfunc); the module itself, as
        # MLflow's Model.log calls it (mlflow.pyfunc.save_model)
        flavor = importlib.import_module("mlflow.pyfunc")
        return _patch(flavor, "save_model", lambda f: lambda *a, **k: (fire(sig), f(*a, **k))[1])
    raise ValueError(point)


def argv(backend: str, point: str, epochs: int) -> list[str]:
    return ["train", "--backend", backend, "--dataset", "synthetic", "--synthetic-n", "64", "--batch-size", "16",
            "--epochs", str(epochs), "--patience", "0", "--log-model", str(point == "model").lower(),
            "--experiment", f"interrupt-{point}"]


def main() -> None:
    backend, report_path, *points = sys.argv[1:]
    report = {}
    for k, spec in enumerate(points):
        point, sig_name, *epochs = spec.split(":")
        args = argv(backend, point, int(epochs[0]) if epochs else 1)
        undo = arm(point, getattr(signal, sig_name), backend)
        fired.clear()
        if k == len(points) - 1:
            with open(report_path, "w") as f:
                json.dump(report, f)
            sys.argv = ["galmorph", *args]
            cli.entry()  # exits
        try:
            code = cli.main(args)
        finally:
            undo()
        report[point] = {"code": code, "fired": bool(fired), "seconds": time.time() - fired[0] if fired else None}


if __name__ == "__main__":
    main()
