"""The model zoos' networks (experiments/architectures.yaml `zoo`): both backends build the
same network as timm counts it, train a step on 69 px galaxies' crops, and save and load it."""

import json

import pytest
from conftest import child_env, run_python

ZOO = ("resnet18", "resnet50", "efficientnet_b0", "convnext_nano")
SHAPES = ((63, 63, 1), (63, 63, 3))  # the crops of 69 px images, 1 band and 3
N_CLASSES = 5


def _backend_probe(backend: str, names: tuple = ZOO) -> dict:
    """Per zoo network of `names` and shape: (trainable, total) counts, and for 63x63x1 the
    loss of one training step, the weights' change and probabilities before and after a
    save/load."""
    code = f"""
import json, tempfile
import numpy as np
from galmorph import backends
from galmorph.core import specs, training
b = backends.get({backend!r})
b.setup(0, threads=1)
hyper = training.Hyper(epochs=1, learning_rate=1e-3, lr_schedule="constant", warmup_epochs=0, optimizer="adam",
                       weight_decay=0.0, label_smoothing=0.0, class_weight=None, eval_batch_size=8, precision="fp32",
                       compile="false", channels_last="false", loader_workers=0, prefetch=0, pin_memory="false", devices=1)
rng = np.random.default_rng(0)
out = {{}}
for name in {names!r}:
    for shape in {SHAPES!r}:
        spec = specs.resolve(name, shape, {N_CLASSES})
        model = b.build(spec, hyper)
        row = {{"counts": list(b.count_params(model))}}
        if shape[-1] == 1:
            x = rng.random((4, *shape), dtype=np.float32)
            y = rng.integers(0, {N_CLASSES}, 4)
            before = b.predict_proba(model, [x])
            rate = b.step_rate(model, hyper, x, y, steps=1, warmup=0)
            after = b.predict_proba(model, [x])
            with tempfile.TemporaryDirectory() as d:
                b.save_network(model, d)
                loaded = b.predict_proba(b.load_network(d), [x])
            row.update(rate=rate[0], sums=after.sum(1).tolist(), changed=float(np.abs(after - before).max()),
                       reloaded=float(np.abs(loaded - after).max()))
        out[f"{{name}}{{shape}}"] = row
print(json.dumps(out))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _timm_counts() -> dict:
    code = f"""
import json, timm
out = {{}}
for name in {ZOO!r}:
    for shape in {SHAPES!r}:
        m = timm.create_model(name, pretrained=False, num_classes={N_CLASSES}, in_chans=shape[-1])
        out[f"{{name}}{{shape}}"] = sum(p.numel() for p in m.parameters())
