"""Reproducing the paper: pair and hierarchical schemes, the T-type mapping, multi-seed runs,
feature maps and Grad-CAM in both backends, the nair2010 preparation as an MLflow run, and
the report built from real MLflow runs made here (tiny synthetic data, one framework per
process)."""

from __future__ import annotations

import html
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, child_env, make_h5, run_python

from galmorph.config import TrainConfig
from galmorph.core.errors import GalmorphError
from galmorph.data import nair2010, schemes
from galmorph.workflows import hierarchy, multiseed, report

TINY = ["--dataset", "synthetic", "--synthetic-n", "120", "--epochs", "2", "--batch-size", "32", "--threads", "1",
        "--experiment", "repro"]
SYNTHETIC = ("E", "S0", "Sp", "Irr")


# ------------------------------------------------------------------------------ schemes
def test_pair_schemes_are_derived_from_the_base_scheme():
    s = schemes.get("synthetic", "4way:E-vs-Sp", SYNTHETIC)
    assert s.name == "4way:E-vs-Sp" and s.class_names == ("E", "Sp")
    assert s.native_to_class == {0: 0, 2: 1}
    keep, labels = s.apply(np.array([0, 1, 2, 3, 2, 0]))
    assert keep.tolist() == [True, False, True, False, True, True] and labels.tolist() == [0, 1, 1, 0]
    # `pair:` and `default:` mean the dataset's default scheme; names resolve to it
    assert schemes.get("synthetic", "pair:Sp-vs-Irr", SYNTHETIC).name == "4way:Sp-vs-Irr"
    assert schemes.get("synthetic", "default:E-vs-S0", SYNTHETIC).name == "4way:E-vs-S0"
    # over another base: galaxy10's PHYS449 3-way (native labels 0, 7, 8, 9 are its Sp)
    g = schemes.get("galaxy10", "phys449_3way:E-vs-Sp", tuple(f"c{i}" for i in range(10)))
    assert g.native_to_class == {1: 0, 2: 0, 3: 0, 0: 1, 7: 1, 8: 1, 9: 1}


def test_all_six_pairs_of_a_four_way_scheme_are_listed():
    names = schemes.names("synthetic")
    pairs = [n for n in names if ":" in n]
    assert pairs == ["4way:E-vs-S0", "4way:E-vs-Sp", "4way:E-vs-Irr", "4way:S0-vs-Sp", "4way:S0-vs-Irr", "4way:Sp-vs-Irr"]
    assert "4way:Sp-vs-Irr+Misc" in schemes.names("nair2010")
    for name in pairs:  # every listed name resolves
        assert schemes.get("synthetic", name, SYNTHETIC).n_classes == 2


def test_merged_groups_make_hierarchy_nodes():
    s = schemes.get("nair2010", "4way:E/S0-vs-Sp/Irr+Misc", nair2010.CLASS_NAMES)
    assert s.class_names == ("E/S0", "Sp/Irr+Misc")
    assert s.native_to_class == {0: 0, 1: 0, 2: 1, 3: 1}


@pytest.mark.parametrize("name, word", [
    ("4way:E-vs-X", "'X' is not in the base scheme"),
    ("4way:E-vs-E", "in two groups"),
    ("4way:E", "at least two groups"),
    ("4way:E-vs-", "is empty"),
    ("nope:E-vs-Sp", "unknown scheme 'nope'"),
])
def test_bad_derived_schemes_are_one_line_errors(name, word):
    with pytest.raises(GalmorphError, match=word):
        schemes.get("synthetic", name, SYNTHETIC)


def test_a_pair_scheme_loads_only_its_two_classes(tmp_path):
    from galmorph.data import registry

    path = make_h5(tmp_path / "three.h5", n=30, n_classes=3)
    data = registry.load(str(path), "native:k0-vs-k2")
    assert data.class_names == ("k0", "k2") and data.scheme == "native:k0-vs-k2"
    assert sorted(set(data.labels.tolist())) == [0, 1] and len(data) == 20
    assert (data.rows % 3 != 1).all()  # class k1 (every third row from 1) is dropped


