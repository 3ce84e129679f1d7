"""Training and inference throughput of C1 and C2 in both backends (issue 6), side by side.

For every model (c1, c2), input size (69, 100) and backend, measured in one run:

- pipeline img/s: the backend's own `fit` over the real input pipeline (TrainStream in
  `random` augmentation mode -> BatchMaker gathers -> worker threads -> device), median of
  the steady epochs as the neutral EpochReporter times them (training part, no validation);
- ceiling img/s: `step_rate`, fit's training step (same model set-up, optimiser, loss,
  precision, compilation) repeated on one batch already on the device; the median of two
  timed blocks before and two after fit, so that a change of machine load hits both sides;
- efficiency = pipeline / ceiling;
- inference img/s: `predict_proba` over centre-crop eval batches (eval batch size);
- first epoch s: the first fit epoch (graph building, XLA / torch.compile, warm-up);
- peak host MB (VmHWM, reset per configuration where Linux allows) and peak device MB;
- reference img/s: a plain hand-written PyTorch loop (nn.Sequential, Adam 2e-4,
  cross-entropy) over preloaded NCHW tensors, the yardstick of the CPU target; median of
  blocks timed in the PyTorch process around each configuration, and again in a process of
  its own right after the Keras one, so every row's ratio compares figures taken minutes
  apart at most.

Each backend runs in a process of its own (one framework per process); the parent merges
the rows, prints a Markdown table, writes throughput.md / throughput.json and logs them as
an MLflow run of their own (experiment `galmorph-benchmarks`).

Usage:
  python benchmarks/throughput.py                 # the full benchmark (minutes)
  python benchmarks/throughput.py --tiny          # seconds: checks the output format (CI)
  python benchmarks/throughput.py --backends torch --models c2 --sizes 69 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent))

CROP_FRACTION = 100 / 110  # the paper's: 110 px cutouts give 100 px inputs, 76 px give 69
COLUMNS = [
    ("model", "model", "{}"), ("input", "input", "{}"), ("backend", "backend", "{}"),
    ("pipeline_img_s", "pipeline img/s", "{:.1f}"), ("ceiling_img_s", "ceiling img/s", "{:.1f}"),
    ("efficiency", "efficiency", "{:.3f}"), ("inference_img_s", "inference img/s", "{:.1f}"),
    ("reference_img_s", "reference img/s", "{:.1f}"), ("vs_reference", "pipeline / reference", "{:.2f}"),
    ("first_epoch_s", "first epoch s", "{:.2f}"), ("peak_host_mb", "peak host MB", "{:.0f}"),
    ("peak_device_mb", "peak device MB", "{:.0f}"), ("settings", "settings", "{}"),
]


def image_size(input_size: int) -> int:
    """Cutout side whose centre crop (crop_fraction 100/110) is `input_size`."""
    from galmorph.data import augment

    for side in range(input_size, 3 * input_size):
        if augment.crop_size(side, CROP_FRACTION) == input_size:
            return side
    raise ValueError(f"no cutout size crops to {input_size}")


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux: write 5 to clear_refs); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- the plain PyTorch yardstick

def reference_rate(model: str, input_size: int, batch: int, steps: int, blocks: int = 2,
                   n_classes: int = 4) -> list[float]:
    """Images/s of a hand-written loop over preloaded tensors (network, loss and step without
    galmorph code), for each of `blocks` timed blocks of `steps` steps, timed like the
    backends' ceiling (training.block_rates)."""
    import torch
    from torch import nn

    from galmorph.core import training

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if model == "c2":
        net = nn.Sequential(
            nn.Conv2d(1, 32, 7), nn.ReLU(), nn.BatchNorm2d(32), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5), nn.ReLU(), nn.Conv2d(64, 64, 5), nn.ReLU(), nn.BatchNorm2d(64), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3), nn.ReLU(), nn.BatchNorm2d(128), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.5), nn.LazyLinear(256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, n_classes))
    else:
        net = nn.Sequential(
            nn.Conv2d(1, 32, 5), nn.ReLU(), nn.BatchNorm2d(32), nn.Conv2d(32, 64, 5), nn.ReLU(),
            nn.BatchNorm2d(64), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.LazyLinear(256), nn.ReLU(),
            nn.Linear(256, n_classes))
    net = net.to(dev)
    xs = [torch.rand(batch, 1, input_size, input_size, device=dev) for _ in range(4)]
    ys = [torch.randint(0, n_classes, (batch,), device=dev) for _ in range(4)]
    net(xs[0])  # materialise the lazy layer before the optimiser sees the parameters
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step(i):
        loss = loss_fn(net(xs[i % 4]), ys[i % 4])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def run(n):
        for i in range(n):
            loss = step(i)
        loss.item()  # waits for the device

    return training.block_rates(run, steps, batch, warmup=3, blocks=blocks)


