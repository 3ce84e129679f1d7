"""A multiseed group's ensemble (galmorph.workflows.ensemble): the seeds share one split, the
parent logs the ensemble's test metrics beside the members' mean and std, and its logged
model (members' networks copied in) gives, from the raw test images, the probabilities its
metrics were computed from."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, child_env, run_python

TINY = ["--backend", "torch", "--synthetic-n", "160", "--epochs", "1", "--width", "0.25", "--dense-units", "32",
        "--batch-size", "32", "--threads", "1", "--quiet", "true"]


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    import mlflow

    tmp = tmp_path_factory.mktemp("ensemble")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, "-m", "galmorph", "multiseed", "--experiment", "ens", "--seeds", "2", *TINY],
                          capture_output=True, text=True, env=child_env(env), cwd=REPO, timeout=600)
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("ens").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("galmorph.kind") == "multiseed")
    children = sorted((r for r in runs if r.info.run_id != parent.info.run_id), key=lambda r: int(r.data.params["seed"]))
    return {"proc": proc, "parent": parent, "children": children, "client": client, "env": env, "tmp": tmp}


@pytest.mark.slow
def test_parent_logs_the_ensemble_beside_the_members(group):
    proc, parent, children, client = group["proc"], group["parent"], group["children"], group["client"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Downloading artifacts" not in proc.stderr
    m = parent.data.metrics
    for key in ("accuracy", "balanced_accuracy", "ece", "log_loss", "macro_f1"):
        assert 0 <= m[f"ensemble_test_{key}"] < 10, key
    for key in ("test_accuracy", "test_balanced_accuracy", "test_ece"):
        assert f"{key}_mean" in m and f"{key}_std" in m
    assert m["ensemble_members"] == 2
    splits = [json.load(open(client.download_artifacts(c.info.run_id, "splits.json", str(group["tmp"] / c.info.run_id))))
              for c in children]
    assert splits[0]["rows"] == splits[1]["rows"]  # one split: the same test galaxies, none trained on
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"ensemble_predictions.csv", "ensemble_reliability_diagram.png"} <= names


@pytest.mark.slow
def test_ensemble_model_predicts_from_raw_images_what_the_parent_measured(group):
    parent, client = group["parent"], group["client"]
    frame = client.download_artifacts(parent.info.run_id, "ensemble_predictions.csv", str(group["tmp"] / "p"))
    config = client.download_artifacts(group["children"][0].info.run_id, "config.yaml", str(group["tmp"] / "c"))
    code = f"""
import json, numpy as np, pandas as pd, yaml
from galmorph.config import TrainConfig
from galmorph.inference.model import load
from galmorph.workflows.prepare import prepare
cfg = yaml.safe_load(open({config!r})); cfg.pop("resolved")
prep = prepare(TrainConfig(**cfg))
x = prep.data.images[np.sort(prep.split.test)]  # ensemble_predictions.csv is in file-row order
want = pd.read_csv({frame!r})
model = load({parent.info.run_id!r})
got = model.predict(x)
table = model.table(got)
p_cols = [c for c in want.columns if c.startswith("p_") and not c.endswith("_std")]
print(json.dumps({{"kind": model.info.kind, "members": list(model.info.members),
                   "proba": float(np.abs(got.proba - want[p_cols].to_numpy()).max()),
                   "std": float(np.abs(got.std - want[[c + "_std" for c in p_cols]].to_numpy()).max()),
                   "accuracy": float(np.mean(table["predicted"].to_numpy() == want["true"].to_numpy())),
                   "columns": list(table.columns)}}))
"""
    proc = run_python(code, env=group["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["kind"] == "ensemble" and out["members"] == [c.info.run_id for c in group["children"]]
    assert out["proba"] < 1e-5 and out["std"] < 1e-5
    assert out["accuracy"] == pytest.approx(parent.data.metrics["ensemble_test_accuracy"])
    assert out["columns"][-4:] == ["p_E_std", "p_S0_std", "p_Sp_std", "p_Irr_std"]
