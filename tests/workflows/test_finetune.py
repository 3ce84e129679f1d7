"""Fine-tuning (`--init-from`, `--freeze conv`), both backends: a tiny logged source run, runs
started from it (by registered alias, runs:/ URI and run id), and the settings that do not fit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, child_env, make_h5, run_python

NET = ["--width", "0.25", "--dense-units", "32", "--batch-size", "32", "--threads", "1", "--seed", "3"]
SYNTH = ["--synthetic-n", "160"]
QUIET = ("INFO mlflow.", "INFO alembic.")  # MLflow's start-up lines


def _train(env, *args):
    return subprocess.run([sys.executable, "-m", "galmorph", "train", "--experiment", "ft", *NET, *args],
                          capture_output=True, text=True, env=child_env(env), cwd=REPO, timeout=600)


def _weights(backend: str, uri: str, env: dict) -> dict:
    """{tensor name: (layer kind, flat values)} of the model logged at uri, from a fresh process."""
    code = f"""
import json
from galmorph.workflows.explain import backend_module
m = backend_module({backend!r}).load_logged_model({uri!r})
out = {{}}
if {backend!r} == "keras":
    for layer in m.layers:
        for i, w in enumerate(layer.get_weights()):
            out[f"{{layer.name}}/{{i}}"] = [type(layer).__name__, w.ravel().tolist()]
else:
    for key, t in m.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            mod = m.body[int(key.split(".")[1])]
            out[key] = [type(mod).__name__, t.detach().cpu().numpy().ravel().tolist()]