# ---------------------------------------------------------------- one backend, in its own process

def measure(backend_name: str, model: str, input_size: int, opts: dict) -> dict:
    """One row: the project's real code path for `backend_name` (run in that backend's process)."""
    from galmorph.backends import get
    from galmorph.config import TrainConfig
    from galmorph.core import specs, system, training
    from galmorph.data import augment
    from galmorph.workflows.prepare import hyper_from

    backend = get(backend_name)
    batch, steps, epochs = opts["batch_size"], opts["steps"], opts["epochs"]
    side = image_size(input_size)
    n_train = batch * steps
    n_val = min(batch, 64)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_train + n_val, side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=n_train + n_val).astype(np.int64)
    train_idx, val_idx = np.arange(n_train), np.arange(n_train, n_train + n_val)
    config = TrainConfig(model=model, backend=backend_name, batch_size=batch, epochs=epochs, learning_rate=2e-4,
                         patience=0, crop_fraction=CROP_FRACTION, eval_batch_size=opts["eval_batch_size"],
                         precision=opts["precision"], compile=opts["compile"], channels_last=opts["channels_last"],
                         loader_workers=opts["loader_workers"], prefetch=opts["prefetch"], threads=opts["threads"])
    reset = reset_peak_rss()
    backend.setup(0, config.threads)
    maker = augment.BatchMaker(images, [2], CROP_FRACTION)
    spec = specs.resolve(model, maker.input_shape, 4)
    hyper = hyper_from(config, labels[train_idx], 4)
    row = {"model": model, "input": f"{input_size}x{input_size}x1", "backend": backend_name, "batch_size": batch}
    resolved = backend.resolved(hyper)
    row["settings"] = (f"{resolved['precision_resolved']}, compile {'on' if resolved['compile_resolved'] else 'off'}"
                       f", workers {resolved['loader_workers_resolved']}")
    row["resolved"] = {k: str(v) for k, v in resolved.items()}

    # Each yardstick is timed in blocks before and after fit, and medians are compared:
    # on a shared machine the load changes by the minute, and must hit both sides alike.
    x0, y0 = maker.batch(train_idx[:batch], 0), labels[train_idx[:batch]]
    refs = []
    if backend_name == "torch" and opts["reference"]:
        refs += reference_rate(model, input_size, batch, steps)
    ceilings = backend.step_rate(backend.build(spec, hyper), hyper, x0, y0, steps=steps, blocks=2)

    model_obj = backend.build(spec, hyper)
    stream = augment.TrainStream(maker, train_idx, labels, mode="random", batch_size=batch, seed=0)
    reporter = training.EpochReporter(labels[val_idx], patience=0)
    model_obj = backend.fit(model_obj, stream, lambda: augment.eval_batches(maker, val_idx, config.eval_batch_size),
                            hyper, reporter)
    timing = reporter.timing()
    epoch_rates = [r.train_images_per_s for r in reporter.history[1:]]

    ceilings += backend.step_rate(backend.build(spec, hyper), hyper, x0, y0, steps=steps, blocks=2)
    if backend_name == "torch" and opts["reference"]:
        refs += reference_rate(model, input_size, batch, steps)

    inf_idx = np.arange(min(len(images), opts["inference_images"]))
    backend.predict_proba(model_obj, augment.eval_batches(maker, inf_idx[: config.eval_batch_size], config.eval_batch_size))
    t0 = time.perf_counter()
    backend.predict_proba(model_obj, augment.eval_batches(maker, inf_idx, config.eval_batch_size))
    inference = inf_idx.size / (time.perf_counter() - t0)

    pipeline = float(np.median(epoch_rates)) if epoch_rates else float("nan")
    ceiling = float(np.median(ceilings))
    row.update({
        "pipeline_img_s": pipeline, "pipeline_epochs_img_s": epoch_rates,
        "ceiling_img_s": ceiling, "ceiling_blocks_img_s": ceilings,
        "efficiency": pipeline / ceiling, "inference_img_s": inference,
        "first_epoch_s": timing["first_epoch_time_s"], "steady_epochs": int(timing["epochs_run"]) - 1,
        "peak_host_mb": system.peak_rss_mb(), "peak_host_mb_reset": reset,
        "peak_device_mb": backend.device_stats().get("gpu_peak_memory_mb"),
    })
    if refs:
        row["reference_img_s"] = float(np.median(refs))
        row["reference_blocks_img_s"] = refs
    return row


