"""Performance paths (issue 6) change speed, never results: the batch pipeline delivers the
stream's batches in order, data-parallel shards cover the single-device batches, and mixed
precision, XLA / torch.compile and channels-last train to the same answers on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, make_h5, run_python

from galmorph.config import TrainConfig
from galmorph.core import acceleration
from galmorph.data import augment, pipeline
from galmorph.workflows.prepare import hyper_from


def _stream(n=50, batch=8, mode="random", size=24):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    maker = augment.BatchMaker(images, [2])
    return augment.TrainStream(maker, np.arange(n), np.arange(n) % 3, mode=mode, batch_size=batch, seed=4)


def test_auto_means_gpu_speed_ups_only_on_a_gpu():
    h = hyper_from(TrainConfig(epochs=1, learning_rate=1e-3))
    cpu = acceleration.resolve(h, on_gpu=False, bf16_supported=False)
    assert (cpu.precision, cpu.compile, cpu.channels_last, cpu.pin_memory, cpu.loader_workers) == ("fp32", False, False, False, 1)
    gpu = acceleration.resolve(h, on_gpu=True, bf16_supported=True)
    assert (gpu.precision, gpu.compile, gpu.channels_last, gpu.pin_memory) == ("bf16", True, True, True)
    assert gpu.loader_workers == acceleration.GPU_LOADER_WORKERS and not gpu.loss_scaling
    old = acceleration.resolve(h, on_gpu=True, bf16_supported=False)
    assert old.precision == "fp16" and old.loss_scaling
    forced = acceleration.resolve(hyper_from(TrainConfig(epochs=1, learning_rate=1e-3, precision="bf16", compile="true", pin_memory="true")),
                                  on_gpu=False, bf16_supported=False)
    assert (forced.precision, forced.compile, forced.pin_memory) == ("bf16", True, False)  # nothing to pin for


@pytest.mark.parametrize("workers,prefetch", [(1, 0), (1, 2), (3, 2), (4, 8)])
def test_pipeline_delivers_the_streams_batches_in_order(workers, prefetch):
    stream = _stream()
    plan = stream.plan(2)
    expected = [stream.get(plan, i) for i in range(len(stream))]
    got = list(pipeline.stream_batches(stream, 2, workers, prefetch))
    assert len(got) == len(expected)
    for (x, y), (ex, ey) in zip(got, expected):
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)


def test_pipeline_passes_worker_errors_to_the_consumer():
    def make(i):
        if i == 3:
            raise ValueError("bad batch")
        return i

    with pytest.raises(ValueError, match="bad batch"):
        list(pipeline.ordered(make, 10, workers=3, prefetch=4))


@pytest.mark.parametrize("world,n,batch", [(2, 50, 8), (3, 61, 12), (4, 16, 4)])
def test_shards_together_make_the_single_device_batches(world, n, batch):
    stream = _stream(n=n, batch=batch)
    shards = [pipeline.Shard(stream, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every replica takes the same number of steps
    idx, views = stream.plan(1)
    plans = [s.plan(1) for s in shards]
    for k in range(len(shards[0])):
        lo = k * batch
        want = np.arange(lo, lo + batch) % idx.size  # padded by wrapping at the end of the epoch
        got = np.empty(batch, dtype=np.intp)
        for r, (s, (sidx, sviews)) in enumerate(zip(shards, plans)):
            part = np.arange(k * s.batch_size, (k + 1) * s.batch_size)
            got[r::world] = part * world + r
            np.testing.assert_array_equal(sidx[part], idx[want[r::world]])
            np.testing.assert_array_equal(sviews[part], views[want[r::world]])
        np.testing.assert_array_equal(np.sort(got), np.arange(lo, lo + batch))
    assert sum(s.images_per_epoch for s in shards) >= stream.images_per_epoch
    x, y = shards[1].get(plans[1], 0)
    assert x.shape == (batch // world, *stream.maker.input_shape) and y.dtype == np.int64


def test_config_round_trips_through_the_command_line():
    from galmorph.cli import build_parser, config_from

    cfg = TrainConfig(backend="torch", precision="bf16", compile="true", devices=2, batch_size=64,
                      learning_rate=3e-4, tta=True, loader_workers=3, run_name="x y")
    args = build_parser().parse_args(cfg.to_argv())
    assert config_from(args, TrainConfig) == cfg


def test_the_neutral_performance_modules_load_no_framework():
    code = ("import json, sys, galmorph.core.acceleration, galmorph.data.pipeline\n"
            "print(json.dumps([m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules]))")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_batch_must_split_over_the_devices():
    from galmorph.core.errors import GalmorphError

    with pytest.raises(GalmorphError, match="multiple of devices"):
        TrainConfig(batch_size=63, devices=2).validate()


# --- backends on a tiny separable problem (one framework per process) ---

EQUIVALENCE = r"""
import json, sys, numpy as np
from galmorph import backends
from galmorph.config import TrainConfig
from galmorph.workflows.prepare import hyper_from
from galmorph.core import specs, training
from galmorph.data import augment, bands
from galmorph.data import hdf5
b = backends.get(sys.argv[1])
raw = hdf5.read({h5!r}); images, labels = raw.images, raw.labels
maker = augment.BatchMaker(images, bands.channels("g"))
n = len(labels); train, test = np.arange(0, n, 2), np.arange(1, n, 2)
spec = specs.resolve("c2", maker.input_shape, 3, width=0.5, dense_units=32)
out = {{}}
for name, kw in {variants!r}:
    b.setup(0, 2)
    hyper = hyper_from(TrainConfig(epochs={epochs}, learning_rate=2e-3, prefetch=2, **kw))
    model = b.build(spec, hyper)
    stream = augment.TrainStream(maker, train, labels, mode="none", batch_size=16, seed=0)
    rep = training.EpochReporter(labels[test])
    model = b.fit(model, stream, lambda: augment.eval_batches(maker, test, 64), hyper, rep)
    p = b.predict_proba(model, augment.eval_batches(maker, test, 64))
    out[name] = {{"proba": p.tolist(), "acc": float((p.argmax(1) == labels[test]).mean()),
                 "resolved": {{k: str(v) for k, v in b.resolved(hyper).items()}}}}