# ------------------------------------------------------------------------------ T-types
def test_ttype_mapping_and_the_paper_schemes():
    """REFERENCE.md 1: -5 E; -3..0 S0; 1..9 Sp; 10, 99 and anything else Irr+Misc."""
    ttypes = np.array([-5, -3, -2, -1, 0, 1, 4, 9, 10, 99, -4, 11, np.nan])
    classes = nair2010.ttype_to_class(ttypes)
    assert classes.tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
    four = schemes.get("nair2010", "4way", nair2010.CLASS_NAMES)
    three = schemes.get("nair2010", "3way", nair2010.CLASS_NAMES)
    assert four.class_names == ("E", "S0", "Sp", "Irr+Misc") and three.class_names == ("E", "S0", "Sp")
    keep, labels = three.apply(classes)
    assert keep.tolist() == [True] * 8 + [False] * 5  # the 3-way scheme drops Irr+Misc
    keep, labels = schemes.get("nair2010", "pair:E-vs-Sp", nair2010.CLASS_NAMES).apply(classes)
    assert np.flatnonzero(keep).tolist() == [0, 5, 6, 7] and labels.tolist() == [0, 1, 1, 1]


# ------------------------------------------------------------------------------ hierarchy
def test_hierarchy_tree_resolves_aliases_and_names_node_schemes():
    tree = hierarchy.entry("early_late_4way")["tree"]
    nodes = hierarchy.nodes(tree, nair2010.CLASS_NAMES, "4way", hierarchy.catalogue()["aliases"])
    assert [(n.id, n.scheme) for n in nodes] == [
        ("root", "4way:E/S0-vs-Sp/Irr+Misc"), ("root.0", "4way:E-vs-S0"), ("root.1", "4way:Sp-vs-Irr+Misc")]
    for n in nodes:  # every node scheme is a valid derived scheme
        assert schemes.get("nair2010", n.scheme, nair2010.CLASS_NAMES).class_names == n.class_names
    assert hierarchy.base_scheme("early_late_3way", "galaxy10") == "phys449_3way"
    with pytest.raises(GalmorphError, match="must name every class"):
        hierarchy.nodes([["E", "S0"], "Sp"], SYNTHETIC, "4way")
    with pytest.raises(GalmorphError, match="unknown hierarchy"):
        hierarchy.entry("aliases")


def test_hierarchy_combines_node_probabilities_along_the_paths():
    nodes = hierarchy.nodes([["E", "S0"], "Sp"], ("E", "S0", "Sp"), "3way")
    proba = {"root": np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45]]),
             "root.0": np.array([[0.3, 0.7], [0.5, 0.5], [0.4, 0.6]])}
    p = hierarchy.combine(("E", "S0", "Sp"), nodes, proba)
    np.testing.assert_allclose(p, [[0.27, 0.63, 0.1], [0.1, 0.1, 0.8], [0.22, 0.33, 0.45]], atol=1e-6)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    # greedy: root says E/S0 for galaxy 2 (0.55), then S0; the product says Sp (0.45 > 0.33)
    assert hierarchy.greedy(("E", "S0", "Sp"), nodes, proba).tolist() == [1, 2, 1]
    assert p.argmax(axis=1).tolist() == [1, 2, 2]


def test_node_data_keeps_the_flat_split(tmp_path):
    """A node trains on its classes only, and its test galaxies are the flat test galaxies."""
    from galmorph.workflows.prepare import prepare

    path = make_h5(tmp_path / "four.h5", n=80, n_classes=4, class_names=list(SYNTHETIC))
    base = prepare(TrainConfig(dataset=str(path), seed=3))
    node = hierarchy.nodes([["E", "S0"], ["Sp", "Irr"]], base.data.class_names, "native")[2]
    sub = hierarchy.node_prepared(base, node)
    assert sub.data.class_names == ("Sp", "Irr") and sub.data.scheme == "native:Sp-vs-Irr"
    for part in ("train", "val", "test"):
        base_rows = set(base.data.rows[base.split[part]].tolist())
        rows = sub.data.rows[sub.split[part]]
        assert set(rows.tolist()) == {r for r in base_rows if r % 4 in (2, 3)}
    np.testing.assert_array_equal(sub.data.labels, (sub.data.rows % 4 == 3).astype(int))
    assert sub.maker.input_shape == base.maker.input_shape