def worker(spec: dict) -> list[dict]:
    """(child process) every configuration of one backend, or the reference loops alone."""
    if spec["backend"] == "reference":
        import torch

        torch.set_num_threads(spec["opts"]["threads"] or _cpu_count())
        out = []
        for m, s in spec["configs"]:
            blocks = reference_rate(m, s, spec["opts"]["batch_size"], spec["opts"]["steps"], blocks=4)
            out.append({"model": m, "input_size": s, "reference_img_s": float(np.median(blocks)),
                        "reference_blocks_img_s": blocks})
        return out
    rows = []
    for model, size in spec["configs"]:
        rows.append(measure(spec["backend"], model, size, spec["opts"]))
        _reset_device_peak(spec["backend"])
    rows.append({"platform": _platform(spec["backend"])})
    return rows


def _reset_device_peak(backend: str) -> None:
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    else:
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")


def _platform(backend: str) -> dict:
    from galmorph.core import system

    out = {"cpu": system.cpu_name(), "cpu_cores": _cpu_count(), "python": platform.python_version()}
    if backend == "torch":
        import torch

        out["torch"] = torch.__version__
        out["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    else:
        import keras
        import tensorflow as tf

        out["keras"], out["tensorflow"] = keras.__version__, tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            out["gpu"] = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
    return out


def _cpu_count() -> int:
    from galmorph.core import system

    return system.cpu_count()


def _run_child(spec: dict, timeout: float) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['backend']} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the parent: merge, print, log

def has_gpu() -> bool:
    """Whether an NVIDIA GPU is visible, without importing a framework in this process."""
    import shutil

    if not shutil.which("nvidia-smi"):
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def options(args) -> dict:
    gpu = has_gpu()
    if args.tiny:
        defaults = {"batch_size": 8, "steps": 2, "epochs": 2, "eval_batch_size": 16, "inference_images": 16}
    elif gpu:
        defaults = {"batch_size": 512, "steps": 40, "epochs": 4, "eval_batch_size": 2048, "inference_images": 8192}
    else:
        defaults = {"batch_size": 64, "steps": 8, "epochs": 4, "eval_batch_size": 512, "inference_images": 512}
    opts = {k: (getattr(args, k) or v) for k, v in defaults.items()}
    opts.update({"precision": args.precision, "compile": args.compile, "channels_last": args.channels_last,
                 "loader_workers": args.loader_workers, "prefetch": args.prefetch, "threads": args.threads,
                 "reference": True, "gpu": gpu})
    return opts


