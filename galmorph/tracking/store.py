"""`check_store()`: is the MLflow tracking store usable? Asked once per process and store,
within a few seconds, before the first MLflow call, because MLflow itself retries an
unreachable server or an unopenable database for minutes and then ends in a long traceback.
`check_artifacts()`: does a run's local artifact folder take files?

What is checked, by the kind of store:
- SQLite (`sqlite:///path`): the database file, if it exists, opens for writing, and its
  folder (or, if MLflow has to create it, the nearest folder that exists) takes a new file;
- a folder (`file:///path` or a plain path, MLflow's file store): MLFLOW_ALLOW_FILE_STORE=true
  is set (MLflow 3 refuses the file store without it), and the same as above for the folder;
- http(s): the server answers GET <uri>/health within CHECK_TIMEOUT_S (a plain request with
  MLflow's TLS settings, not through MLflow's retrying client); an answer of 500 or more fails;
- PostgreSQL and MySQL: one connection, with a connect timeout of CHECK_TIMEOUT_S.
Other stores (Databricks, ...) are left to MLflow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from galmorph.core.errors import GalmorphError
from galmorph.core.io import check_writable, folder_problem, os_problem
from galmorph.tracking.secrets import redact

CHECK_TIMEOUT_S = 5
_FIX_LOCAL = "set MLFLOW_TRACKING_URI to a writable location"
_usable: set[str] = set()  # stores that passed, so that each is asked once per process


def tracking_uri() -> str:
    """The tracking URI MLflow will use; no store is contacted. Before MLflow is imported nothing
    can have called mlflow.set_tracking_uri, so MLFLOW_TRACKING_URI decides: a bad setting is
    then reported without the seconds that importing MLflow takes."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and "mlflow" not in sys.modules:
        return uri
    import mlflow

    return mlflow.get_tracking_uri()


def check_store(uri: str | None = None) -> None:
    """Raise a one-line GalmorphError saying what is wrong with the tracking store and what to
    do; return at once for a store that already passed in this process."""
    problem = store_problem(uri)
    if problem is not None:
        raise GalmorphError(problem)


def store_problem(uri: str | None = None) -> str | None:
    """What is wrong with the tracking store `uri` (default: the one in use), or None."""
    uri = uri or tracking_uri()
    if uri in _usable:
        return None
    scheme = urlsplit(uri).scheme.lower()  # as MLflow reads it ("databricks" has none)
    dialect = scheme.partition("+")[0]
    if scheme == "sqlite":
        problem = _sqlite(uri)
    elif scheme in ("http", "https"):
        problem = _http(uri)
    elif scheme == "file":
        problem = _file_store_refused(uri) or _local_folder(uri, Path(unquote(urlsplit(uri).path)))
    elif scheme == "" and not uri.startswith("databricks"):
        problem = _file_store_refused(uri) or _local_folder(uri, Path(uri))
    elif dialect in ("postgresql", "postgres", "mysql"):
        problem = _database(uri, scheme)
    else:
        problem = None
    if problem is None:
        _usable.add(uri)
        return None
    return redact(problem)  # as one text: an error may quote pieces of the URL's password


def check_artifacts(artifact_uri: str) -> None:
    """A run's artifact location, where it is a local folder (a file: URI or a plain path):
    GalmorphError unless it takes files (galmorph.core.io.check_writable), asked when a run
    starts, and by `explain` before it adds to a finished run, so that an unwritable folder
    is one line before the work and not a traceback after it. Other artifact stores
    (mlflow-artifacts:, s3:, ...) are left to MLflow."""
    parts = urlsplit(artifact_uri)
    if parts.scheme.lower() == "file":
        path = Path(unquote(parts.path))
    elif parts.scheme == "":  # a plain path
        path = Path(artifact_uri)
    else:
        return
    check_writable(path, "artifact folder", "fix its permissions or the experiment's artifact location, or set "
                   "MLFLOW_TRACKING_URI to a store whose artifacts you can write", folder=True)


def _cannot_write(uri: str, why: str) -> str:
    return f"cannot write the MLflow tracking store {uri}: {why}; {_FIX_LOCAL}"


