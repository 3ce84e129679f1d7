"""Shared fixtures: everything a test writes goes under tmp_path, MLflow included."""

from __future__ import annotations

import functools
import glob
import itertools
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

# the `server` fixture: a local VizieR + SkyServer stand-in (tests/skyserver.py)
pytest_plugins = ["skyserver"]

REPO = Path(__file__).resolve().parent.parent
GZ2_SAMPLE = REPO.parent / "shared" / "data" / "gz2_zhu5_sample.h5"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep galmorph's cache (synthetic sets, downloads) out of the user's home."""
    cache = tmp_path_factory.mktemp("galmorph-cache")
    old = os.environ.get("GALMORPH_CACHE")
    os.environ["GALMORPH_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("GALMORPH_CACHE", None)
    else:
        os.environ["GALMORPH_CACHE"] = old


# Variables that choose an MLflow run or experiment. MLflow 3's set_experiment exports
# MLFLOW_EXPERIMENT_ID into os.environ, so a test that trains in-process would otherwise pin
# every later child process (and `mlflow run --experiment-name`) to its experiment.
RUN_CHOICE = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def child_env(extra: dict | None = None) -> dict:
    """This process's environment for a child process, with no MLflow run or experiment chosen."""
    return {**{k: v for k, v in os.environ.items() if k not in RUN_CHOICE}, **(extra or {})}


@pytest.fixture(autouse=True)
def _no_leaked_run_choice():
    """Put the run-choosing variables back as they were after every test."""
    saved = {k: os.environ.get(k) for k in RUN_CHOICE}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store in tmp_path, for this process and its children."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in RUN_CHOICE:
        monkeypatch.delenv(var, raising=False)
    import mlflow

    mlflow.set_tracking_uri(uri)
    # create the schema now: two processes creating it at once race ("table already exists")
    mlflow.MlflowClient().search_experiments()
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def check_entry_point(entry_point: dict, config_cls, skip: tuple = ()) -> None:
    """An MLproject entry point exposes exactly config_cls's MLproject settings (but `skip` and
    the presettable ones), with the same defaults, each passed to the command as --<name> {<name>}."""
    import pytest

    from galmorph.config import settings_of

    settings = [s for s in settings_of(config_cls) if s.mlproject and s.name not in skip]
    expected = {s.name: s for s in settings if not s.presettable}
    params = entry_point["parameters"]
    assert set(params) == set(expected), set(params) ^ set(expected)
    for s in settings:  # undeclared: MLflow passes them only when given (galmorph.presets)
        assert not s.presettable or f"--{s.name.replace('_', '-')} " not in entry_point["command"], s.name
    for key, s in expected.items():
        assert params[key]["type"] in ("string", "float"), key
        assert f"--{key.replace('_', '-')} {{{key}}}" in entry_point["command"], key
        if s.required:
            assert "default" not in params[key], key
            continue
        got, default = params[key]["default"], s.default
        if isinstance(default, bool):
            assert str(got).lower() == str(default).lower(), key
        elif isinstance(default, (int, float)):
            assert float(got) == pytest.approx(default), key
        else:
            assert str(got) == default, key