def run(args) -> dict:
    opts = options(args)
    sizes = [40] if args.tiny and not args.sizes else [int(s) for s in (args.sizes or "69,100").split(",")]
    models = (args.models or "c1,c2").split(",")
    backends = (args.backends or "torch,keras").split(",")
    configs = [(m, s) for m in models for s in sizes]
    started = time.time()
    rows, platforms, references = [], {}, {}
    for backend in backends:
        out = _run_child({"backend": backend, "configs": configs, "opts": opts}, args.timeout)
        platforms[backend] = out.pop()["platform"]
        rows += out
        if backend != "torch" and opts["reference"] and "torch" in _importable():
            # the yardstick again, right after this backend's rows, under the same machine load
            for r in _run_child({"backend": "reference", "configs": configs, "opts": opts}, args.timeout):
                references[(backend, r["model"], r["input_size"])] = r
    for row in rows:
        size = int(row["input"].split("x")[0])
        if "reference_img_s" not in row and (row["backend"], row["model"], size) in references:
            ref = references[(row["backend"], row["model"], size)]
            row["reference_img_s"], row["reference_blocks_img_s"] = ref["reference_img_s"], ref["reference_blocks_img_s"]
        if row.get("reference_img_s"):
            row["vs_reference"] = row["pipeline_img_s"] / row["reference_img_s"]
    result = {
        "benchmark": "throughput", "tiny": bool(args.tiny), "options": opts, "platform": platforms,
        "rows": rows, "ratios": ratios(rows), "targets": targets(rows, opts["gpu"]),
        "wall_s": time.time() - started, "load_average": os.getloadavg(),
        "note": args.note,
    }
    return result


def _importable() -> set[str]:
    import importlib.util

    return {m for m in ("torch", "tensorflow") if importlib.util.find_spec(m) is not None}


def ratios(rows: list[dict]) -> list[dict]:
    """Keras against PyTorch, per model and input (the issue's 'Keras within 1.5x / 1.6x')."""
    out = []
    by = {(r["model"], r["input"], r["backend"]): r for r in rows}
    for (model, size, backend), r in by.items():
        if backend != "keras" or (model, size, "torch") not in by:
            continue
        t = by[(model, size, "torch")]
        out.append({"model": model, "input": size, "torch_over_keras_pipeline": t["pipeline_img_s"] / r["pipeline_img_s"],
                    "reference_over_keras_pipeline": (r["reference_img_s"] / r["pipeline_img_s"])
                    if r.get("reference_img_s") else None})
    return out


def targets(rows: list[dict], gpu: bool) -> list[dict]:
    """The issue's targets, each with the measured figure and whether it is met."""
    out = []
    for r in rows:
        if r["model"] == "c2":
            out.append({"target": f"C2 {r['input']} {r['backend']}: pipeline efficiency >= 0.95",
                        "value": r["efficiency"], "met": r["efficiency"] >= 0.95})
    by = {(r["model"], r["input"], r["backend"]): r for r in rows}
    if gpu:
        t = by.get(("c2", "100x100x1", "torch"))
        if t:
            out.append({"target": "C2 100x100x1 PyTorch >= 20,000 img/s", "value": t["pipeline_img_s"],
                        "met": t["pipeline_img_s"] >= 20_000})
        k = by.get(("c2", "100x100x1", "keras"))
        if t and k:
            out.append({"target": "C2 100x100x1 Keras within 1.5x of PyTorch",
                        "value": t["pipeline_img_s"] / k["pipeline_img_s"],
                        "met": t["pipeline_img_s"] / k["pipeline_img_s"] <= 1.5})
    else:
        t, k = by.get(("c2", "69x69x1", "torch")), by.get(("c2", "69x69x1", "keras"))
        if t and t.get("reference_img_s"):
            out.append({"target": "C2 69x69x1 PyTorch pipeline >= hand-written loop (ratio >= 1)",
                        "value": t["vs_reference"], "met": t["vs_reference"] >= 1.0})
        if k and k.get("reference_img_s"):
            out.append({"target": "C2 69x69x1 Keras within 1.6x of the hand-written loop",
                        "value": k["reference_img_s"] / k["pipeline_img_s"],
                        "met": k["reference_img_s"] / k["pipeline_img_s"] <= 1.6})
        if t and k:
            out.append({"target": "C2 69x69x1 Keras within 1.6x of PyTorch",
                        "value": t["pipeline_img_s"] / k["pipeline_img_s"],
                        "met": t["pipeline_img_s"] / k["pipeline_img_s"] <= 1.6})
    return out


