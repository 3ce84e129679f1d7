"""Data-pipeline benchmark (issue 2): figures printed as ratios measured side by side.

1. Augmented float32 batch production vs C2 training speed on the CPU (PyTorch), in one
   run: the pipeline must be >= 20x faster than the network consumes batches.
2. Peak memory (max RSS) of loading Galaxy10-sized data (21,785 x 69x69x3 synthetic
   images), splitting it and streaming one full training epoch, per augmentation mode,
   each in a fresh process: target < 1.5 GB whatever the mode.
3. galmorph's loader vs the PHYS449 loader (a text file of one image per line, reread for
   every batch) over one epoch of the same 2,000 images: the speed-up.

Usage: python benchmarks/data_pipeline.py [--tiny] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def pipeline_rate(images, mode: str, band_channels, batch_size: int, seconds: float) -> float:
    """Augmented float32 batches/s of the real TrainStream, in images/s."""
    from galmorph.data import augment

    maker = augment.BatchMaker(images, band_channels)
    labels = np.zeros(len(images), np.int64)
    stream = augment.TrainStream(maker, np.arange(len(images)), labels, mode=mode, batch_size=batch_size, seed=0)
    n, t0, epoch = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for x, _ in stream.epoch(epoch, prefetch=0):
            n += x.shape[0]
            if time.perf_counter() - t0 >= seconds:
                break
        epoch += 1
    return n / (time.perf_counter() - t0)


def c2_training_rate(images, batch_size: int, steps: int) -> float:
    """C2 training images/s with the galmorph PyTorch model on pre-made batches (compute only)."""
    import torch

    from galmorph.backends import get
    from galmorph.core import specs
    from galmorph.data import augment

    torch.set_num_threads(os.cpu_count() or 1)
    backend = get("torch")
    maker = augment.BatchMaker(images, (2,))
    spec = specs.resolve("c2", maker.input_shape, 4)
    model = backend.build(spec)
    opt = torch.optim.Adam(model.parameters(), 2e-4, eps=1e-7)
    x = torch.from_numpy(maker.batch(np.arange(batch_size) % len(images)))
    y = torch.randint(0, 4, (batch_size,))
    for _ in range(2):  # warm-up
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - t0)


def memory_child(path: str, mode: str) -> None:
    """(child process) load, split, stream one epoch; print peak RSS in MB as JSON."""
    from galmorph.core.system import peak_rss_mb
    from galmorph.data import augment, bands, registry, splits

    data = registry.load(path)
    split = splits.stratified(data.labels, seed=0)
    maker = augment.BatchMaker(data.images, bands.channels("gri"))
    stream = augment.TrainStream(maker, split.train, data.labels, mode=mode, batch_size=400, seed=0)
    n = 0
    for x, _ in stream.epoch(0):
        n += x.shape[0]
    print(json.dumps({"mode": mode, "images_streamed": n, "peak_rss_mb": peak_rss_mb()}))


def peak_memory(n_images: int) -> list[dict]:
    from galmorph.data import synthetic

    path = synthetic.load_or_generate(n_images, 69, seed=0)
    out = []
    for mode in ("none", "random", "paper40"):
        proc = subprocess.run([sys.executable, __file__, "--memory-child", str(path), mode],
                              capture_output=True, text=True, check=True)
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def phys449_epoch(text_file: Path, n: int, batch_size: int) -> float:
    """The PHYS449 loader: for every batch, reread the whole text file and parse the batch's
    lines into int64 images (generously, it parses only the lines it needs). Seconds/epoch."""
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        wanted = set(order[start : start + batch_size].tolist())
        rows = []
        with open(text_file) as fh:
            for i, line in enumerate(fh):
                if i in wanted:
                    rows.append(np.array(line.split(), dtype=np.int64))
        batch = np.stack(rows).reshape(-1, 110, 110, 1).astype(np.float32) / 255.0
        assert batch.shape[0] == len(wanted)
    return time.perf_counter() - t0


def galmorph_epoch(images: np.ndarray, batch_size: int) -> float:
    from galmorph.data import augment

    maker = augment.BatchMaker(images, (2,), crop_fraction=1.0)
    stream = augment.TrainStream(maker, np.arange(len(images)), np.zeros(len(images), np.int64),
                                 mode="none", batch_size=batch_size, seed=0)
    t0 = time.perf_counter()
    for _ in stream.epoch(0, prefetch=0):
        pass
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="seconds-long version (CI checks the output format)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--memory-child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0

    from galmorph.data import synthetic

    tiny = args.tiny
    images, _ = synthetic.generate(200 if tiny else 2000, 69, seed=0)
    results: dict = {"tiny": tiny}
    say = lambda text="": print(text, flush=True)  # noqa: E731  (sections appear as they finish)
    say(f"# data pipeline benchmark{' (tiny)' if tiny else ''}: {os.cpu_count()} CPU(s)\n")

    # 1. pipeline vs training
    train = c2_training_rate(images, 64, 2 if tiny else 15)
    rates = {f"{mode}/{band}": pipeline_rate(images, mode, ch, 64, 0.3 if tiny else 3.0)
             for mode in ("paper40", "random", "none") for band, ch in (("g", (2,)), ("gri", (2, 1, 0)))}
    results["c2_train_images_per_s"] = train
    results["pipeline_images_per_s"] = rates
    results["pipeline_over_training"] = {k: v / train for k, v in rates.items()}
    say(f"C2 training (PyTorch, CPU, 63x63x1, batch 64): {train:,.0f} images/s\n")
    say("| augment/band | batches (images/s) | pipeline / C2 training |")
    say("|---|---:|---:|")
    for k, v in rates.items():
        say(f"| {k} | {v:,.0f} | {v / train:,.1f}x |")

    # 2. peak memory at Galaxy10 size
    results["peak_memory"] = peak_memory(400 if tiny else 21_785)
    say("\n| mode (gri, batch 400, 1 epoch) | images streamed | peak RSS (MB) |")
    say("|---|---:|---:|")
    for m in results["peak_memory"]:
        say(f"| {m['mode']} | {m['images_streamed']:,} | {m['peak_rss_mb']:,.0f} |")

    # 3. PHYS449 loader vs galmorph over one epoch of the same images (110x110 g band)
    n = 100 if tiny else 2000
    big, _ = synthetic.generate(n, 110, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "images.txt"
        with open(text, "w") as fh:
            for img in big[..., 2]:
                fh.write(" ".join(map(str, img.ravel().tolist())) + "\n")
        t_phys = phys449_epoch(text, n, 32)
    t_ours = galmorph_epoch(big, 32)
    results["phys449_epoch_s"], results["galmorph_epoch_s"] = t_phys, t_ours
    results["speedup_vs_phys449"] = t_phys / t_ours
    say(f"\nPHYS449 loader: {t_phys:.2f} s/epoch; galmorph: {t_ours:.4f} s/epoch over the same {n} "
        f"110x110 images -> {t_phys / t_ours:,.0f}x faster")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
