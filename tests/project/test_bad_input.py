"""Every bad input a one-line error and nothing lost: one table of bad settings, files and
services across the commands, each run as a user would (`python -m galmorph ...`).

Each case asserts: exit code 2; exactly one stderr line, and it starts `galmorph: error:`
(after the MLflow start-up lines listed in ALLOWED); no traceback; a run that was started is
FAILED with a `failure_reason`; nothing new in the cache or the working folder but the
tracking store. Cases run two at a time.

Each case is `python -m galmorph ARGS` run in a fork of one process that has imported
galmorph's command line and MLflow (FORKSERVER): its own working folder, environment,
stdout and stderr, exit status and interpreter shutdown, without paying those imports
(2-3 s a case, 80 cases) again for every case.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import child_env, make_h5

# stderr lines that MLflow itself prints when it creates a new SQLite store; nothing else may
# precede or follow galmorph's one line
ALLOWED = ("INFO mlflow.store.db.utils", "INFO alembic.runtime.migration", "INFO mlflow.tracking.fluent",
           "INFO mlflow.system_metrics")

TRAIN = ["train", "--backend", "torch", "--epochs", "1", "--experiment", "bad"]


def _files(tmp: Path) -> dict[str, Path]:
    """The bad (and good) inputs the cases refer to as {name}."""
    f = {"good": make_h5(tmp / "good.h5", n=60, size=48, n_classes=3)}  # 48 px: c2 fits its crop
    (tmp / "text.h5").write_text("not an HDF5 file\n")
    f["text"] = tmp / "text.h5"
    with h5py.File(tmp / "noimages.h5", "w") as h:
        h["ans"] = np.zeros(10, np.uint8)
    f["noimages"] = tmp / "noimages.h5"
    with h5py.File(tmp / "mismatch.h5", "w") as h:
        h["images"] = np.zeros((10, 32, 32, 3), np.uint8)
        h["ans"] = np.zeros(7, np.uint8)
    f["mismatch"] = tmp / "mismatch.h5"
    with h5py.File(tmp / "floatlabels.h5", "w") as h:
        h["images"] = np.zeros((12, 32, 32, 3), np.uint8)
        h["ans"] = np.linspace(0, 2.5, 12)
    f["floatlabels"] = tmp / "floatlabels.h5"
    with h5py.File(tmp / "hugelabel.h5", "w") as h:
        h["images"] = np.zeros((12, 32, 32, 3), np.uint8)
        h["ans"] = np.array([0, 1, 2] * 3 + [1_000_000_000] * 3, np.int64)
    f["hugelabel"] = tmp / "hugelabel.h5"
    with h5py.File(tmp / "twodim.h5", "w") as h:
        h["images"] = np.zeros((12, 32, 32), np.uint8)
        h["ans"] = np.arange(12) % 3
    f["twodim"] = tmp / "twodim.h5"
    (tmp / "list.json").write_text("[1, 2, 3]")
    f["splitlist"] = tmp / "list.json"
    (tmp / "norows.json").write_text(json.dumps({"format": "galmorph-split-1", "dataset_digest": "x"}))
    f["splitnorows"] = tmp / "norows.json"
    (tmp / "notjson.json").write_text("{ not json")
    f["splitnotjson"] = tmp / "notjson.json"
    f["splitoverlap"] = _split(tmp / "overlap.json", f["good"], overlap=True)
    f["splitother"] = _split(tmp / "other.json", make_h5(tmp / "other.h5", n=60, size=48, n_classes=3, seed=9))
    (tmp / "schemes_list.yaml").write_text(yaml.safe_dump([1, 2]))
    f["schemeslist"] = tmp / "schemes_list.yaml"
    (tmp / "schemes_entry.yaml").write_text(yaml.safe_dump({"good": ["not", "a", "mapping"]}))
    f["schemesentry"] = tmp / "schemes_entry.yaml"
    (tmp / "afile").write_text("a file where an output's folder should be\n")  # refuses files to root too
    f["afile"] = tmp / "afile"
    f["explainrun"] = _artifacts_store(tmp / "artifacts.db", tmp / "afile" / "artifacts")
    return f


def _artifacts_store(path: Path, artifacts: Path) -> str:
    """A store whose experiment `bad` keeps its artifacts under `artifacts` (where no file can
    be made), holding one finished run with a model_uri tag; that run's id."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{path}")
    experiment = client.create_experiment("bad", artifact_location=str(artifacts))
    run = client.create_run(experiment, tags={"model_uri": "models:/m-0123456789abcdef"})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _split(path: Path, h5: Path, overlap: bool = False) -> Path:
    from galmorph.data import hdf5, splits

    data = hdf5.read(h5)
    split = splits.stratified(data.labels, val_fraction=0.2, test_fraction=0.2, seed=0)
    if overlap:
        split = splits.Split(split.train, np.concatenate([split.val, split.train[:3]]), split.test, split.seed,
                             split.val_fraction, split.test_fraction)
    from galmorph.data import registry

    digest = registry.load(str(h5), "default").digest()
    return splits.save(split, np.arange(len(data.labels)), path, dataset_digest=digest)


