"""Whether a RUNNING MLflow run still has a process behind it.

A process killed with SIGKILL (the out-of-memory killer, a preempted machine) cannot end its
run, which then stays RUNNING forever. Every training run therefore records where it runs
(tags galmorph.host, galmorph.pid and the process's start time, galmorph.pid_started) and
beats once per epoch (galmorph.heartbeat, ISO time in UTC). A RUNNING run is judged:

- on this host: alive while its pid exists and was started at the recorded time (a pid
  reused by a later process does not count);
- on another host, or without host tags: alive while its last heartbeat (or its start, before
  the first one) is younger than `stale_after_s`, which must exceed the longest epoch.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time

from galmorph.tracking.tags import FAILURE_REASON

HOST = "galmorph.host"
PID = "galmorph.pid"
PID_STARTED = "galmorph.pid_started"  # the process's start, seconds since the epoch (psutil's create_time)
HEARTBEAT = "galmorph.heartbeat"
STARTED_SLACK_S = 1.0  # create_time is derived from boot time and clock ticks: not exact to the microsecond


def process_tags() -> dict[str, str]:
    """The tags that say which process runs a run (set when it starts or resumes)."""
    import psutil

    return {HOST: socket.gethostname(), PID: str(os.getpid()),
            PID_STARTED: f"{psutil.Process().create_time():.3f}", HEARTBEAT: now_iso()}


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _process_alive(pid: int, started: float | None) -> tuple[bool, str]:
    import psutil

    try:
        proc = psutil.Process(pid)
        created = proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False, f"its process (pid {pid}) is gone"
    if proc.status() == psutil.STATUS_ZOMBIE:
        return False, f"its process (pid {pid}) is gone"
    if started is not None and abs(created - started) > STARTED_SLACK_S:
        return False, f"its process (pid {pid}) is gone; the pid now belongs to another process"
    return True, f"its process (pid {pid}) is alive on this host"


def judge(run, stale_after_s: float, now: float | None = None) -> tuple[bool, str]:
    """(alive, why) for a RUNNING run (an mlflow Run)."""
    tags = run.data.tags
    host, pid = tags.get(HOST), tags.get(PID)
    if host == socket.gethostname() and pid and pid.isdigit():
        started = tags.get(PID_STARTED)
        return _process_alive(int(pid), float(started) if started else None)
    now = time.time() if now is None else now
    beat = tags.get(HEARTBEAT)
    last = dt.datetime.fromisoformat(beat).timestamp() if beat else run.info.start_time / 1000
    age = now - last
    where = f"host {host}" if host else "a process without galmorph's host tags"
    what = "heartbeat" if beat else "start"
    if age > stale_after_s:
        return False, f"no heartbeat from {where} for {age / 60:.0f} min (last {what} {_iso(last)})"
    return True, f"{where} beat {age / 60:.0f} min ago"


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


def stale_runs(client, experiment_ids: list[str], stale_after_s: float) -> list[tuple[object, str]]:
    """(run, why) of every RUNNING run in `experiment_ids` whose process is gone."""
    found = []
    if not experiment_ids:
        return found
    for run in client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=50000):
        alive, why = judge(run, stale_after_s)
        if not alive:
            found.append((run, why))
    return found


def close(client, run, why: str) -> None:
    """End a stale run KILLED, with the reason in its failure_reason tag."""
    client.set_tag(run.info.run_id, FAILURE_REASON, f"stale: {why}; closed by `galmorph runs --close-stale` on "
                                                    f"{socket.gethostname()} at {now_iso()}")
    client.set_terminated(run.info.run_id, "KILLED")
