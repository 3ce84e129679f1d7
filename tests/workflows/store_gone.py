"""`galmorph train` whose MLflow server dies just before the run is marked FINISHED (run by
test_run_endings.py): the process group PGID of the server listening on PORT is SIGKILLed when
galmorph.tracking.runs ends the run FINISHED, so that MLflow's end_run is the call that fails.

    python store_gone.py PGID PORT TRAIN_ARGS...
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

from galmorph import cli
from galmorph.tracking import runs


def _closed(port: int, timeout: float = 60) -> None:
    """Return once nothing accepts connections on `port` (the killed server's socket is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.05)
    raise SystemExit(f"port {port} still open {timeout} s after the server was killed")


def main() -> int:
    pgid, port, *args = sys.argv[1:]
    end = runs._end

    def server_gone_first(active, status, error=None):
        if status == "FINISHED":
            os.killpg(int(pgid), signal.SIGKILL)
            _closed(int(port))
        return end(active, status, error)

    runs._end = server_gone_first
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