print(json.dumps(out))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probes():
    """The probes are separate processes of one thread each, run side by side; Keras's, the
    longest (tracing each network's training and prediction steps), in two halves."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        halves = [pool.submit(_backend_probe, "keras", names) for names in (ZOO[0::2], ZOO[1::2])]
        running = {"torch": pool.submit(_backend_probe, "torch"), "timm": pool.submit(_timm_counts)}
        found = {key: future.result() for key, future in running.items()}
        found["keras"] = {k: v for half in halves for k, v in half.result().items()}
        return found


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_both_backends_build_the_zoo_network_timm_counts(probes, name):
    for shape in SHAPES:
        key = f"{name}{shape}"
        keras_trainable, _ = probes["keras"][key]["counts"]
        torch_trainable, _ = probes["torch"][key]["counts"]
        assert keras_trainable == torch_trainable == probes["timm"][key], key
    assert probes["timm"][f"{name}(63, 63, 3)"] > probes["timm"][f"{name}(63, 63, 1)"]  # the stem sees 3 bands


@pytest.mark.slow
@pytest.mark.parametrize("backend", ("keras", "torch"))
@pytest.mark.parametrize("name", ZOO)
def test_zoo_network_trains_a_step_and_survives_save_and_load(probes, backend, name):
    row = probes[backend][f"{name}(63, 63, 1)"]
    assert row["rate"] > 0
    assert all(abs(s - 1) < 1e-4 for s in row["sums"])  # probabilities
    assert row["changed"] > 0  # the step moved the weights
    assert row["reloaded"] < 1e-5  # the saved network predicts as the trained one


def test_resnet18_count_is_the_published_one_at_224_px_and_1000_classes():
    """The zoo's network, not a look-alike: ResNet-18 has 11,689,512 parameters (He et al. 2016,
    as every zoo counts it) at ImageNet's 224x224x3 and 1,000 classes."""
    from galmorph.core import specs

    spec = specs.resolve("resnet18", (224, 224, 3), 1000)
    proc = run_python(
        "from galmorph import backends\nfrom galmorph.core import specs\n"
        "b = backends.get('torch')\n"
        "print(b.count_params(b.build(specs.resolve('resnet18', (224, 224, 3), 1000)))[0])\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == 11_689_512
    assert spec.is_zoo and spec.input_shape == (224, 224, 3)


BAD = [
    (["--model", "resnet9"], "unknown model 'resnet9'; choose one of c1, c2, convnext_nano, efficientnet_b0, "
                             "resnet18, resnet50"),
    (["--model", "resnet18", "--image-size", "32"], "input 29x29 is too small for resnet18, which needs at least 32x32"),
    (["--model", "resnet18", "--width", "2"], "width and dense_units apply to c1 and c2"),
    (["--model", "resnet18", "--pretrained", "imagenet", "--band", "g"],
     "pretrained imagenet weights take 3 bands and band g is 1"),
    (["--model", "c2", "--pretrained", "imagenet"], "pretrained imagenet applies to the zoo networks"),
    (["--model", "convnext_nano", "--backend", "keras", "--pretrained", "imagenet", "--band", "gri"],
     "the keras zoo has no ImageNet weights for convnext_nano"),
]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Each BAD case through `python -m galmorph train`, two at a time: (folder, process)."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    def run(case):
        folder = tmp_path_factory.mktemp("bad")
        env = child_env({"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "GALMORPH_CACHE": str(folder / "cache")})
        return folder, subprocess.run([sys.executable, "-m", "galmorph", "train", "--dataset", "synthetic",
                                       "--synthetic-n", "200", "--epochs", "1", *case[0]],
                                      capture_output=True, text=True, env=env, cwd=folder, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(run, BAD))


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_zoo_settings_are_one_line_before_any_training(bad_runs, case):
    folder, proc = bad_runs[case]
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("galmorph: error: ") and BAD[case][1] in lines[0], proc.stderr
    assert not (folder / "cache" / "checkpoints").exists() or not any((folder / "cache" / "checkpoints").iterdir())


PRETRAINED = """
import sys
import numpy as np, torch
from galmorph import backends
from galmorph.core import specs, training
from galmorph.core.errors import GalmorphError
b = backends.get("torch")
hyper = training.Hyper(epochs=1, learning_rate=1e-3, lr_schedule="constant", warmup_epochs=0, optimizer="adam",
                       weight_decay=0.0, label_smoothing=0.0, class_weight=None, eval_batch_size=8, precision="fp32",
                       compile="false", channels_last="false", loader_workers=0, prefetch=0, pin_memory="false",
                       devices=1, pretrained="imagenet")
try:
    net = b.build(specs.resolve("resnet18", (63, 63, 3), 5), hyper)
except GalmorphError as exc:
    print("ERROR", exc)
    sys.exit(0)
saved = torch.load(sys.argv[1])
print("conv1", float((net.body.conv1.weight - saved["conv1.weight"]).abs().max()))
print("fc", tuple(net.body.fc.weight.shape))
"""


@pytest.mark.slow
def test_pretrained_imagenet_weights_come_from_the_zoos_cache_offline(tmp_path):
    """timm's ImageNet weights for resnet18, placed in the Hugging Face cache as the hub would
    (models--timm--resnet18.a1_in1k), load offline into the network (the classifier stays new);
    with an empty cache, offline, the build is a one-line error and the cache stays empty."""
    import subprocess
    import sys

    make = (
        "import sys, torch, timm\nfrom safetensors.torch import save_file\n"
        "torch.manual_seed(5)\nm = timm.create_model('resnet18', num_classes=1000)\n"
        "state = {k: v.contiguous() for k, v in m.state_dict().items()}\n"
        "save_file(state, sys.argv[1])\ntorch.save(state, sys.argv[2])\n")
    snapshot = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    proc = subprocess.run([sys.executable, "-c", make, str(snapshot / "model.safetensors"), str(tmp_path / "w.pt")],
                          capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]

    def build(hf_home):
        env = child_env({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
        out = subprocess.run([sys.executable, "-c", PRETRAINED, str(tmp_path / "w.pt")], capture_output=True,
                             text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    loaded = build(tmp_path / "hf")
    assert "conv1 0.0" in loaded and "fc (5, 512)" in loaded, loaded
    empty = tmp_path / "empty"
    missing = build(empty)
    assert missing.startswith("ERROR could not load the ImageNet weights timm/resnet18.a1_in1k"), missing
    assert "drop --pretrained" in missing and not any(p.is_file() for p in empty.rglob("*"))


@pytest.fixture(scope="module")
def zoo_runs(tmp_path_factory):
    """resnet18 through `mlflow run . -e train` in each backend (1 epoch, tiny synthetic set),
    then `galmorph predict` (--tta dihedral) and `galmorph explain` of each run."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import mlflow
    from conftest import REPO, make_h5

    tmp = tmp_path_factory.mktemp("zoo-runs")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = child_env({"MLFLOW_TRACKING_URI": uri})
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment("zoo", artifact_location=(tmp / "artifacts").as_uri())
    galaxies = make_h5(tmp / "galaxies.h5", n=12, size=69, n_classes=4)

    def chain(backend):
        run = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "train", "--env-manager", "local",
                              "--experiment-name", "zoo", "-P", "model=resnet18", "-P", f"backend={backend}",
                              "-P", "dataset=synthetic", "-P", "synthetic_n=160", "-P", "epochs=1", "-P", "threads=1",
                              "-P", "augment=rotate"], capture_output=True, text=True, env=env, timeout=900, cwd=tmp)
        assert run.returncode == 0, run.stderr[-3000:]
        found = client.search_runs([client.get_experiment_by_name("zoo").experiment_id],
                                   f"params.backend = '{backend}'")
        assert len(found) == 1
        run_id = found[0].info.run_id
        out = tmp / f"{backend}.csv"
        predict = subprocess.run([sys.executable, "-m", "galmorph", "predict", run_id, str(galaxies), "--output",
                                  str(out), "--tta", "dihedral"], capture_output=True, text=True, env=env, timeout=600,
                                 cwd=tmp)
        explain = subprocess.run([sys.executable, "-m", "galmorph", "explain", "--run-id", run_id], capture_output=True,
                                 text=True, env=env, timeout=600, cwd=tmp)
        return run_id, predict, explain, out

    with ThreadPoolExecutor(2) as pool:
        found = dict(zip(("keras", "torch"), pool.map(chain, ("keras", "torch"))))
    return client, found, uri


@pytest.mark.slow
@pytest.mark.parametrize("backend", ("keras", "torch"))
def test_resnet18_trains_through_mlflow_run_then_predicts_and_explains(zoo_runs, backend, monkeypatch):
    import mlflow
    import pandas as pd

    client, found, uri = zoo_runs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    run_id, predict, explain, out = found[backend]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["model"] == "resnet18"
    assert run.data.params["augment"] == "rotate"
    assert run.data.params["zoo_builder"] == {"torch": "timm.create_model resnet18",
                                              "keras": "keras_hub.models ResNetBackbone"}[backend]
    assert run.data.metrics["trainable_params"] == 11_178_564  # timm's count: 3 bands (the preset's gri), 4 classes
    assert predict.returncode == 0, predict.stderr[-2000:]
    table = pd.read_csv(out)
    assert len(table) == 12 and abs(table.filter(like="p_").sum(axis=1) - 1).max() < 1e-6
    # the decision rule chosen on the run's validation split names each galaxy's class
    import numpy as np

    from galmorph.core import decision
    from galmorph.inference.pyfunc import SETTINGS, network_dir

    assert run.data.metrics["decision_alpha"] in decision.ALPHAS
    settings = json.loads((network_dir(run.data.tags["model_uri"], out.parent / f"{backend}-model") / SETTINGS).read_text())
    weights = settings["decision_weights"]
    assert len(weights) == 4
    proba = table[[c for c in table.columns if c.startswith("p_")]].to_numpy()
    names = np.array([c.removeprefix("p_") for c in table.columns if c.startswith("p_")])
    assert table["predicted"].tolist() == names[decision.decide(proba, weights)].tolist()
    assert explain.returncode == 0, explain.stderr[-2000:]
    names = {a.path for a in client.list_artifacts(run_id, "explain")}
    assert any("grad_cam" in n for n in names), names


def test_every_zoo_network_has_the_zoo_search_space_and_c2_keeps_its_own():
    from galmorph.workflows.tune.space import load_space

    for name in ZOO:
        space = load_space(name)  # also checks every candidate value is a valid setting for it
        assert space.path.name == "zoo.yaml" and space.model == name
        fields = {p.field for p in space.params}
        assert "augment" in fields and not fields & {"width", "dense_units"}
    assert load_space("c2").path.name == "c2.yaml"
