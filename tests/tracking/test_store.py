"""An unusable MLflow tracking store is one line, at once: galmorph.tracking.store checks it
before the first MLflow call (which would retry for minutes and end in a long traceback),
and bad settings are reported before the store is contacted at all."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, child_env

from galmorph.core.errors import GalmorphError
from galmorph.tracking import store
from galmorph.tracking.store import check_store, store_problem

BOUND_S = 30  # what each failing command may take, start-up included (the target is under 10 s)
FIX_LOCAL = "set MLFLOW_TRACKING_URI to a writable location"


def _galmorph(uri: str, *args, timeout: int = 120):
    """(process, seconds) of `galmorph <args>` with MLFLOW_TRACKING_URI=uri."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "galmorph", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=child_env({"MLFLOW_TRACKING_URI": uri}))
    return proc, time.monotonic() - start


def _one_line_error(proc, seconds: float) -> str:
    """The single `galmorph: error:` line of a command that failed as a user error should."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("galmorph: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert seconds < BOUND_S, f"took {seconds:.1f} s"
    return errors[0]


def _writable(folder: Path) -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder no file can be made in: a chmod 555 one, or, as root (whom the mode bits do not
    stop), a system folder that refuses files even to root."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for folder in (ro, Path("/sys"), Path("/proc")):
            if folder.is_dir() and not _writable(folder):
                yield folder
                return
        pytest.skip("every candidate folder takes files here (root, with writable /sys and /proc)")
    finally:
        ro.chmod(0o755)


@pytest.fixture
def health_server():
    """An HTTP server on 127.0.0.1 answering /health with server.status; counts the requests."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.server.hits.append(self.path)
            self.send_response(self.server.status)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.status, server.hits = 200, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# --- the check, in process ---------------------------------------------------------------

def test_a_writable_sqlite_store_passes_and_is_left_as_it_was(tmp_path):
    folder = tmp_path / "new" / "deeper"  # missing folders are fine: MLflow creates them
    assert store_problem(f"sqlite:///{folder / 'mlflow.db'}") is None
    (tmp_path / "old.db").write_bytes(b"data")
    assert store_problem(f"sqlite:///{tmp_path / 'old.db'}") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.db"]  # the probes made nothing that stays
    assert (tmp_path / "old.db").read_bytes() == b"data"


def test_a_relative_sqlite_store_is_checked_where_mlflow_puts_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlflow.db").mkdir()  # a folder where the database file should be
    problem = store_problem("sqlite:///mlflow.db")
    assert problem is not None and f"{tmp_path / 'mlflow.db'} is a folder, not a database file" in problem


def test_a_store_under_a_regular_file_fails(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    uri = f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}"
    with pytest.raises(GalmorphError) as info:
        check_store(uri)
    assert str(info.value) == (f"cannot write the MLflow tracking store {uri}: {tmp_path / 'afile'} is a file, "
                               f"not a folder; {FIX_LOCAL}")
    file_uri = f"file://{tmp_path / 'afile' / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert f"{tmp_path / 'afile'} is a file, not a folder" in store_problem(file_uri)