print(json.dumps(out))
"""


def _equivalence(backend, tmp_path, variants, epochs=10):
    # 120 training images, 10 epochs: enough for BN's running statistics to settle, so that
    # every variant ends at the separable problem's answer rather than mid-trajectory
    h5 = make_h5(tmp_path / "sep.h5", n=240, size=44, n_classes=3)
    code = EQUIVALENCE.format(h5=str(h5), variants=variants, epochs=epochs)
    proc = subprocess.run([sys.executable, "-c", code, backend], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _close(a, b, mean_tol, agree=0.9):
    pa, pb = np.asarray(a["proba"]), np.asarray(b["proba"])
    assert np.abs(pa - pb).mean() < mean_tol
    assert (pa.argmax(1) == pb.argmax(1)).mean() >= agree


# Each backend's performance paths against its own fp32/eager reference (the paths differ:
# channels-last and fp16 loss scaling are PyTorch's; Keras is always NHWC).
PERFORMANCE_VARIANTS = {
    "torch": [("fp32", {"precision": "fp32", "channels_last": "false", "compile": "false"}),
              ("bf16", {"precision": "bf16", "channels_last": "false", "compile": "false"}),
              ("fp16", {"precision": "fp16", "channels_last": "false", "compile": "false"}),
              ("channels_last", {"precision": "fp32", "channels_last": "true", "compile": "false"}),
              ("compiled", {"precision": "fp32", "channels_last": "false", "compile": "true"})],
    "keras": [("fp32", {"precision": "fp32", "compile": "false"}),
              ("bf16", {"precision": "bf16", "compile": "false"}),
              ("compiled", {"precision": "fp32", "compile": "true"})],
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("torch", marks=pytest.mark.torch),
                                     pytest.param("keras", marks=pytest.mark.keras)])
def test_mixed_precision_channels_last_and_compile_train_to_the_fp32_answer(tmp_path, backend):
    out = _equivalence(backend, tmp_path, PERFORMANCE_VARIANTS[backend])
    assert out["fp32"]["acc"] >= 0.9
    assert out["bf16"]["resolved"]["precision_resolved"] == "bf16"
    assert out["compiled"]["resolved"]["compile_resolved"] == "True"
    for name, _ in PERFORMANCE_VARIANTS[backend][1:]:
        assert out[name]["acc"] >= out["fp32"]["acc"] - 0.05, name
        _close(out[name], out["fp32"], mean_tol=0.08)


@pytest.mark.slow
@pytest.mark.keras
def test_keras_pipeline_follows_the_epoch_plans_in_fit(tmp_path):
    """Keras keeps one iterator over all epochs: epoch e trains on plan e, batch by batch."""
    code = r"""