# (id, argv with {file} placeholders, extra environment, what the one line must say)
CASES = [
    ("epochs-0", TRAIN + ["--epochs", "0"], {}, "epochs must be at least 1"),
    ("batch-0", TRAIN + ["--batch-size", "0"], {}, "batch_size must be at least 1"),
    ("lr-negative", TRAIN + ["--learning-rate", "-1"], {}, "learning_rate must be positive"),
    ("lr-nan", TRAIN + ["--learning-rate", "nan"], {}, "learning_rate must be a finite number"),
    ("width-nan", TRAIN + ["--width", "nan"], {}, "width must be a finite number"),
    ("weight-decay-nan", TRAIN + ["--weight-decay", "nan"], {}, "weight_decay must be a finite number"),
    ("seed-negative", TRAIN + ["--seed", "-1"], {}, "seed"),
    ("threads-negative", TRAIN + ["--threads", "-1"], {}, "threads must be 0 or more"),
    ("dropout-1.5", TRAIN + ["--dropout", "1.5"], {}, "dropout must be in [0, 1)"),
    ("label-smoothing-1", TRAIN + ["--label-smoothing", "1"], {}, "label_smoothing must be in [0, 1)"),
    ("batchnorm-c2", TRAIN + ["--batchnorm", "true"], {}, "batchnorm applies to c1 only"),
    ("devices-split", TRAIN + ["--batch-size", "63", "--devices", "2"], {}, "multiple of devices"),
    ("fractions", TRAIN + ["--val-fraction", "0.6", "--test-fraction", "0.5"], {}, "fraction"),
    ("experiment-empty", TRAIN + ["--experiment", ""], {}, "experiment"),
    ("model-c9", TRAIN + ["--model", "c9"], {}, "unknown model 'c9'"),
    ("backend-jax", TRAIN + ["--backend", "jax"], {}, "invalid choice: 'jax'"),
    ("band-z", TRAIN + ["--band", "z"], {}, "invalid choice: 'z'"),
    ("optimizer-rmsprop", TRAIN + ["--optimizer", "rmsprop"], {}, "invalid choice: 'rmsprop'"),
    ("epochs-not-int", TRAIN + ["--epochs", "x"], {}, "invalid int value: 'x'"),
    ("abbreviated-flag", TRAIN + ["--epoch", "3"], {}, "unrecognized arguments: --epoch"),
    ("unknown-flag", TRAIN + ["--colour", "blue"], {}, "unrecognized arguments: --colour"),
    ("scheme-unknown", TRAIN + ["--dataset", "{good}", "--scheme", "sevenway"], {}, "unknown scheme 'sevenway'"),
    ("dataset-missing", TRAIN + ["--dataset", "/nonexistent/x.h5"], {}, "does not exist"),
    ("dataset-not-hdf5", TRAIN + ["--dataset", "{text}"], {}, "text.h5"),
    ("dataset-no-images", TRAIN + ["--dataset", "{noimages}"], {}, "images"),
    ("dataset-length-mismatch", TRAIN + ["--dataset", "{mismatch}"], {}, "mismatch.h5"),
    ("dataset-float-labels", TRAIN + ["--dataset", "{floatlabels}"], {}, "label"),
    ("dataset-huge-label", TRAIN + ["--dataset", "{hugelabel}"], {}, "label"),
    ("dataset-2d-images", TRAIN + ["--dataset", "{twodim}"], {}, "twodim.h5"),
    ("crop-too-small", TRAIN + ["--dataset", "{good}", "--crop-fraction", "0.4"], {}, "too small for c2"),
    ("split-missing", TRAIN + ["--dataset", "{good}", "--split-file", "/nonexistent/splits.json"], {}, "split_file /nonexistent/splits.json does not exist"),
    ("split-not-json", TRAIN + ["--dataset", "{good}", "--split-file", "{splitnotjson}"], {}, "not valid JSON"),
    ("split-list", TRAIN + ["--dataset", "{good}", "--split-file", "{splitlist}"], {}, "split file"),
    ("split-no-rows", TRAIN + ["--dataset", "{good}", "--split-file", "{splitnorows}"], {}, "split"),
    ("split-overlap", TRAIN + ["--dataset", "{good}", "--split-file", "{splitoverlap}"], {}, "overlap"),
    ("split-other-dataset", TRAIN + ["--dataset", "{good}", "--split-file", "{splitother}"], {}, "digest"),
    ("schemes-missing", TRAIN + ["--schemes-file", "/nonexistent/s.yaml"], {}, "s.yaml does not exist"),
    ("schemes-list", TRAIN + ["--dataset", "{good}", "--schemes-file", "{schemeslist}"], {}, "schemes_list.yaml"),
    ("schemes-entry", TRAIN + ["--dataset", "{good}", "--schemes-file", "{schemesentry}"], {}, "schemes_entry.yaml"),
    ("register-name-slash", TRAIN + ["--register-as", "galaxies/c2"], {}, "Names cannot contain '/'"),
    ("register-alias-latest", TRAIN + ["--register-as", "c2", "--alias", "latest"], {}, "'latest' alias name"),
    ("register-alias-alone", TRAIN + ["--alias", "champion"], {}, "pass --register-as NAME too"),
    ("register-no-model", TRAIN + ["--register-as", "c2", "--log-model", "false"], {}, "drop --log-model false"),
    ("multiseed-register-sweep", ["multiseed", "--backend", "torch", "--schemes", "native,4way", "--register-as", "c2"],
     {}, "run multiseed once per scheme"),
    ("retrain-register-alias", ["retrain", "--study-name", "s", "--register-as", "c2", "--alias", "v1"], {},
     "Version alias name 'v1' is reserved"),
    ("resume-unknown-run", ["train", "--resume", "0123456789abcdef0123456789abcdef"], {}, "no MLflow run"),
    ("resume-under-torchrun", ["train", "--resume", "0123456789abcdef0123456789abcdef"],
     {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, "resume runs in one process"),
    ("resume-and-init-from", ["train", "--resume", "0123456789abcdef0123456789abcdef", "--init-from", "abc"], {},
     "pass one of them"),
    ("multiseed-resume", ["multiseed", "--resume", "0123456789abcdef0123456789abcdef"], {},
     "continues one training run, and multiseed starts new ones"),
    ("tune-resume", ["tune", "--resume", "0123456789abcdef0123456789abcdef"], {}, "and a study starts new ones"),
    ("runs-stale-after-0", ["runs", "--stale-after", "0"], {}, "stale_after must be a positive"),
    ("runs-unknown-experiment", ["runs", "--experiment", "nope"], {}, "no experiment 'nope'"),
    ("tune-sampler", ["tune", "--sampler", "grid"], {}, "invalid choice: 'grid'"),
    ("tune-no-trials", ["tune", "--n-trials", "0"], {}, "give a timeout"),
    ("tune-grace", ["tune", "--grace-period", "5", "--heartbeat-interval", "10"], {}, "must exceed heartbeat_interval"),
    ("tune-space-missing", ["tune", "--search-space", "/nonexistent/space.yaml", "--storage", "sqlite:///{tmp}/o.db"],
     {}, "space.yaml"),
    ("tune-storage-secret", ["tune", "--storage", "postgresql://user@127.0.0.1:9/db?password=hunter2"], {},
     "cannot open the Optuna storage"),
    ("retrain-no-study", ["retrain", "--storage", "sqlite:///{tmp}/o.db"], {}, "study"),
    ("retrain-unknown-study", ["retrain", "--study-name", "nope", "--storage", "sqlite:///{tmp}/o.db"], {}, "nope"),
    ("multiseed-dupe-seeds", ["multiseed", "--backend", "torch", "--seeds", "0,0"], {}, "seeds"),
    ("hierarchy-unknown-tree", ["hierarchy", "--backend", "torch", "--tree", "nosuch"], {}, "nosuch"),
    ("explain-no-run-id", ["explain"], {}, "--run-id"),
    ("explain-unknown-run", ["explain", "--run-id", "0123456789abcdef0123456789abcdef"], {}, "run"),
    ("report-unknown-experiment", ["report", "--experiments", "nope", "--output", "{tmp}/report"], {}, "nope"),
    ("report-bad-filter", ["report", "--experiments", "Default", "--filter", "tags.x ~~ 1", "--output", "{tmp}/r"],
     {}, "filter"),
    ("data-info-unknown", ["data", "info", "nosuch"], {}, "nosuch"),
    ("data-download-unknown", ["data", "download", "nosuch"], {}, "invalid choice: 'nosuch'"),
    ("prepare-workers-0", ["data", "prepare", "nair2010", "--workers", "0", "--out", "{tmp}/n.h5",
                           "--cache-dir", "{tmp}/ncache"], {}, "workers"),
    ("prepare-ftp", ["data", "prepare", "nair2010", "--cutout-url", "ftp://example.org/x", "--out", "{tmp}/n.h5",
                     "--cache-dir", "{tmp}/ncache"], {}, "cutout_url"),
    # outputs that cannot be written, checked before the work: under a path component that is a
    # file, or in /proc (which takes no new file, from root either); the model, experiment or
    # catalogue server that comes later is never reached
    ("predict-output-under-file", ["predict", "0123456789abcdef0123456789abcdef", "{good}", "--output",
                                   "{afile}/p.csv"], {}, "cannot write to the output file"),
    ("predict-output-proc", ["predict", "0123456789abcdef0123456789abcdef", "{good}", "--output",
                             "/proc/galmorph/p.csv"], {}, "cannot write to the output file /proc/galmorph/p.csv"),
    ("report-output-under-file", ["report", "--experiments", "Default", "--output", "{afile}/report"], {},
     "cannot write to the report folder"),
    ("report-output-proc", ["report", "--experiments", "nope", "--output", "/proc/galmorph/report"], {},
     "cannot write to the report folder /proc/galmorph/report"),
    ("download-cache-proc", ["data", "download", "galaxy10", "--quiet"], {"GALMORPH_CACHE": "/proc"},
     "cannot write to the dataset file /proc/Galaxy10.h5"),
    ("download-cache-under-file", ["data", "download", "galaxy10_decals", "--quiet"],
     {"GALMORPH_CACHE": "{afile}/cache"}, "is a file, not a folder"),
    ("generate-cache-proc", ["data", "generate", "--n", "40"], {"GALMORPH_CACHE": "/proc"},
     "cannot write to the synthetic dataset cache /proc/synthetic/"),
    ("prepare-out-under-file", ["data", "prepare", "nair2010", "--out", "{afile}/n.h5", "--cache-dir", "{tmp}/ncache",
                                "--cutout-url", "http://127.0.0.1:9/", "--vizier-server", "http://127.0.0.1:9"], {},
     "cannot write to the output folder"),
    ("explain-artifacts-under-file", ["explain", "--run-id", "{explainrun}"], {}, "cannot write to the artifact folder"),
    ("train-artifacts-under-file", TRAIN + ["--dataset", "{good}"], {}, "cannot write to the artifact folder"),
]

# cases whose tracking store starts as a copy of one of _files' stores, not the empty template
STORES = {"explain-artifacts-under-file": "artifacts.db", "train-artifacts-under-file": "artifacts.db"}


# Runs the cases of a JSON file (argv, env, cwd, out and err file names), two at a time, each
# as `python -m galmorph` in a fork of this process; writes {name: exit status} to argv[2].
# (`python -m galmorph` itself, started fresh, is what every other command-line test runs.)
FORKSERVER = r"""
import json, os, runpy, signal, sys
import galmorph.cli, mlflow, mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (once, for every case)

def case(c):
    signal.alarm(300)  # a case that hangs ends by SIGALRM (exit status -14), under its own name
    os.chdir(c["cwd"])
    os.environ.clear()
    os.environ.update(c["env"])
    for fd, name in ((1, c["out"]), (2, c["err"])):
        os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = ["galmorph", *c["argv"]]
    runpy.run_module("galmorph", run_name="__main__", alter_sys=True)  # ends in SystemExit: a normal exit

cases, codes, running = json.load(open(sys.argv[1])), {}, {}
for c in cases:
    while len(running) >= 2:
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        case(c)
    running[pid] = c["name"]
while running:
    pid, status = os.wait()
    codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
json.dump(codes, open(sys.argv[2], "w"))
"""


def _prepare_case(case, files, tmp_root: Path) -> dict:
    name, argv, env_extra, _ = case
    tmp = tmp_root / name
    (tmp / "work").mkdir(parents=True)
    (tmp / "cache").mkdir()
    shutil.copy(tmp_root / STORES.get(name, "template.db"), tmp / "mlflow.db")  # no schema migration per case
    fmt = {**{k: str(v) for k, v in files.items()}, "tmp": str(tmp)}
    env = child_env({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "GALMORPH_CACHE": str(tmp / "cache"),
                     **{k: v.format(**fmt) for k, v in env_extra.items()}})
    return {"name": name, "argv": [a.format(**fmt) for a in argv], "env": env, "cwd": str(tmp / "work"),
            "out": str(tmp / "stdout.txt"), "err": str(tmp / "stderr.txt")}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("bad-input")
    files = _files(root)
    mlflow.MlflowClient(f"sqlite:///{root / 'template.db'}").search_experiments()  # creates the schema
    prepared = [_prepare_case(c, files, root) for c in CASES]
    (root / "cases.json").write_text(json.dumps(prepared))
    server = subprocess.run([sys.executable, "-c", FORKSERVER, str(root / "cases.json"), str(root / "codes.json")],
                            capture_output=True, text=True, env=child_env(), timeout=1200)
    assert server.returncode == 0, server.stderr[-3000:]
    codes = json.loads((root / "codes.json").read_text())
    out = {}
    for case, c in zip(CASES, prepared):
        proc = subprocess.CompletedProcess(c["argv"], codes[c["name"]], Path(c["out"]).read_text(),
                                           Path(c["err"]).read_text())
        out[case[0]] = (case, Path(c["cwd"]).parent, proc)
    return out


def test_the_table_covers_every_command():
    assert len(CASES) >= 40
    commands = {c[1][0] if c[1][0] != "data" else f"data {c[1][1]}" for c in CASES}
    assert {"train", "tune", "retrain", "multiseed", "hierarchy", "explain", "report", "runs", "predict", "data info",
            "data prepare", "data download", "data generate"} <= commands


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(outcomes, name):
    import mlflow

    (_, argv, _, expected), tmp, proc = outcomes[name]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not any(a in ln for a in ALLOWED)]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("galmorph: error: "), proc.stderr[-3000:]
    assert expected in lines[0], lines[0]
    assert "hunter2" not in proc.stderr + proc.stdout
    assert list((tmp / "cache").rglob("*")) == [], "the cache must stay empty"
    assert [p for p in (tmp / "work").rglob("*") if p.is_file()] == [], "nothing written in the working folder"
    store = tmp / "mlflow.db"
    if store.exists():
        client = mlflow.MlflowClient(f"sqlite:///{store}")
        before = _run_ids(tmp.parent / STORES.get(name, "template.db"))
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id]):
                if run.info.run_id in before:  # made by _files for the case
                    continue
                assert run.info.status == "FAILED", (run.info.run_name, run.info.status)
                reason = run.data.tags.get("failure_reason", "")
                assert reason and "hunter2" not in reason and "hunter2" not in json.dumps(run.data.params)


def _run_ids(store: Path) -> set[str]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{store}")
    return {r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