def _sqlite(uri: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
    except Exception as exc:
        return f"the MLflow tracking URI {uri} is not a database URL ({exc}); fix MLFLOW_TRACKING_URI"
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("uri") in ("true", "1"):
        return None  # in memory, or an SQLite URI filename that MLflow passes through as is
    path = Path(os.path.abspath(database))  # a relative one lies in the working folder, as in MLflow
    if path.is_dir():
        return _cannot_write(uri, f"{path} is a folder, not a database file")
    if path.exists():
        try:
            with open(path, "r+b"):
                pass
        except OSError as exc:
            return _cannot_write(uri, os_problem(path, exc))
    why = folder_problem(path.parent)  # SQLite writes its journal next to the file
    return _cannot_write(uri, why) if why else None


def _file_store_refused(uri: str) -> str | None:
    """MLflow 3 opens a file store (./mlruns) only with MLFLOW_ALLOW_FILE_STORE=true; without it
    every MLflow call raises a long "maintenance mode" error. With it, tracking and the model
    registry both work there (checked on MLflow 3.17)."""
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("true", "1"):
        return None
    return (f"MLflow 3 opens the file store {uri} only with MLFLOW_ALLOW_FILE_STORE=true; use a database "
            "(MLFLOW_TRACKING_URI=sqlite:///mlflow.db) or set MLFLOW_ALLOW_FILE_STORE=true")


def _local_folder(uri: str, path: Path) -> str | None:
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        return _cannot_write(uri, f"{path} is a file, not a folder")
    why = folder_problem(path)
    return _cannot_write(uri, why) if why else None


def _http(uri: str) -> str | None:
    import requests

    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1")
    verify = False if insecure else os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
    parts = urlsplit(uri)
    try:
        port = parts.port or 5000
    except ValueError:  # not a number: requests says so below
        port = 5000
    start = f"start one with `mlflow server --host {parts.hostname or '127.0.0.1'} --port {port}`"
    fix = f"{start} or unset MLFLOW_TRACKING_URI"
    try:
        reply = requests.get(f"{uri.rstrip('/')}/health", timeout=CHECK_TIMEOUT_S, verify=verify,
                             cert=os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None)
    except requests.exceptions.SSLError as exc:
        return (f"cannot reach the MLflow tracking store: the TLS handshake with {uri} failed "
                f"({_first_line(exc)}); set MLFLOW_TRACKING_SERVER_CERT_PATH to its certificate")
    except requests.exceptions.Timeout:
        return (f"cannot reach the MLflow tracking store: no MLflow server answers at {uri} "
                f"(no answer within {CHECK_TIMEOUT_S} s); {fix}")
    except requests.exceptions.RequestException as exc:
        return f"cannot reach the MLflow tracking store: no MLflow server answers at {uri} ({_reason(exc)}); {fix}"
    if reply.status_code >= 500:
        return (f"cannot reach the MLflow tracking store: the server at {uri} answers "
                f"{reply.status_code} {reply.reason}; check its log, or unset MLFLOW_TRACKING_URI")
    return None


def _reason(exc: Exception) -> str:
    text = str(exc)
    for needle, reason in (("Connection refused", "connection refused"), ("Name or service not known", "unknown host"),
                           ("NameResolution", "unknown host"), ("nodename nor servname", "unknown host"),
                           ("Network is unreachable", "network unreachable"), ("No route to host", "no route to host")):
        if needle in text:
            return reason
    return _first_line(exc)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _database(uri: str, scheme: str) -> str | None:
    """One connection with a short connect timeout (psycopg2, psycopg and the MySQL drivers
    take `connect_timeout`); other drivers are left to MLflow."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    driver = scheme.partition("+")[2]
    if driver not in ("", "psycopg2", "psycopg", "pymysql", "mysqldb"):
        return None
    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args={"connect_timeout": CHECK_TIMEOUT_S})
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as exc:  # unreachable server, bad password, missing driver: the user's to fix
        return (f"cannot reach the MLflow tracking store {uri}: {_first_line(exc)}; "
                "start the database or fix MLFLOW_TRACKING_URI")
    return None