# ------------------------------------------------------------------------------ multiseed
def test_aggregate_is_mean_and_sample_std_of_shared_metrics():
    runs = [{"test_accuracy": 0.5, "fit_time_s": 2.0, "only_here": 1.0}, {"test_accuracy": 0.7, "fit_time_s": 4.0},
            {"test_accuracy": 0.9, "fit_time_s": 6.0}]
    agg = multiseed.aggregate(runs)
    assert agg["n_seeds"] == 3
    assert agg["test_accuracy_mean"] == pytest.approx(0.7)
    assert agg["test_accuracy_std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert agg["fit_time_s_std"] == pytest.approx(2.0)
    assert "only_here_mean" not in agg
    one = multiseed.aggregate([{"test_accuracy": 0.6}])
    assert one["test_accuracy_std"] == 0.0
    with pytest.raises(GalmorphError):
        multiseed.aggregate([])


def test_seed_lists():
    assert multiseed.parse_seeds("3") == [0, 1, 2]
    assert multiseed.parse_seeds("3", first=5) == [5, 6, 7]
    assert multiseed.parse_seeds("0,4,9") == [0, 4, 9]
    for bad in ("0", "a", "1,1", "-1,2"):
        with pytest.raises(GalmorphError):
            multiseed.parse_seeds(bad)


# ------------------------------------------------------------------------------ MLproject
def _entry_points():
    return yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]


def test_reproduction_entry_points_take_every_training_parameter():
    eps = _entry_points()
    # presettable settings are undeclared, passed by mlflow run only when given (galmorph.presets)
    train = {f.name for f in fields(TrainConfig) if f.metadata.get("mlproject") and not f.metadata.get("preset")
             and f.name not in ("model", "backend")}
    for name, extra in (("multiseed", {"model", "backend", "seeds", "ensemble"}),
                        ("pairs", {"model", "backend", "seeds", "ensemble"}),
                        ("hierarchical", {"model", "backend", "seeds", "tree"})):
        params, command = eps[name]["parameters"], eps[name]["command"]
        # a hierarchy's scheme comes from its tree: it takes no `scheme` parameter at all; it is
        # several networks, so there is no one model to register
        expected = (train - ({"scheme", "register_as", "alias"} if name == "hierarchical" else set())) | extra
        assert set(params) == expected, name
        for key in expected:
            assert f"--{key.replace('_', '-')} {{{key}}}" in command, (name, key)
        for key, spec in params.items():
            assert spec["type"] in ("string", "float") and "default" in spec, (name, key)
    assert "--schemes pairs:{scheme}" in eps["pairs"]["command"]
    assert "--scheme {scheme}" not in eps["hierarchical"]["command"]
    for name in ("prepare_nair2010", "report", "explain"):
        for key in eps[name]["parameters"]:
            assert f"{{{key}}}" in eps[name]["command"], (name, key)


def test_cli_flags_of_the_entry_points_exist():
    from galmorph.cli import build_parser

    parser = build_parser()
    parser.parse_args(["data", "prepare", "nair2010", "--out", "x.h5", "--cache-dir", "c", "--cutout-url", "http://h/c",
                       "--vizier-server", "http://h", "--workers", "2", "--max-rate", "3", "--retries", "1",
                       "--timeout", "5", "--limit", "10", "--quiet"])
    parser.parse_args(["multiseed", "--seeds", "0,1", "--schemes", "pairs:4way", "--explain", "true"])
    parser.parse_args(["hierarchy", "--tree", "early_late_3way", "--seeds", "2"])
    parser.parse_args(["report", "--experiments", "a,b", "--filter", "tags.backend = 'torch'", "--output", "o"])
    parser.parse_args(["explain", "--run-id", "abc", "--per-class", "2"])


def test_reproduction_modules_load_no_framework():
    code = ("import sys, galmorph.workflows.report, galmorph.workflows.multiseed, galmorph.workflows.hierarchy, galmorph.workflows.explain\n"
            "print([m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules])")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------ explain
