"""Interrupt `galmorph train` at random moments and measure how long it takes to exit.

A diagnosis tool for "Ctrl-C can hang" (issue 12): each try starts a training run in a fresh
MLflow store, waits for the first epoch's metrics or a random delay, sends SIGINT or SIGTERM
and times the exit. A try over --hang seconds is reported as a hang, with the Python stacks of
the process (py-spy if --py-spy names it, else faulthandler via SIGUSR1), then killed.

    python tools/interrupt_loop.py --backend torch --tries 40 [--py-spy /path/to/py-spy]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


PHASES = {  # what a try waits for before the random delay, and the SQL that tells
    "start": None,
    "run": "select 1 from runs limit 1",
    "epoch": "select 1 from metrics where key = 'train_loss' limit 1",
    "final": "select 1 from metrics where key = 'test_accuracy' limit 1",
}


def _reached(db: Path, phase: str) -> bool:
    if PHASES[phase] is None:
        return True
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as con:
            return con.execute(PHASES[phase]).fetchone() is not None
    except sqlite3.Error:
        return False


def _run_status(db: Path) -> tuple[str | None, str | None]:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            row = con.execute("select run_uuid, status from runs").fetchone()
            if row is None:
                return None, None
            tag = con.execute("select value from tags where run_uuid = ? and key = 'failure_reason'",
                              (row[0],)).fetchone()
            return row[1], tag[0] if tag else None
    except sqlite3.Error as exc:
        return f"db error {exc}", None


def _dump(proc: subprocess.Popen, py_spy: str | None) -> str:
    if proc.poll() is not None:
        return ""
    if py_spy:
        out = subprocess.run([py_spy, "dump", "--pid", str(proc.pid)], capture_output=True, text=True, timeout=60)
        return out.stdout + out.stderr
    proc.send_signal(signal.SIGUSR1)  # faulthandler.register in cli.main writes to stderr
    time.sleep(1)
    return "(faulthandler dump in the process's stderr)"


def one_try(k: int, args, rng: random.Random) -> dict:
    with tempfile.TemporaryDirectory(prefix="interrupt-") as tmp:
        db = Path(tmp) / "mlflow.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "GALMORPH_CACHE": args.cache,
               "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"}
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            env.pop(var, None)
        cmd = [sys.executable, "-m", "galmorph", "train", "--backend", args.backend, "--dataset", "synthetic",
               "--synthetic-n", str(args.n), "--epochs", str(args.epochs), "--patience", "0",
               "--experiment", "interrupt", *args.extra]
        sig = signal.SIGTERM if rng.random() < args.sigterm else signal.SIGINT
        double = sig == signal.SIGINT and rng.random() < args.double  # then SIGTERM, as `mlflow run` on Ctrl-C
        phase = rng.choice(args.phases.split(","))
        delay = rng.uniform(args.min_delay, args.max_delay) if phase == "start" else rng.uniform(0, args.after)
        if phase == "final":
            cmd[cmd.index("--epochs") + 1] = "2"
        err = open(Path(tmp) / "stderr", "w+")
        t0 = time.time()
        # a child of a background job inherits SIGINT ignored (POSIX): give it a terminal's Ctrl-C
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        reached = None
        while proc.poll() is None:
            if reached is None and _reached(db, phase):
                reached = time.time()
            if reached is not None and time.time() - reached > delay:
                break
            time.sleep(0.05)
        at = time.time() - t0
        if proc.poll() is not None:
            return {"k": k, "phase": phase, "note": f"exited {proc.returncode} before the signal", "hang": False}
        proc.send_signal(sig)
        t_sig = time.time()
        if double:
            time.sleep(rng.uniform(0, 0.3))
            proc.send_signal(signal.SIGTERM)
        sent = time.strftime("%H:%M:%S", time.localtime(t_sig)) + f".{int(t_sig % 1 * 1000):03d}"
        dump = ""
        try:
            proc.wait(timeout=args.slow)
        except subprocess.TimeoutExpired:  # slow: where is it now?
            dump = f"--- after {time.time() - t_sig:.1f} s ---\n" + _dump(proc, args.py_spy)
            try:
                proc.wait(timeout=max(0.1, args.hang - (time.time() - t_sig)))
            except subprocess.TimeoutExpired:
                dump += f"--- after {time.time() - t_sig:.1f} s ---\n" + _dump(proc, args.py_spy)
                proc.kill()
                proc.wait()
        took = time.time() - t_sig
        status, reason = _run_status(db)
        err.seek(0)
        stderr = err.read()
        hang = took > args.hang
        result = {"k": k, "sig": sig.name + ("+SIGTERM" if double else ""), "phase": phase, "at": at, "sent": sent, "took": took,
                  "rc": proc.returncode, "status": status, "reason": reason, "hang": hang}
        no_run_yet = status in (None, "db error no such table: runs")  # interrupted before the run existed
        if dump or proc.returncode != 130 or not (status == "KILLED" and reason or no_run_yet):
            result["stderr"] = stderr[-6000:]
            result["dump"] = dump
        return result


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="torch")
    p.add_argument("--tries", type=int, default=40)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--min-delay", type=float, default=0.5)
    p.add_argument("--max-delay", type=float, default=15)
    p.add_argument("--phases", default="start,run,epoch,final",
                   help="per try, one of: start (--min/max-delay after the start), or a random 0..--after s after "
                        "the run exists (run), the first epoch is logged (epoch), the test metrics are (final, 2 epochs)")
    p.add_argument("--after", type=float, default=4)
    p.add_argument("--slow", type=float, default=4, help="dump the stacks of a process not gone after this")
    p.add_argument("--sigterm", type=float, default=0.3, help="share of tries sent SIGTERM")
    p.add_argument("--double", type=float, default=0.25, help="share of SIGINT tries followed by a SIGTERM")
    p.add_argument("--hang", type=float, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--py-spy", default=None)
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "galmorph-interrupt-cache"))
    p.add_argument("--log", default=None, help="append results here")
    p.add_argument("extra", nargs="*", help="more `galmorph train` flags (after --)")
    args = p.parse_args()
    rng = random.Random(args.seed)
    hangs = bad = 0
    log = open(args.log, "a") if args.log else None
    for k in range(args.tries):
        r = one_try(k, args, rng)
        hangs += r["hang"]
        line = " ".join(f"{key}={r[key]:.2f}" if isinstance(r[key], float) else f"{key}={r[key]}"
                        for key in r if key not in ("stderr", "dump"))
        print(line, flush=True)
        if log:
            log.write(line + "\n")
        if "stderr" in r:
            bad += 1
            text = f"--- stderr ---\n{r['stderr']}\n--- stacks ---\n{r['dump']}\n"
            print(text, flush=True)
            if log:
                log.write(text)
        if log:
            log.flush()
    print(f"{args.backend}: {args.tries} tries, {hangs} hung (> {args.hang} s), {bad} not cleanly KILLED/130")
    return 1 if hangs or bad else 0


if __name__ == "__main__":
    sys.exit(main())