def _fmt(value, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return pattern.format(value)


def markdown(result: dict) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in result["rows"]:
        lines.append("| " + " | ".join(_fmt(row.get(key), fmt) for key, _, fmt in COLUMNS) + " |")
    plat = result["platform"]
    any_plat = next(iter(plat.values()), {})
    device = any_plat.get("gpu") or f"CPU only: {any_plat.get('cpu', '?')}, {any_plat.get('cpu_cores', '?')} cores"
    versions = ", ".join(f"{k} {v}" for p in plat.values() for k, v in p.items() if k in ("torch", "keras", "tensorflow"))
    o = result["options"]
    head = [f"Device: {device}. {versions}. Batch {o['batch_size']}, {o['steps']} steps per epoch, "
            f"{o['epochs'] - 1} steady epoch(s) after a warm-up one; load average at the end "
            f"{', '.join(f'{x:.1f}' for x in result['load_average'])}." + (f" {result['note']}" if result.get("note") else ""),
            ""]
    tail = ["", "| ratio | value | target met |", "|---|---|---|"]
    for t in result["targets"]:
        tail.append(f"| {t['target']} | {t['value']:.3f} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(head + lines + tail) + "\n"


def log_to_mlflow(result: dict, out_dir: Path, experiment: str) -> str:
    import mlflow

    mlflow.set_experiment(experiment)
    device = next(iter(result["platform"].values()), {}).get("gpu") or "cpu"
    name = f"throughput-{'tiny-' if result['tiny'] else ''}{device.replace(' ', '_')}"
    with mlflow.start_run(run_name=name, tags={"benchmark": "throughput", "tiny": str(result["tiny"]).lower()}) as run:
        o = result["options"]
        mlflow.log_params({k: o[k] for k in ("batch_size", "steps", "epochs", "eval_batch_size", "precision",
                                             "compile", "channels_last", "loader_workers", "prefetch", "threads")})
        mlflow.log_params({"device": device, **{f"{b}_{k}": v for b, p in result["platform"].items() for k, v in p.items()}})
        metrics = {}
        for r in result["rows"]:
            prefix = f"{r['model']}_{r['backend']}_{r['input'].split('x')[0]}"
            for key in ("pipeline_img_s", "ceiling_img_s", "efficiency", "inference_img_s", "first_epoch_s",
                        "peak_host_mb", "peak_device_mb", "reference_img_s", "vs_reference"):
                if r.get(key) is not None and np.isfinite(r[key]):
                    metrics[f"{prefix}_{key}"] = float(r[key])
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(out_dir / "throughput.md"))
        mlflow.log_artifact(str(out_dir / "throughput.json"))
        return run.info.run_id


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a few steps on 40x40 inputs: checks the output format")
    p.add_argument("--backends", default="", help="comma-separated (default: torch,keras)")
    p.add_argument("--models", default="", help="comma-separated (default: c1,c2)")
    p.add_argument("--sizes", default="", help="comma-separated input sides (default: 69,100; tiny: 40)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=0, help="default: 64 CPU, 512 GPU")
    p.add_argument("--steps", type=int, default=0, help="training steps per epoch")
    p.add_argument("--epochs", type=int, default=0, help="fit epochs (the first is the warm-up one)")
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, default=0)
    p.add_argument("--inference-images", dest="inference_images", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--compile", default="auto", choices=("auto", "true", "false"))
    p.add_argument("--channels-last", dest="channels_last", default="auto", choices=("auto", "true", "false"))
    p.add_argument("--loader-workers", dest="loader_workers", type=int, default=0)
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="framework CPU threads (0 = all cores)")
    p.add_argument("--out", default="benchmarks/results", help="folder for throughput.md and throughput.json")
    p.add_argument("--experiment", default="galmorph-benchmarks", help="MLflow experiment")
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    p.add_argument("--note", default="", help="free text added under the table (e.g. 'machine shared')")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per backend process")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(result)
    (out / "throughput.md").write_text(md)
    (out / "throughput.json").write_text(json.dumps(result, indent=2, default=str))
    if not args.no_mlflow:
        result["mlflow_run_id"] = log_to_mlflow(result, out, args.experiment)
        (out / "throughput.json").write_text(json.dumps(result, indent=2, default=str))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