_KERAS_EXPLAIN = """
import json, sys, numpy as np, keras
from galmorph import backends
from galmorph.core import specs
from galmorph.workflows import explain
b = backends.get("keras"); b.setup(0, 1)
bx = explain.backend_module("keras")
spec = specs.resolve("c2", (63, 63, 1), 3, dense_units=32)
m = b.build(spec)
rng = np.random.default_rng(0)
for layer in m.layers:  # random BN statistics, so every kind of weight crosses over
    if isinstance(layer, keras.layers.BatchNormalization):
        g, beta, mu, var = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, beta.shape),
                           rng.normal(0, 0.1, mu.shape), rng.uniform(0.5, 1.5, var.shape)])
x = rng.random((4, 63, 63, 1), dtype=np.float32)
x[:, 24:40, 24:40] += 1.0
proba = b.predict_proba(m, [x])
cls = proba.argmax(1)
act, grad = bx.conv_gradients(m, x, cls)
np.savez(sys.argv[1], x=x, cls=cls, proba=proba, fm0=bx.feature_maps(m, x, 0), fm1=bx.feature_maps(m, x, 1),
         act=act, grad=grad, cam=explain.grad_cam(bx, m, x, cls), weights=np.array(m.get_weights(), dtype=object))
"""

_TORCH_EXPLAIN = """
import json, sys, numpy as np, torch
from torch import nn
from galmorph import backends
from galmorph.core import specs
from galmorph.workflows import explain
b = backends.get("torch"); b.setup(0, 1)
bx = explain.backend_module("torch")
ref = np.load(sys.argv[1], allow_pickle=True)
net = b.build(specs.resolve("c2", (63, 63, 1), 3, dense_units=32))
weights = iter(ref["weights"])
with torch.no_grad():  # Keras order and layouts -> PyTorch
    for mod in net.body:
        if isinstance(mod, nn.Conv2d):
            mod.weight.copy_(torch.from_numpy(next(weights).transpose(3, 2, 0, 1).copy()))
            mod.bias.copy_(torch.from_numpy(next(weights)))
        elif isinstance(mod, nn.BatchNorm2d):
            for t in (mod.weight, mod.bias, mod.running_mean, mod.running_var):
                t.copy_(torch.from_numpy(next(weights)))
        elif isinstance(mod, nn.Linear):
            mod.weight.copy_(torch.from_numpy(next(weights).T.copy())); mod.bias.copy_(torch.from_numpy(next(weights)))
x, cls = ref["x"], ref["cls"]
act, grad = bx.conv_gradients(net, x, cls)
got = {"proba": b.predict_proba(net, [x]), "fm0": bx.feature_maps(net, x, 0), "fm1": bx.feature_maps(net, x, 1),
       "act": act, "grad": grad, "cam": explain.grad_cam(bx, net, x, cls)}
out = {}
for k, v in got.items():
    want = ref[k]
    out[k] = {"shape": list(v.shape), "want_shape": list(want.shape), "finite": bool(np.isfinite(v).all()),
              "rel": float(np.abs(v - want).max() / max(float(np.abs(want).max()), 1e-12)),
              "min": float(v.min()), "max": float(v.max())}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_feature_maps_and_grad_cam_agree_across_backends(tmp_path):
    """The same weights give the same feature maps, gradients and Grad-CAM in Keras and PyTorch."""
    ref = tmp_path / "keras.npz"
    proc = run_python(_KERAS_EXPLAIN.replace("sys.argv[1]", repr(str(ref))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_python(_TORCH_EXPLAIN.replace("sys.argv[1]", repr(str(ref))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fm0"]["shape"] == [4, 57, 57, 32] and out["fm1"]["shape"] == [4, 24, 24, 64]
    assert out["act"]["shape"] == out["grad"]["shape"] == [4, 8, 8, 128]
    assert out["cam"]["shape"] == [4, 63, 63]
    for key, o in out.items():
        assert o["shape"] == o["want_shape"] and o["finite"], key
        assert o["rel"] < 2e-3, (key, o["rel"])
    assert out["cam"]["min"] >= 0.0 and out["cam"]["max"] <= 1.0
    assert out["fm0"]["min"] >= 0.0  # taken after the ReLU in both


def test_grad_cam_arithmetic():
    """Weights = mean gradient per channel; ReLU of the weighted sum; upsampled; scaled to [0, 1]."""
    from galmorph.workflows import explain

    class Fake:
        @staticmethod
        def conv_gradients(model, x, class_index, layer_index=-1):
            act = np.zeros((2, 4, 4, 2), np.float32)
            act[0, 1:3, 1:3, 0] = 2.0  # channel 0 lights up the centre
            act[0, 0, 0, 1] = 5.0  # channel 1 a corner, but its gradient is negative
            grad = np.zeros_like(act)
            grad[0, ..., 0], grad[0, ..., 1] = 1.0, -1.0
            return act, grad

    cam = explain.grad_cam(Fake, None, np.zeros((2, 16, 16, 1), np.float32), 0)
    assert cam.shape == (2, 16, 16) and cam.max() == pytest.approx(1.0)
    assert cam[0, 0, 0] == 0.0 and cam[0, 7:9, 7:9].min() == pytest.approx(1.0)
    assert explain.centre_fraction(cam)[0] > 0.7  # the centre block, blurred a little by the upsampling
    assert not cam[1].any()  # nothing speaks for the class: all zeros, not NaN
    labels = np.array([0, 1, 0, 1, 2, 0])
    chosen = explain.choose(labels, np.arange(6), 2, seed=1)
    assert np.bincount(labels[chosen]).tolist() == [2, 2, 1]  # up to 2 per class, grouped by class
    assert labels[chosen].tolist() == sorted(labels[chosen].tolist())


# ------------------------------------------------------------------------------ real runs
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Tiny real runs in one SQLite store: torch (multi-seed with --explain, a hierarchy, two
    pairs) and keras (multi-seed) in parallel processes, then `galmorph explain --run-id`."""
    import mlflow

    tmp = tmp_path_factory.mktemp("reproduce")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.search_experiments()  # create the schema before two processes share the store
    torch_code = (
        "from galmorph.cli import main\n"
        f"tiny = {TINY!r}\n"
        "assert main(['multiseed', '--backend', 'torch', *tiny, '--seeds', '2', '--explain', 'true',"
        " '--log-model', 'false']) == 0\n"
        "assert main(['hierarchy', '--backend', 'torch', *tiny, '--tree', 'early_late_4way', '--log-model', 'false']) == 0\n"
        "assert main(['multiseed', '--backend', 'torch', *tiny, '--seeds', '1', '--schemes', '4way:E-vs-Sp,4way:Sp-vs-Irr',"
        " '--log-model', 'true']) == 0\n"
    )
    keras_code = ("from galmorph.cli import main\n"
                  f"assert main(['multiseed', '--backend', 'keras', *{TINY!r}, '--seeds', '2']) == 0\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=child_env(env),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for code in (torch_code, keras_code)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    exp = client.get_experiment_by_name("repro")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    keras_child = next(r for r in runs if r.data.tags.get("backend") == "keras" and "galmorph.parent" in r.data.tags
                       and r.data.params.get("seed") == "0")
    # each backend's logged model, reloaded from the store as a user would (`galmorph explain`)
    torch_pair = next(r for r in runs if r.data.tags.get("backend") == "torch" and r.data.tags.get("scheme") == "4way:E-vs-Sp"
                      and "model_uri" in r.data.tags)
    for run in (keras_child, torch_pair):
        proc = subprocess.run([sys.executable, "-m", "galmorph", "explain", "--run-id", run.info.run_id,
                               "--per-class", "2"], cwd=REPO, env=child_env(env), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs = client.search_runs([exp.experiment_id], max_results=500)
    return {"client": client, "uri": uri, "runs": runs, "tmp": tmp, "exp": exp, "keras_child": keras_child.info.run_id,
            "torch_pair": torch_pair.info.run_id}


def _by(runs, **tags):
    return [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]


@pytest.mark.slow
def test_multiseed_parent_logs_mean_and_std_of_its_children(store):
    runs = store["runs"]
    (parent,) = _by(runs, backend="torch", **{"galmorph.kind": "multiseed", "scheme": "4way"})
    children = _by(runs, **{"galmorph.parent": parent.info.run_id})
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in children)
    assert parent.data.metrics["n_seeds"] == 2
    for key in ("test_accuracy", "test_macro_f1", "test_recall_E", "test_log_loss", "steady_epoch_time_s"):
        values = [r.data.metrics[key] for r in children]
        assert parent.data.metrics[f"{key}_mean"] == pytest.approx(np.mean(values)), key
        assert parent.data.metrics[f"{key}_std"] == pytest.approx(np.std(values, ddof=1)), key
    artifacts = {a.path for a in store["client"].list_artifacts(parent.info.run_id)}
    assert {"seeds.csv", "multiseed.json"} <= artifacts
    table = __import__("pandas").read_csv(store["client"].download_artifacts(
        parent.info.run_id, "seeds.csv", str(store["tmp"] / "seeds")))
    assert dict(zip(table["seed"], table["run_id"])) == {int(r.data.params["seed"]): r.info.run_id for r in children}
    # the two seeds trained on the same data (and, for their ensemble, on one split)
    assert parent.data.metrics["ensemble_members"] == 2 and "ensemble_test_accuracy" in parent.data.metrics
    digests = {r.data.params["dataset_digest"] for r in children}
    assert len(digests) == 1


