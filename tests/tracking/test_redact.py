"""Credentials never reach MLflow or the terminal: galmorph.tracking.redact over every form a
URL carries them in, alone or inside a sentence, and `galmorph tune` with a storage URL that
holds a password and cannot be reached."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, child_env

from galmorph.tracking import redact
from galmorph.tracking.secrets import _parses_clean, is_secret_key

# (text, what redact must make of it)
MASKED = [
    # the password of the userinfo
    ("postgresql://galmorph:s3cret-Pw@127.0.0.1:1/optuna", "postgresql://galmorph:***@127.0.0.1:1/optuna"),
    ("postgresql+psycopg2://u:hunter22@db.example:5432/optuna", "postgresql+psycopg2://u:***@db.example:5432/optuna"),
    ("mysql://root:pw@localhost/mlflow", "mysql://root:***@localhost/mlflow"),
    # ... holding unencoded @ : / ? #
    ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:p:a@s:s@host:5432/db?sslmode=require", "postgresql://u:***@host:5432/db?sslmode=require"),
    ("postgresql://u:pa/ss@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:pa?ss@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:pa#ss@host/db", "postgresql://u:***@host/db"),
    # ... percent-encoded
    ("postgresql://u:p%40ss%3Aw%2Frd@host/db", "postgresql://u:***@host/db"),
    # password= and the like in the query, with or without a password in the userinfo
    ("postgresql://user@127.0.0.1/db?password=secret", "postgresql://user@127.0.0.1/db?password=***"),
    ("postgresql://user@127.0.0.1/db?sslmode=require&password=se@cr:et&application_name=x",
     "postgresql://user@127.0.0.1/db?sslmode=require&password=***&application_name=x"),
    ("mysql://u:pw@h/d?passwd=zz&PWD=yy", "mysql://u:***@h/d?passwd=***&PWD=***"),
    ("postgresql://u@h/db?pass%77ord=x%40y", "postgresql://u@h/db?pass%77ord=***"),
    # http(s): userinfo, a bare token as user name, token-like query and fragment parameters
    ("https://user:tok@mlflow.example/api", "https://user:***@mlflow.example/api"),
    ("https://ghp_abcdef123@github.com/org/repo", "https://***@github.com/org/repo"),
    ("https://mlflow.example/?token=abc&x=1", "https://mlflow.example/?token=***&x=1"),
    ("https://h/x?access_token=abc", "https://h/x?access_token=***"),
    ("https://acct.blob.core.windows.net/c?sv=2022&sig=AbC%2Fd%3D&se=2030", "https://acct.blob.core.windows.net/c?sv=2022&sig=***&se=2030"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=f00d&X-Amz-Security-Token=tt",
     "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***"),
    ("https://h/?api_key=1&apikey=2&client_secret=3&key=4", "https://h/?api_key=***&apikey=***&client_secret=***&key=***"),
    ("https://h/cb#access_token=xyz&state=1", "https://h/cb#access_token=***&state=1"),
    # outside URLs: libpq DSNs, command lines
    ("host=db password=hunter22 dbname=x", "host=db password=*** dbname=x"),
    ("host=db password='a b c' dbname=x", "host=db password=*** dbname=x"),
    ("--password=hunter22 --port 5", "--password=*** --port 5"),
    # embedded in a sentence, in brackets, after key=
    ("cannot open the Optuna storage postgresql://u:pw@h/db: connection refused",
     "cannot open the Optuna storage postgresql://u:***@h/db: connection refused"),
    ("no MLflow server answers at https://u:tok@h:5000 (connection refused); start one",
     "no MLflow server answers at https://u:***@h:5000 (connection refused); start one"),
    ("failed (postgresql://u:secret@h/db) twice", "failed (postgresql://u:***@h/db) twice"),
    ("storage=postgresql://u:pw@h/db?password=q", "storage=postgresql://u:***@h/db?password=***"),
    ("two: mysql://a:b@h/d and https://c:d@e/f.", "two: mysql://a:***@h/d and https://c:***@e/f."),
    # a password the text repeats elsewhere, raw or decoded, goes too
    ("postgresql://u:s3cr3t@h/d failed: password s3cr3t rejected", "postgresql://u:***@h/d failed: password *** rejected"),
    ("postgresql://u:pa%40ss@h/db refused pa@ss", "postgresql://u:***@h/db refused ***"),
    # ambiguous userinfo: masked rather than shown
    ("https://host:8080/x?mail=a@b", "https://host:***@b"),
]

# text without a credential comes back unchanged
UNCHANGED = [
    "sqlite:///mlflow.db",
    "sqlite:////tmp/a@b/mlflow.db",
    "sqlite:////home/me:x/mlflow.db",
    "http://127.0.0.1:9",
    "https://mlflow.example:5000/prefix",
    "postgresql://user@127.0.0.1:5432/db?sslmode=require",
    "file:///tmp/mlruns",
    "epochs must be at least 1, got 0",
    "learning_rate=0.001 batch_size=32",
    "mail me at a@b.example: x=1",
    "",
]


@pytest.mark.parametrize("text,expected", MASKED)
def test_every_credential_form_is_masked(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", UNCHANGED)
def test_text_without_credentials_is_unchanged(text):
    assert redact(text) == text


@pytest.mark.parametrize("text,expected", MASKED)
def test_masking_is_idempotent(text, expected):
    assert redact(redact(text)) == expected


def test_non_text_values_are_redacted_as_text():
    assert redact(ValueError("at postgresql://u:pw@h/db")) == "at postgresql://u:***@h/db"
    assert redact(3) == "3"


@pytest.mark.parametrize("key,secret", [("password", True), ("PASSWORD", True), ("passwd", True), ("pwd", True),
                                        ("access_token", True), ("X-Amz-Signature", True), ("sig", True),
                                        ("client_secret", True), ("pass%77ord", True), ("sslmode", False),
                                        ("user", False), ("host", False), ("application_name", False)])
def test_secret_keys(key, secret):
    assert is_secret_key(key) is secret


def test_the_parser_check_catches_what_masking_missed():
    """The last line of defence: SQLAlchemy's make_url (database URLs) or urllib (the others)
    reading a credential in a would-be masked URL."""
    assert not _parses_clean("postgresql", "postgresql://u:pw@h/db")
    assert not _parses_clean("postgresql", "postgresql://u@h/db?password=x")
    assert not _parses_clean("https", "https://u:tok@h/")
    assert not _parses_clean("https", "https://h/?token=abc")
    assert _parses_clean("postgresql", "postgresql://u:***@h/db?password=***&sslmode=require")
    assert _parses_clean("https", "https://u:***@h/?token=***")


# --- end to end: `galmorph tune` with a storage URL that holds a password and cannot be reached

SECRET = "Pa@ss:w0rd-XYZ"


@pytest.mark.parametrize("form", ["query", "userinfo", "encoded"])
def test_tune_never_shows_the_storage_password(tracking_uri, closed_port, form):
    import mlflow

    encoded = SECRET.replace("@", "%40").replace(":", "%3A")
    url = {"query": f"postgresql://galmorph@127.0.0.1:{closed_port}/optuna?password={SECRET}",
           "userinfo": f"postgresql://galmorph:{SECRET}@127.0.0.1:{closed_port}/optuna",
           "encoded": f"postgresql://galmorph:{encoded}@127.0.0.1:{closed_port}/optuna"}[form]
    proc = subprocess.run([sys.executable, "-m", "galmorph", "tune", "--backend", "torch", "--dataset", "synthetic",
                           "--synthetic-n", "40", "--n-trials", "1", "--experiment", "leak", "--storage", url],
                          capture_output=True, text=True, cwd=REPO, timeout=300, env=child_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("galmorph: error:")]
    assert len(errors) == 1 and "cannot open the Optuna storage postgresql://galmorph" in errors[0], proc.stderr[-2000:]

    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("leak").experiment_id])
    assert run.info.status == "FAILED"
    assert "cannot open the Optuna storage" in run.data.tags["failure_reason"]
    assert run.data.params["storage"] == redact(url) and run.data.tags["optuna_storage"] == redact(url)
    recorded = [proc.stdout, proc.stderr, *run.data.params.values(), *run.data.tags.values()]
    for piece in (SECRET, encoded, "w0rd-XYZ", "Pa@ss", "Pa%40ss"):
        assert not [text for text in recorded if piece in text], piece