print("WEIGHTS" + json.dumps(out))
"""
    proc = run_python(code, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("WEIGHTS"))
    return json.loads(line[len("WEIGHTS"):])


def _kind(cls: str) -> str:
    return {"Conv2D": "conv", "Conv2d": "conv", "BatchNormalization": "bn", "BatchNorm2d": "bn",
            "FrozenBatchNorm2d": "bn"}.get(cls, "dense")


def _snapshot(client, run_id):
    run = client.get_run(run_id)
    return (run.info.status, run.data.params, run.data.tags, run.data.metrics,
            sorted(a.path for a in client.list_artifacts(run_id)))


@pytest.fixture(scope="module", params=["torch", "keras"])
def ft(request, tmp_path_factory):
    import mlflow

    backend = request.param
    tmp = tmp_path_factory.mktemp(f"ft-{backend}")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "GALMORPH_CACHE": str(tmp / "cache")}
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    client.search_experiments()  # the schema, before two processes share the store
    five = make_h5(tmp / "five.h5", n=100, size=69, n_classes=5)
    # the source registers itself (--register-as, --alias): the conv case starts from models:/src@champ
    src = _train(env, "--backend", backend, *SYNTH, "--epochs", "2", "--run-name", "source",
                 "--register-as", "src", "--alias", "champ")
    assert src.returncode == 0, src.stderr[-3000:]
    source = client.search_runs([client.get_experiment_by_name("ft").experiment_id])[0]
    sid, suri = source.info.run_id, source.data.tags["model_uri"]
    before = _snapshot(client, sid)
    b = ["--backend", backend]
    cases = {
        "conv": b + ["--dataset", str(five), "--epochs", "1", "--init-from", "models:/src@champ", "--freeze", "conv"],
        "tiny_lr": b + SYNTH + ["--epochs", "1", "--learning-rate", "1e-9", "--init-from", f"runs:/{sid}/model"],
        "classes": b + ["--dataset", str(five), "--init-from", sid],
        "width": b + SYNTH + ["--width", "0.5", "--init-from", sid],
        "backend": ["--backend", "keras" if backend == "torch" else "torch"] + SYNTH + ["--init-from", sid],
        "unknown_run": b + SYNTH + ["--init-from", "0123456789abcdef"],
        "unknown_model": b + SYNTH + ["--init-from", "models:/nope/3"],
    }
    # one at a time: two processes opening the model registry of one SQLite file at once can
    # find it locked (MLflow's TEMPORARILY_UNAVAILABLE)
    procs = {k: _train(env, *argv, "--run-name", k) for k, argv in cases.items()}
    runs = {r.data.tags["mlflow.runName"]: r for r in client.search_runs(
        [client.get_experiment_by_name("ft").experiment_id])}
    return {"backend": backend, "env": env, "client": client, "procs": procs, "runs": runs, "sid": sid,
            "suri": suri, "before": before, "source_proc": src}


def test_the_source_registered_itself_with_its_test_metrics(ft):
    """--register-as src --alias champ: version 1 of src is the run's logged model, tagged with
    its test metrics and described; the alias points at it; the run says which version it became."""
    client, source = ft["client"], ft["runs"]["source"]
    version = client.get_model_version_by_alias("src", "champ")
    assert str(version.version) == "1" and version.run_id == ft["sid"] and version.source == ft["suri"]
    assert float(version.tags["test_accuracy"]) == pytest.approx(source.data.metrics["test_accuracy"], abs=1e-5)
    assert {"test_balanced_accuracy", "test_macro_f1", "galmorph.source_run"} <= set(version.tags)
    assert version.description.startswith(f"galmorph c2, width 0.25 trained with {ft['backend']} on synthetic")
    assert f"test accuracy {source.data.metrics['test_accuracy']:.4f}" in version.description
    assert source.data.tags["registered_model_name"] == "src"
    assert source.data.tags["registered_model_version"] == "1" and source.data.tags["registered_model_alias"] == "champ"
    assert "registered models:/src/1 = models:/src@champ" in ft["source_proc"].stdout


def test_freeze_conv_keeps_the_source_convolutions_and_trains_a_new_output_layer(ft):
    proc, run = ft["procs"]["conv"], ft["runs"]["conv"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["init_from"] == ft["suri"] and tags["init_from_run"] == ft["sid"]
    assert tags["init_output"] == "reinitialised"
    assert run.data.params["init_from"] == "models:/src@champ" and run.data.params["freeze"] == "conv"
    assert run.data.params["init_from_run_id"] == ft["sid"]
    notes = [ln for ln in proc.stderr.splitlines() if "output layer re-initialised" in ln]
    assert len(notes) == 1 and "(4 -> 5 classes)" in notes[0], proc.stderr[-3000:]
    src, new = _weights(ft["backend"], ft["suri"], ft["env"]), _weights(ft["backend"], tags["model_uri"], ft["env"])
    assert list(src) == list(new)
    kinds = {name: _kind(cls) for name, (cls, _) in new.items()}
    frozen = [n for n in new if kinds[n] in ("conv", "bn")]
    head = [n for n in new if kinds[n] == "dense"]
    assert frozen and len(head) >= 4  # hidden dense layers and the output layer, kernels and biases
    for name in frozen:  # convolutions and batch normalisation (running statistics too): bit-identical
        assert new[name][1] == src[name][1], name
    for name in head[:-2]:  # the hidden dense layers started from the source's and trained
        assert len(new[name][1]) == len(src[name][1]) and new[name][1] != src[name][1], name
    assert len(new[head[-2]][1]) == 5 * len(src[head[-2]][1]) // 4  # the output layer: 5 classes now
    assert run.data.metrics["trainable_params"] < float(ft["runs"]["source"].data.metrics["trainable_params"])


def test_fine_tuning_starts_from_the_source_weights(ft):
    """With a learning rate of 1e-9 the run is its source: same weights, same validation loss."""
    proc, run = ft["procs"]["tiny_lr"], ft["runs"]["tiny_lr"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run.data.tags["init_from"] == f"runs:/{ft['sid']}/model" and run.data.tags["init_output"] == "loaded"
    assert "re-initialised" not in proc.stderr
    src, new = _weights(ft["backend"], ft["suri"], ft["env"]), _weights(ft["backend"], run.data.tags["model_uri"],
                                                                         ft["env"])
    for name, (cls, values) in new.items():
        if "running" in name or "moving" in name or _kind(cls) == "bn" and name.endswith(("/2", "/3")):
            continue  # batch statistics move with the data whatever the learning rate
        assert max(abs(a - b) for a, b in zip(values, src[name][1])) < 1e-6, name
    first = ft["client"].get_metric_history(run.info.run_id, "val_loss")[0].value
    source_val = [m.value for m in ft["client"].get_metric_history(ft["sid"], "val_loss")]
    assert abs(first - source_val[-1]) < 0.05, (first, source_val)


@pytest.mark.parametrize("case, expected", [
    ("classes", "this run builds c2 (63x63x3 -> 5 classes"),
    ("width", "the networks differ"),
    ("backend", "pass --backend"),
    ("unknown_run", "no MLflow run '0123456789abcdef'"),
    ("unknown_model", "models:/nope/3: no such registered model version"),
])
def test_what_does_not_fit_is_one_line_and_leaves_the_source_alone(ft, case, expected):
    proc = ft["procs"][case]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not any(q in ln for q in QUIET)]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("galmorph: error: --init-from "), proc.stderr[-3000:]
    assert expected in lines[0], lines[0]
    if case in ("classes", "width"):
        assert f"--init-from run {ft['sid']} is c2 (63x63x3 -> 4 classes" in lines[0]
    run = ft["runs"][case]
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] in lines[0]
    assert "init_from" not in run.data.tags
    assert _snapshot(ft["client"], ft["sid"]) == ft["before"]


def test_freeze_needs_a_model_to_start_from():
    from galmorph.config import TrainConfig
    from galmorph.core.errors import GalmorphError

    with pytest.raises(GalmorphError, match="freeze conv needs init_from"):
        TrainConfig(freeze="conv").validate()
    with pytest.raises(GalmorphError, match="unknown freeze"):
        TrainConfig(init_from="x", freeze="all").validate()
    with pytest.raises(GalmorphError, match="one device"):
        TrainConfig(init_from="x", devices=2, batch_size=64).validate()