def make_h5(path: Path, n: int = 60, size: int = 32, n_classes: int = 3, seed: int = 0, **extra) -> Path:
    """A small Galaxy10-format file: class k is a bright square at one of k positions."""
    from galmorph.data import hdf5

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    images = rng.integers(0, 40, size=(n, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        y = 4 + 6 * label
        images[i, y : y + 5, 4:9, :] = 250
    names = extra.pop("class_names", [f"k{i}" for i in range(n_classes)])
    return hdf5.write(path, images, labels.astype(np.uint8), names, **extra)


def next_timestamp(path: Path) -> None:
    """Wait until a file written now gets a later timestamp than `path`'s last change.

    File timestamps come from a coarse clock (1-10 ms on Linux), so a change made in the same
    tick as a check is invisible to any (size, mtime, ctime) stamp, as with git's index; tests
    that damage a file right after galmorph verified it wait for the next tick first.
    """
    st = os.stat(path)
    last = max(st.st_mtime_ns, st.st_ctime_ns)
    probe = Path(path).with_name(".next-timestamp-probe")
    try:
        for _ in range(10_000):
            probe.write_bytes(b"")
            if probe.stat().st_mtime_ns > last:
                return
        raise RuntimeError(f"the file system clock did not move past {last} ns")
    finally:
        probe.unlink(missing_ok=True)


@pytest.fixture
def small_h5(tmp_path):
    return make_h5(tmp_path / "small.h5")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(run id, the training .h5 file, tmp folder, tracking URI) of a tiny logged torch model
    (1 epoch, width 0.25, 48 px), trained once for the predict tests (test_predict.py,
    test_predict_scale.py)."""
    tmp = tmp_path_factory.mktemp("predict")
    h5 = make_h5(tmp / "train.h5", n=60, size=48, n_classes=3, id=np.arange(1000, 1060))
    run_id, uri = train_tiny_model(h5, "predict")
    return run_id, h5, tmp, uri


def train_tiny_model(h5: Path, experiment: str) -> tuple[str, str]:
    """Train and log a tiny torch C2 (1 epoch, width 0.25, no augmentation) on `h5` into an
    SQLite store beside it, in `experiment`: (run id, tracking URI)."""
    import mlflow

    from galmorph.config import TrainConfig
    from galmorph.workflows import train

    uri = f"sqlite:///{h5.parent / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        started = []
        train.run(TrainConfig(dataset=str(h5), backend="torch", model="c2", width=0.25, dense_units=16, epochs=1,
                              batch_size=16, threads=1, quiet=True, experiment=experiment, augment="none"),
                  started=started.append)
    return started[0], uri


@pytest.fixture
def env(trained, monkeypatch):
    """`trained`, with its store as the tracking URI."""
    import mlflow

    run_id, h5, tmp, uri = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return trained


def wait_for(condition, timeout: float, what: str):
    """Poll `condition` (it may fail the test itself) until it returns something truthy; fail
    after `timeout` seconds. The pause between polls only spaces out the queries."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """End a server started with start_new_session=True, and its children: SIGTERM to its
    process group, SIGKILL if it is still there after `timeout` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def start_mlflow_server(store: str, artifacts: Path, log: Path, env: dict | None = None,
                        port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`mlflow server` of `store` on a loopback port (a free one unless given), serving the
    artifacts from `artifacts`, its output in `log`; returns (process, url) once /health
    answers. It has its own session: stop_group ends it and its uvicorn worker. The GenAI job
    executor (7 huey processes) is switched off: galmorph uses none."""
    import urllib.request

    port = port or free_port()
    env = child_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})})
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--serve-artifacts",
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        wait_for(up, 180, "mlflow server's /health")
    except BaseException:
        stop_group(proc)
        raise
    return proc, url


def run_python(code: str, env: dict | None = None, timeout: int = 600, cwd=REPO):
    """Run `code` in a fresh interpreter (one deep-learning framework per process)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=child_env(env), cwd=cwd)


# The tuning tests search a small corner of the real space (narrow networks), so that
# a trial takes seconds on two shared CPU cores; test_tune.py checks the real spaces.
SMALL_SPACE = {"model": "c2", "params": {
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    "lr_adam": {"field": "learning_rate", "type": "float", "low": 1e-4, "high": 3e-3, "log": True,
                "when": {"optimizer": ["adam"]}},
    "lr_sgd": {"field": "learning_rate", "type": "float", "low": 1e-3, "high": 1e-1, "log": True,
               "when": {"optimizer": ["sgd"]}},
    "dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "width": {"type": "categorical", "choices": [0.25, 0.5]},
    "dense_units": {"type": "categorical", "choices": [32, 64]},
}}


@pytest.fixture(scope="module")
def small_space(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("space") / "small.yaml"
    import yaml

    path.write_text(yaml.safe_dump(SMALL_SPACE, sort_keys=False))
    return str(path)

# ---------------------------------------------------------------------------------------
# a throwaway PostgreSQL server (Optuna storage of several workers, MLflow server's store)

PG_SECRET = "s3cret-Pw"  # the password of the test role galmorph


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that refuses connections: bound, never listening, held for the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


PORT_BLOCK = 500


@functools.cache
def _port_walk() -> Iterator[int]:
    """The ports this pytest process gives its test servers, endlessly: a block of its own per
    xdist worker, below the kernel's ephemeral range, walked from a random place (two test
    sessions at once on one machine start apart; a port just released is not asked for again
    at once). A port the kernel picks for bind(0) or for a client's connection comes from the
    ephemeral range, so a port taken from it, checked free and released, can be handed to any
    connection (the suite's own, or a neighbour's) before the server binds it; a port below
    it can only be taken by a server that asks for it by number. Empty where the ephemeral
    range leaves no room below it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    start = 10000 + (int(worker[2:]) if worker[2:].isdigit() else 0) * PORT_BLOCK
    if start + PORT_BLOCK > low:
        return iter(())
    return itertools.islice(itertools.cycle(range(start, start + PORT_BLOCK)), random.randrange(PORT_BLOCK), None)


def free_port() -> int:
    """A loopback port free now, for a server a test starts: the next one of _port_walk that
    binds, or one the kernel picks where the whole block is taken."""
    for port in itertools.islice(_port_walk(), PORT_BLOCK):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl, postgres and psql (newest version first), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                        if Path(p).parent.name.isdigit() else 0, reverse=True)
    if shutil.which("pg_ctl"):
        candidates.append(str(Path(shutil.which("pg_ctl")).parent))
    for path in candidates:
        if all((Path(path) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres", "psql")):
            return Path(path)
    return None


@dataclass
class Postgres:
    """A running test cluster on 127.0.0.1: role galmorph (password PG_SECRET), database optuna."""

    port: int
    socket_dir: Path
    pg: Callable  # pg(tool, *args): run a server tool as the cluster's owner

    def url(self, database: str = "optuna", password: bool = True) -> str:
        """postgresql://galmorph[:secret]@127.0.0.1:<port>/<database>; without the password,
        clients take it from PGPASSWORD (as users are told to)."""
        auth = f"galmorph:{PG_SECRET}" if password else "galmorph"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def psql(self, *commands: str) -> None:
        args = [x for c in commands for x in ("-c", c)]
        self.pg("psql", "-q", "-h", self.socket_dir, "-p", self.port, "-U", "postgres", *args)

    def create_database(self, name: str) -> None:
        self.psql(f"CREATE DATABASE {name} OWNER galmorph")


def _pg_runner(bindir: Path, tmp_path: Path):
    """(folder for the cluster, its owner or None, pg(tool, *args)): as the postgres user when
    running as root, since initdb refuses root."""
    owner = None
    if os.geteuid() != 0:
        base = tmp_path / "pg"
        base.mkdir()
        prefix = []
    else:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        base = Path(tempfile.mkdtemp(prefix="galmorph-pg-"))
        os.chown(base, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else None

    def pg(*cmd, check=True):
        argv = [str(bindir / cmd[0]), *map(str, cmd[1:])]
        argv = ["su", "postgres", "-c", " ".join(argv)] if prefix is None else prefix + argv
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=check)

    return base, owner, pg


@pytest.fixture
def postgres_server(tmp_path):
    """A throwaway PostgreSQL server on 127.0.0.1 with password authentication (Postgres)."""
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) under "
                    "/usr/lib/postgresql/*/bin or on PATH; `.ci/run` installs them (apt-get install postgresql)")
    base, owner, pg = _pg_runner(bindir, tmp_path)
    pwfile = base / "superuser.pw"
    pwfile.write_text("postgres-superuser\n")
    if owner:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    server = Postgres(free_port(), base, pg)
    try:
        pg("initdb", "-D", base / "data", "-U", "postgres", f"--pwfile={pwfile}", "--auth-local=trust",
           "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        pg("pg_ctl", "-D", base / "data", "-l", base / "server.log", "-w", "-t", "60", "-o",
           f"-p {server.port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
           "start")
        server.psql(f"CREATE ROLE galmorph LOGIN PASSWORD '{PG_SECRET}'", "CREATE DATABASE optuna OWNER galmorph")
    except subprocess.CalledProcessError as exc:
        log = (base / "server.log").read_text()[-2000:] if (base / "server.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr[-2000:]} {log}")
    try:
        yield server
    finally:
        pg("pg_ctl", "-D", base / "data", "-m", "immediate", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres(postgres_server) -> str:
    """The URL, password included, of the test server's database optuna."""
    return postgres_server.url("optuna")