@pytest.mark.slow
def test_explain_artifacts_from_training_and_from_a_logged_model(store):
    client = store["client"]
    torch_child = next(r for r in _by(store["runs"], backend="torch", scheme="4way") if "galmorph.parent" in r.data.tags)
    # from training (--explain true), and from each backend's logged model (`galmorph explain`)
    for run_id, n, classes in ((torch_child.info.run_id, 3, set(SYNTHETIC)), (store["keras_child"], 2, set(SYNTHETIC)),
                               (store["torch_pair"], 2, {"E", "Sp"})):
        names = {Path(a.path).name for a in client.list_artifacts(run_id, "explain")}
        assert {"feature_maps_conv1.png", "feature_maps_conv2.png", "grad_cam.png", "explain.json", "explain.npz"} <= names
        folder = client.download_artifacts(run_id, "explain", str(store["tmp"] / f"explain-{run_id}"))
        doc = json.loads((Path(folder) / "explain.json").read_text())
        assert doc["feature_map_shapes"]["conv1"] == [57, 57, 32]
        assert {g["true"] for g in doc["galaxies"]} == classes
        assert max(sum(g["true"] == c for g in doc["galaxies"]) for c in classes) == n
        cams = np.load(Path(folder) / "explain.npz")["grad_cam"].astype(float)
        assert cams.shape[1:] == (63, 63) and np.isfinite(cams).all()
        assert cams.min() >= 0 and cams.max() <= 1.001
        assert all(m == 0 or abs(m - 1) < 1e-2 for m in cams.reshape(len(cams), -1).max(axis=1))
        assert 0 <= client.get_run(run_id).data.metrics["explain_saliency_centre_fraction"] <= 1