import json, numpy as np
from galmorph import backends
from galmorph.config import TrainConfig
from galmorph.workflows.prepare import hyper_from
from galmorph.core import specs, training
from galmorph.data import augment
from galmorph.backends.keras import train as kt
b = backends.get("keras"); b.setup(0, 2)
rng = np.random.default_rng(0)
images = rng.integers(0, 255, (40, 44, 44, 3), dtype=np.uint8)
maker = augment.BatchMaker(images, [2])
stream = augment.TrainStream(maker, np.arange(40), np.arange(40) % 3, mode="random", batch_size=16, seed=1)
hyper = hyper_from(TrainConfig(epochs=3, learning_rate=1e-3, loader_workers=3, prefetch=4))
ds = kt.dataset(stream, 3, 3, kt.settings(hyper))
got = [x.numpy() for x, _ in ds]
want = [stream.get(stream.plan(e), i)[0] for e in range(3) for i in range(len(stream))]
same = len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))
class Recording:
    def __init__(self, s): self.s, self.epochs = s, []
    def __getattr__(self, k): return getattr(self.s, k)
    def __len__(self): return len(self.s)
    def plan(self, e): self.epochs.append(e); return self.s.plan(e)
rec = Recording(stream)
model = b.build(specs.resolve("c2", maker.input_shape, 3, dense_units=16), hyper)
b.fit(model, rec, lambda: augment.eval_batches(maker, np.arange(8), 8), hyper, training.EpochReporter(np.arange(8) % 3))
print(json.dumps({"same": same, "epochs": sorted(set(rec.epochs))}))
"""
    proc = run_python(code, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"same": True, "epochs": [0, 1, 2]}


@pytest.mark.slow
@pytest.mark.keras
def test_keras_one_device_strategy_path_trains_predicts_and_times():
    """The single-GPU path (OneDeviceStrategy, which prefetches to its device), on the CPU."""
    code = r"""
import json, numpy as np, tensorflow as tf
from galmorph import backends
from galmorph.config import TrainConfig
from galmorph.workflows.prepare import hyper_from
from galmorph.core import specs, training
from galmorph.data import augment
from galmorph.backends.keras import model as km
b = backends.get("keras"); b.setup(0, 2)
km.strategy = lambda devices: tf.distribute.OneDeviceStrategy("/cpu:0")
rng = np.random.default_rng(0)
maker = augment.BatchMaker(rng.integers(0, 255, (40, 44, 44, 3), dtype=np.uint8), [2])
stream = augment.TrainStream(maker, np.arange(32), np.arange(40) % 3, mode="random", batch_size=16, seed=1)
hyper = hyper_from(TrainConfig(epochs=2, learning_rate=1e-3, precision="bf16", compile="true"))
spec = specs.resolve("c2", maker.input_shape, 3, width=0.5, dense_units=16)
model = b.build(spec, hyper)
rep = training.EpochReporter(np.arange(32, 40) % 3)
model = b.fit(model, stream, lambda: augment.eval_batches(maker, np.arange(32, 40), 8), hyper, rep)
p = b.predict_proba(model, augment.eval_batches(maker, np.arange(32, 40), 5))
rate = b.step_rate(b.build(spec, hyper), hyper, *stream.get(stream.plan(0), 0), steps=2, warmup=1, blocks=2)
print(json.dumps({"strategy": type(model.distribute_strategy).__name__, "shape": list(p.shape),
                  "sums": np.allclose(p.sum(1), 1, atol=1e-3), "epochs": len(rep.history), "rate": rate}))