def test_a_file_store_needs_mlflows_permission(tmp_path, monkeypatch):
    """MLflow 3 refuses ./mlruns unless MLFLOW_ALLOW_FILE_STORE=true: one line saying so, not its traceback."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in (f"file://{tmp_path / 'mlruns'}", str(tmp_path / "mlruns2")):
        problem = store_problem(uri)
        assert problem is not None and "only with MLFLOW_ALLOW_FILE_STORE=true" in problem, problem
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert store_problem(f"file://{tmp_path / 'mlruns3'}") is None


def test_a_store_in_an_unwritable_folder_fails(unwritable_folder):
    uri = f"sqlite:///{unwritable_folder / 'galmorph-test' / 'mlflow.db'}"
    problem = store_problem(uri)
    assert problem is not None and problem.startswith(f"cannot write the MLflow tracking store {uri}: ")
    assert str(unwritable_folder) in problem and problem.endswith(FIX_LOCAL)


def test_an_http_store_that_answers_passes_once_per_process(health_server):
    uri = f"http://127.0.0.1:{health_server.server_port}/prefix/"
    assert store_problem(uri) is None
    assert health_server.hits == ["/prefix/health"]
    check_store(uri)  # passed already: not asked again
    assert health_server.hits == ["/prefix/health"]


def test_an_http_store_answering_an_error_fails(health_server):
    health_server.status = 503
    uri = f"http://127.0.0.1:{health_server.server_port}"
    assert store_problem(uri) == (f"cannot reach the MLflow tracking store: the server at {uri} answers 503 "
                                  "Service Unavailable; check its log, or unset MLFLOW_TRACKING_URI")
    assert store_problem(uri) is not None  # a failure is not remembered as a pass
    assert health_server.hits == ["/health", "/health"]


def test_an_http_store_that_never_answers_fails_within_the_timeout(monkeypatch):
    monkeypatch.setattr(store, "CHECK_TIMEOUT_S", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # connects (backlog), never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        start = time.monotonic()
        problem = store_problem(uri)
        took = time.monotonic() - start
    assert problem is not None and f"no MLflow server answers at {uri} (no answer within 1 s)" in problem
    assert took < 10


def test_an_http_store_error_shows_no_password(closed_port):
    problem = store_problem(f"https://admin:t0ken-Secret@127.0.0.1:{closed_port}")
    assert f"no MLflow server answers at https://admin:***@127.0.0.1:{closed_port} (connection refused)" in problem
    assert "t0ken" not in problem


def test_a_database_store_that_refuses_connections_fails(closed_port):
    pytest.importorskip("psycopg2")
    problem = store_problem(f"postgresql+psycopg2://mlflow:Pw-1234@127.0.0.1:{closed_port}/mlflow")
    assert problem is not None
    assert problem.startswith(f"cannot reach the MLflow tracking store postgresql+psycopg2://mlflow:***@127.0.0.1:"
                              f"{closed_port}/mlflow: ")
    assert "Connection refused" in problem and "Pw-1234" not in problem


# --- the commands ----------------------------------------------------------------------------

def test_train_in_an_unwritable_folder_is_one_line(unwritable_folder):
    uri = f"sqlite:///{unwritable_folder / 'mlflow.db'}"
    proc, seconds = _galmorph(uri, "train", "--backend", "torch", "--synthetic-n", "40", "--epochs", "1")
    line = _one_line_error(proc, seconds)
    assert line.startswith(f"galmorph: error: cannot write the MLflow tracking store {uri}: {unwritable_folder}")
    assert line.endswith(FIX_LOCAL)


def test_train_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    uri = f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}"
    proc, seconds = _galmorph(uri, "train", "--backend", "torch", "--synthetic-n", "40", "--epochs", "1")
    assert _one_line_error(proc, seconds) == (f"galmorph: error: cannot write the MLflow tracking store {uri}: "
                                              f"{tmp_path / 'afile'} is a file, not a folder; {FIX_LOCAL}")
    assert (tmp_path / "afile").read_text() == ""


@pytest.mark.parametrize("args", [
    ["train", "--backend", "torch", "--synthetic-n", "40", "--epochs", "1"],
    ["tune", "--backend", "torch", "--synthetic-n", "40", "--n-trials", "1"],
    ["multiseed", "--backend", "torch", "--synthetic-n", "40", "--seeds", "2"],
    ["report"],
    ["explain", "--run-id", "0123456789abcdef"],
], ids=lambda args: args[0])
def test_a_command_against_an_http_uri_where_nothing_listens_is_one_line(closed_port, tmp_path, args):
    uri = f"http://127.0.0.1:{closed_port}"
    if args[0] == "report":
        args = [*args, "--output", tmp_path / "report"]
    proc, seconds = _galmorph(uri, *args)
    assert _one_line_error(proc, seconds) == (
        f"galmorph: error: cannot reach the MLflow tracking store: no MLflow server answers at {uri} "
        f"(connection refused); start one with `mlflow server --host 127.0.0.1 --port {closed_port}` "
        "or unset MLFLOW_TRACKING_URI")


def test_bad_settings_against_an_unreachable_store_are_reported_at_once(closed_port):
    proc, seconds = _galmorph(f"http://127.0.0.1:{closed_port}", "train", "--epochs", "0", "--backend", "torch")
    assert _one_line_error(proc, seconds) == "galmorph: error: epochs must be at least 1, got 0"
    assert proc.stdout == ""