@pytest.mark.slow
def test_hierarchy_trains_one_network_per_node_on_the_flat_split(store):
    client, runs = store["client"], store["runs"]
    (parent,) = _by(runs, **{"galmorph.kind": "hierarchy"})
    assert parent.data.tags["scheme"] == "hierarchy:early_late_4way" and parent.data.tags["base_scheme"] == "4way"
    nodes = _by(runs, **{"galmorph.parent": parent.info.run_id})
    assert sorted(r.data.tags["scheme"] for r in nodes) == ["4way:E-vs-S0", "4way:E/S0-vs-Sp/Irr", "4way:Sp-vs-Irr"]
    assert all(r.data.tags["galmorph.role"] == "hierarchy_node" for r in nodes)
    tmp = store["tmp"] / "hier"
    doc = json.loads(Path(client.download_artifacts(parent.info.run_id, "hierarchy.json", str(tmp))).read_text())
    assert {n["run_id"]: n["scheme"] for n in doc["nodes"]} == {r.info.run_id: r.data.tags["scheme"] for r in nodes}
    flat = json.loads(Path(client.download_artifacts(parent.info.run_id, "splits.json", str(tmp))).read_text())
    for node in nodes:
        path = client.download_artifacts(node.info.run_id, "splits.json", str(tmp / node.info.run_id))
        split = json.loads(Path(path).read_text())
        for part in ("train", "val", "test"):
            assert set(split["rows"][part]) <= set(flat["rows"][part]), part
    pred = __import__("pandas").read_csv(client.download_artifacts(parent.info.run_id, "predictions.csv", str(tmp)))
    p = pred[[c for c in pred.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-4)
    assert len(pred) == len(flat["rows"]["test"])
    assert parent.data.metrics["test_accuracy"] == pytest.approx(pred["correct"].mean())


def test_report_renderers_escape_user_text(tmp_path):
    """Run, dataset and class names and filters come from users: report.html shows them as
    text, and so does report.md in a Markdown viewer; the report's own code and bold survive."""
    evil = "<script>alert(1)</script>"
    fig = tmp_path / "figures" / "cm.png"
    fig.parent.mkdir()
    fig.write_bytes(b"\x89PNG")
    blocks = [("h1", f"report {evil}"),
              ("p", f"filter `tags.dataset = '{evil}'`, **paper**: Nair & Abraham; \\`{evil}` ``{evil}` &lt;b&gt;"),
              ("table", ["dataset", "run ids"], [[f"set{evil}", "a|b"]]),
              ("images", [(fig, f"c2 torch, {evil}] [x](javascript:1)")])]
    page = report.render.render_html(blocks, evil)
    assert "<script" not in page and "&lt;script&gt;" in page and "<b>paper</b>" in page
    md = report.render.render_markdown(blocks, tmp_path)
    assert "Nair & Abraham" in md and f"`tags.dataset = '{evil}'`" in md  # plain text stays readable
    viewer = pytest.importorskip("markdown_it").MarkdownIt("commonmark").enable("table").render(md)
    assert "<script" not in viewer and f"<code>tags.dataset = '{html.escape(evil, quote=False)}'</code>" in viewer
    assert "<strong>paper</strong>" in viewer and "&amp;lt;b&amp;gt;" in viewer and "<td>a|b</td>" in viewer
    assert viewer.count("<img ") == 1 and 'src="figures/cm.png"' in viewer


@pytest.mark.slow
def test_report_from_real_runs(store, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(store["uri"])
    out = tmp_path / "report"
    paths = report.run(report.ReportConfig(experiments="repro", output=str(out), log_experiment="repro-reports"))
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert paths[:2] == [out / "report.md", out / "report.html"]
    rows = [line for line in md.splitlines() if line.startswith("| synthetic |")]
    accuracy_rows = [r for r in rows if r.count("|") == 14]
    # one row per group: c2 keras/torch 4way (2 seeds each), the hierarchy, the two pairs
    assert len(accuracy_rows) == 5, accuracy_rows
    (parent,) = _by(store["runs"], backend="torch", **{"galmorph.kind": "multiseed", "scheme": "4way"})
    m = parent.data.metrics
    torch_row = next(r for r in accuracy_rows if "| 4way | flat | c2 | torch |" in r)
    assert f"{100 * m['test_accuracy_mean']:.1f} +- {100 * m['test_accuracy_std']:.1f} %" in torch_row
    assert f"| {m['test_ece_mean']:.3f} +- {m['test_ece_std']:.3f} | {m['test_ece_uncalibrated_mean']:.3f} +- " in torch_row
    assert "equal-width confidence bins" in md
    assert "2 (0,1)" in torch_row and "81.0 % (C2 4-way; nair2010)" in torch_row and "88.0 %" in torch_row
    assert "> 98.0 % (binary E vs Sp" in next(r for r in accuracy_rows if "4way:E-vs-Sp" in r)
    assert "78.0 % (binary Sp vs Irr" in next(r for r in accuracy_rows if "4way:Sp-vs-Irr" in r)
    assert "65.0 % (hierarchical 4-way" in next(r for r in accuracy_rows if "hierarchy:early_late_4way" in r)
    for section in ("## Per-class recall", "## Confusion matrices", "## Learning curves", "## Time per epoch per backend",
                    "## Feature maps and Grad-CAM", "## Reference numbers"):
        assert section in md, section
    figures = {p.name for p in (out / "figures").rglob("*.png")}
    assert {"cm-synthetic-4way-c2-keras.png", "cm-synthetic-4way-c2-torch.png", "curves-synthetic-4way.png",
            "timing.png", "grad_cam.png"} <= figures
    for name in figures:  # every figure is referenced, and the HTML embeds them
        assert name in md
    assert page.count("data:image/png;base64,") == md.count("![")
    assert not list(out.rglob("*.tmp"))
    # the report is a run of its own, with the files as artifacts
    client = store["client"]
    (rep,) = client.search_runs([client.get_experiment_by_name("repro-reports").experiment_id])
    assert rep.data.tags["galmorph.kind"] == "report" and rep.data.params["n_runs"] == "7"
    logged = {a.path for a in client.list_artifacts(rep.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/figures"} <= logged
    # filters narrow the runs; errors are one line
    report.run(report.ReportConfig(experiments="repro", filter="tags.backend = 'keras'", output=str(tmp_path / "k"),
                                   log_experiment="repro-reports"))
    assert "| torch |" not in (tmp_path / "k" / "report.md").read_text()
    with pytest.raises(GalmorphError, match="no MLflow experiment named"):
        report.run(report.ReportConfig(experiments="nope", output=str(tmp_path / "n")))
    with pytest.raises(GalmorphError, match="bad run filter"):
        report.run(report.ReportConfig(experiments="repro", filter="tags.x ~~ 1", output=str(tmp_path / "n")))


@pytest.mark.slow
def test_report_entry_point_under_mlflow_run(store, tmp_path):
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "report", "--env-manager", "local",
           "--experiment-name", "repro-reports", "-P", "experiments=repro", "-P", f"output={tmp_path / 'r'}",
           "-P", "filter=tags.dataset = 'synthetic'"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=child_env({"MLFLOW_TRACKING_URI": store["uri"]}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| synthetic | 4way | flat | c2 | keras |" in (tmp_path / "r" / "report.md").read_text()
    client = store["client"]
    runs = client.search_runs([client.get_experiment_by_name("repro-reports").experiment_id],
                              "tags.`mlflow.project.entryPoint` = 'report'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["galmorph.kind"] == "report"


# ------------------------------------------------------------------------------ nair2010
@pytest.mark.slow
def test_prepare_nair2010_is_a_run_then_a_pair_trains_on_it(server, tmp_path):  # noqa: F811
    """`galmorph data prepare nair2010` against the local server: a run with counts and
    failures; the prepared set then trains under a pair scheme like any dataset."""
    import mlflow

    server.state.modes[3] = "always500"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = child_env({"MLFLOW_TRACKING_URI": uri, "GALMORPH_CACHE": str(tmp_path / "cache")})
    proc = subprocess.run([sys.executable, "-m", "galmorph", "data", "prepare", "nair2010", "--vizier-server", server.base,
                           "--cutout-url", server.base + "/cutout", "--retries", "0", "--workers", "2", "--max-rate", "200",
                           "--quiet", "--experiment", "prep"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("prep").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["galmorph.kind"] == "prepare"
    p = run.data.params
    assert (p["n_catalogue"], p["n_galaxies"], p["n_failed"]) == ("16", "15", "1")
    assert p["vizier_server"] == server.base and run.data.metrics["n_failed"] == 1
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"nair2010.manifest.json", "nair2010.failures.csv"}
    failures = Path(client.download_artifacts(run.info.run_id, "nair2010.failures.csv", str(tmp_path / "dl"))).read_text()
    assert "HTTP 500" in failures
    # the fixture has 2 E and 2 Irr galaxies (too few to split), 4 S0 and 8 Sp: train S0 vs Sp
    proc = subprocess.run([sys.executable, "-m", "galmorph", "train", "--backend", "torch", "--dataset", "nair2010",
                           "--scheme", "pair:S0-vs-Sp", "--epochs", "1", "--threads", "1", "--log-model", "false",
                           "--val-fraction", "0.25", "--test-fraction", "0.25", "--experiment", "prep"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (train,) = client.search_runs([client.get_experiment_by_name("prep").experiment_id], "tags.scheme = '4way:S0-vs-Sp'")
    assert train.data.params["input_shape"] == "100x100x3" and train.data.params["class_names"] == "S0,Sp"  # gri