"""
    proc = run_python(code, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["strategy"] == "OneDeviceStrategy" and out["shape"] == [8, 3] and out["sums"]
    assert out["epochs"] == 2 and len(out["rate"]) == 2 and min(out["rate"]) > 0


@pytest.mark.slow
@pytest.mark.torch
def test_torch_step_rate_and_cpu_batches_share_numpy_memory():
    code = r"""
import json, numpy as np, torch
from galmorph import backends
from galmorph.config import TrainConfig
from galmorph.workflows.prepare import hyper_from
from galmorph.core import acceleration, specs, training
from galmorph.data import augment
from galmorph.backends.torch import train as tt
b = backends.get("torch"); b.setup(0, 2)
rng = np.random.default_rng(0)
maker = augment.BatchMaker(rng.integers(0, 255, (20, 44, 44, 3), dtype=np.uint8), [2])
stream = augment.TrainStream(maker, np.arange(20), np.arange(20) % 3, mode="none", batch_size=8, seed=0)
hyper = hyper_from(TrainConfig(epochs=1, learning_rate=1e-3, prefetch=0))
s = tt.settings(hyper)
x, y = next(iter(tt.device_batches(stream, 0, torch.device("cpu"), s)))
spec = specs.resolve("c2", maker.input_shape, 3, dense_units=16)
rate = b.step_rate(b.build(spec, hyper), hyper, *stream.get(stream.plan(0), 0), steps=2, warmup=1, blocks=2)
print(json.dumps({"rate": rate, "dtype": str(x.dtype), "ydtype": str(y.dtype)}))
"""
    proc = run_python(code, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["rate"]) == 2 and min(out["rate"]) > 0
    assert out["dtype"] == "torch.float32" and out["ydtype"] == "torch.int64"


# --- data-parallel: PyTorch DDP (torchrun, gloo on CPUs) and Keras MirroredStrategy ---

def _dp_run(backend, tmp_path, tracking_uri):
    h5 = make_h5(tmp_path / "sep.h5", n=240, size=44, n_classes=3)
    code = f"""
import json
from galmorph.config import TrainConfig
from galmorph.workflows.train import run
m = run(TrainConfig(backend={backend!r}, dataset={str(h5)!r}, epochs=8, batch_size=16, learning_rate=2e-3,
                    width=0.5, dense_units=32, augment="none", devices=2, threads=1, log_model=False, experiment="dp",
                    val_fraction=0.25, test_fraction=0.25, patience=0))
print(json.dumps(m))
"""
    proc = run_python(code, timeout=600, cwd=tmp_path)  # MLflow's default artifact root is ./mlruns
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("dp").experiment_id])
    return metrics, runs


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("torch", marks=pytest.mark.torch),
                                     pytest.param("keras", marks=pytest.mark.keras)])
def test_data_parallel_on_two_cpu_replicas_logs_one_run(tmp_path, tracking_uri, backend):
    """PyTorch: DDP over two torchrun processes (rank 0 alone logs); Keras: MirroredStrategy."""
    metrics, runs = _dp_run(backend, tmp_path, tracking_uri)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # a second rank logged nothing
    run = runs[0]
    assert run.data.params["devices"] == "2" and run.data.params["devices_resolved"] == "2"
    assert metrics["test_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])
    assert metrics["test_accuracy"] > 0.6  # 3 separable classes: chance is 1/3
    assert metrics["epochs_run"] == 8
