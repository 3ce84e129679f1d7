"""Libraries' routine log lines kept off the console (framework-free): MLflow's INFO lines
(`quiet_mlflow`, for the `galmorph` command) and native libraries' (`native_log_filter`).

TensorFlow 2.21 writes notices (oneDNN, "Could not find cuda drivers") through absl from C++
while it loads, before absl logging is initialised; TF_CPP_MIN_LOG_LEVEL does not reach them
then (measured: they show at every level). `native_log_filter` holds what is written to file
descriptor 2 while the block runs and writes back only the lines the level lets through.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# absl/glog: "I0000 00:00:1795996803.704479    2123 port.cc:153] ..." (before absl is initialised
# the clock field is seconds since the epoch); severity I, W, E, F
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^ ]+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def dropped(line: str, min_level: int) -> bool:
    """Whether an absl log `line` is below `min_level` (TF_CPP_MIN_LOG_LEVEL: 0 all, 1 no INFO,
    2 no WARNING, 3 no ERROR); other lines are never dropped, nor FATAL ones."""
    if line.rstrip("\n") == _ABSL_PREAMBLE:
        return min_level >= 2  # itself a warning
    m = _ABSL_LINE.match(line)
    return bool(m) and m.group(1) != "F" and _SEVERITY[m.group(1)] < min_level


@contextlib.contextmanager
def native_log_filter(min_level: int):
    """Drop absl log lines below `min_level` that anything (C++ included) writes to file
    descriptor 2 inside the block; every other line is written back when the block ends."""
    if min_level <= 0:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            kept = "".join(line for line in text.splitlines(keepends=True) if not dropped(line, min_level))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def quiet_mlflow() -> None:
    """Keep MLflow's routine INFO lines (system-metrics monitor started/stopped, experiment
    created, database tables made) off the console; its warnings and errors still show.
    MLflow sets its logger's level from MLFLOW_LOGGING_LEVEL when imported, so a user who
    wants the INFO lines back sets MLFLOW_LOGGING_LEVEL=INFO. Called by the `galmorph`
    command only: code that imports galmorph keeps MLflow's logging as it configured it."""
    import logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # galmorph's commands draw their own progress; MLflow's per-download bars ("Downloading
    # artifacts: 100%|...") would interleave with it (explain, report)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if "mlflow" in sys.modules:  # already configured at import
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
