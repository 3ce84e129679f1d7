"""Streaming benchmark (issue 20): C2 trains on a Galaxy10-format file larger than the memory
its process may use, and as fast as in memory. Figures printed as ratios measured side by side.

1. Builds a 128 px Galaxy10-format file of `--file-ratio` x the memory cap under benchmarks/
   from the synthetic generator: `--pool` generated galaxies, written in their 8 rotations and
   mirrors over and over (rendering every row would take hours on 2 cores; the pipeline reads
   the bytes the same way), in chunks of 128 rows, uncompressed; and a subset file of its
   first rows that fits in memory (under 25 % of the cap, so `--stream auto` keeps it there).
2. In a cgroup (v1) whose memory.limit_in_bytes is the cap, in a fresh process each, with
   `--stream auto`: galmorph's own preparation (load, digest, split by galaxy) and `--steps`
   C2 training steps of the PyTorch backend fed by galmorph's pipeline (after `--warmup`
   steps): the big file streamed, the subset in memory, alternated `--rounds` times. The big file's pages are dropped from
   the page cache first (posix_fadvise), so it is read from disk.
   (With --tiny the big file is streamed by `--stream true`: it fits.)
3. Prints images/s of each, the median over rounds of their ratio (target >= 0.9), the streamed process's peak RSS
   (target < 4 GB, and under the cap) and the cgroup's peak usage (page cache included), then
   deletes both files.

Usage: python benchmarks/streaming.py [--cap-gb 2] [--file-ratio 1.6] [--steps 30] [--json out.json]
       python benchmarks/streaming.py --tiny        (small sizes and no cap: a format check)
Needs root for the cgroup; `--cap-gb 0` runs without one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def build(path: Path, rows: int, size: int, pool: int, chunk: int = 128) -> None:
    """A Galaxy10-format file of `rows` images: `pool` synthetic galaxies in their 8 dihedral
    variants, repeated; `id` = row (each row its own galaxy for the split)."""
    import h5py

    from galmorph.data import synthetic

    images, labels = synthetic.generate(pool, size, seed=7)
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as fh:
        ds = fh.create_dataset("images", (rows, size, size, 3), np.uint8, chunks=(chunk, size, size, 3))
        ans = np.empty(rows, np.uint8)
        for start in range(0, rows, chunk):
            k = np.arange(start, min(rows, start + chunk))
            j, variant = k % pool, (k // pool) % 8
            block = images[j].copy()
            for v in range(8):
                sel = variant == v
                if sel.any():
                    turned = np.rot90(images[j[sel]], k=v % 4, axes=(1, 2))
                    block[sel] = turned[:, :, ::-1] if v >= 4 else turned
            ds[start : start + k.size] = block
            ans[k] = labels[j]
        fh.create_dataset("ans", data=ans)
        fh.create_dataset("id", data=np.arange(rows, dtype=np.int64))
        fh.attrs["class_names"] = list(synthetic.CLASS_NAMES)
    tmp.rename(path)


def copy_head(src: Path, dst: Path, rows: int) -> None:
    import h5py

    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        b.create_dataset("images", data=a["images"][:rows], chunks=a["images"].chunks)
        for key in ("ans", "id"):
            b.create_dataset(key, data=a[key][:rows])
        b.attrs["class_names"] = a.attrs["class_names"]


def drop_cached(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def child(args) -> None:
    """(child process) prepare as `galmorph train` does, then time C2 training steps."""
    from galmorph.backends import get
    from galmorph.backends.torch import train as ttrain
    from galmorph.config import TrainConfig
    from galmorph.core import specs, system
    from galmorph.workflows.prepare import hyper_from, prepare, train_stream

    cfg = TrainConfig(dataset=args.file, backend="torch", model="c2", width=args.width, stream=args.stream,
                      batch_size=args.batch_size, epochs=1, threads=args.threads, seed=0, augment="random")
    t0 = time.perf_counter()
    prep = prepare(cfg)
    digest = prep.data.digest()
    prep_s = time.perf_counter() - t0
    backend = get("torch")
    backend.setup(cfg.seed, cfg.threads, cfg.devices)
    n_classes = len(prep.data.class_names)
    spec = specs.resolve("c2", prep.maker.input_shape, n_classes, **cfg.arch_kwargs())
    hyper = hyper_from(cfg, prep.data.labels[prep.split.train], n_classes)
    model = backend.build(spec, hyper)
    dev = ttrain.device()
    trainer = ttrain._Trainer(model, hyper, dev, ttrain.settings(hyper))
    trainer.model.train()
    seen, t_start = 0, None
    batches = ttrain.device_batches(train_stream(cfg, prep), 0, dev, trainer.settings)
    for i, (xb, yb) in enumerate(batches):
        if i == args.warmup:
            seen, t_start = 0, time.perf_counter()
        loss, _ = trainer.step(xb, yb)
        float(loss)
        seen += int(yb.shape[0])
        if i + 1 == args.warmup + args.steps:
            break
    rate = seen / (time.perf_counter() - t_start)
    batches.close()
    print(json.dumps({"img_s": rate, "peak_rss_mb": system.peak_rss_mb(), "prep_s": prep_s, "digest": digest,
                      "streamed": bool(prep.data.meta["stream"]), "reason": prep.data.meta["stream_reason"],
                      "n_images": len(prep.data), "input_shape": list(prep.maker.input_shape)}))


class Cgroup:
    """A cgroup-v1 memory group with a limit, or nothing when `cap` is 0."""

    def __init__(self, cap: int):
        self.cap = cap
        self.path = CGROUP_ROOT / f"galmorph-bench-{os.getpid()}" if cap else None

    def __enter__(self):
        if self.path is not None:
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(self.cap))
        return self

    def enter(self) -> None:
        """(preexec_fn of a child) move this process into the group."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_mb(self) -> float | None:
        if self.path is None:
            return None
        return int((self.path / "memory.max_usage_in_bytes").read_text()) / 2**20

    def reset_peak(self) -> None:
        if self.path is not None:
            (self.path / "memory.max_usage_in_bytes").write_text("0")

    def __exit__(self, *exc):
        if self.path is not None:
            self.path.rmdir()


def run_child(group: Cgroup, args, file: Path, stream: str = "auto") -> dict:
    cmd = [sys.executable, __file__, "--child", "--file", str(file), "--stream", stream, "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--batch-size", str(args.batch_size), "--width", str(args.width), "--threads",
           str(args.threads)]
    group.reset_peak()
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=group.enter,
                          env={**os.environ, "GALMORPH_CACHE": str(args.work / "cache")})
    if proc.returncode != 0:
        raise SystemExit(f"child on {file.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["cgroup_peak_mb"] = group.peak_mb()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cap-gb", type=float, default=2.0, help="memory cap of the training processes (0: none)")
    p.add_argument("--file-ratio", type=float, default=1.6, help="decoded size of the big file / the cap")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--pool", type=int, default=1024, help="distinct synthetic galaxies rendered")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2, help="alternated in-memory and streamed runs of each")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny sizes, no cap: checks the output's shape")
    p.add_argument("--keep", action="store_true", help="keep the files")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--stream", default="auto", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.tiny:
        args.cap_gb, args.size, args.pool, args.steps, args.warmup, args.width = 0, 64, 32, 2, 1, 0.25
        args.batch_size, args.rounds = 16, 1
    cap = int(args.cap_gb * 2**30)
    per_image = args.size * args.size * 3
    rows = 512 if args.tiny else int(args.file_ratio * cap / per_image)
    subset = 256 if args.tiny else int(0.2 * cap / per_image)
    args.work = HERE / f"_streaming-{os.getpid()}"
    args.work.mkdir()
    big, small = args.work / "big.h5", args.work / "subset.h5"
    load = os.getloadavg()
    try:
        t0 = time.perf_counter()
        build(big, rows, args.size, args.pool)
        copy_head(big, small, subset)
        build_s = time.perf_counter() - t0
        drop_cached(big)
        with Cgroup(cap) as group:  # alternated, so that a change of the machine's load hits both alike
            rounds = [(run_child(group, args, small), run_child(group, args, big, "true" if args.tiny else "auto"))
                      for _ in range(args.rounds)]  # (tiny: the big file is too small for auto to stream it)
        memory, streamed = (_mean([r[k] for r in rounds]) for k in (0, 1))
    finally:
        if not args.keep:
            for f in args.work.rglob("*"):
                if f.is_file():
                    f.unlink()
            for d in sorted((d for d in args.work.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
                d.rmdir()
            args.work.rmdir()
    result = {"benchmark": "streaming", "tiny": args.tiny, "cap_mb": cap / 2**20 if cap else None,
              "file_mb": big_bytes(rows, per_image), "rows": rows, "subset_rows": subset, "size": args.size,
              "build_s": build_s, "load_before": load, "load_after": os.getloadavg(), "cpus": os.cpu_count(),
              "in_memory": memory, "streamed": streamed,
              # each round's two runs are side by side in time: the median of their ratios
              "round_ratios": [s["img_s"] / m["img_s"] for m, s in rounds],
              "ratio": float(np.median([s["img_s"] / m["img_s"] for m, s in rounds])),
              "settings": {k: getattr(args, k) for k in ("steps", "warmup", "batch_size", "width", "threads", "pool", "rounds")}}
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def _mean(results: list[dict]) -> dict:
    """The first result, with img_s the mean of all (each round's kept) and the peaks the largest."""
    out = dict(results[0])
    out["img_s_rounds"] = [r["img_s"] for r in results]
    out["img_s"] = float(np.mean(out["img_s_rounds"]))
    for key in ("peak_rss_mb", "cgroup_peak_mb", "prep_s"):
        values = [r[key] for r in results if r[key] is not None]
        out[key] = max(values) if values else None
    return out


def big_bytes(rows: int, per_image: int) -> float:
    return rows * per_image / 2**20


def report(r: dict) -> str:
    m, s = r["in_memory"], r["streamed"]
    cap = f"{r['cap_mb']:.0f} MB (cgroup v1 memory.limit_in_bytes)" if r["cap_mb"] else "none"
    lines = [
        f"streaming benchmark: {r['rows']} images of {r['size']} px ({r['file_mb']:.0f} MB decoded), memory cap {cap}",
        f"machine: {r['cpus']} CPUs, load average {r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after",
        "| run | images | streamed | why | prep s | train img/s | peak RSS MB | cgroup peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, x in (("in memory (subset)", m), ("streamed (whole file)", s)):
        peak = "n/a" if x["cgroup_peak_mb"] is None else f"{x['cgroup_peak_mb']:.0f}"
        rates = " + ".join(f"{v:.1f}" for v in x["img_s_rounds"])
        lines.append(f"| {name} | {x['n_images']} | {str(x['streamed']).lower()} | {x['reason']} | {x['prep_s']:.1f} | "
                     f"{x['img_s']:.1f} (mean of {rates}) | {x['peak_rss_mb']:.0f} | {peak} |")
    lines += ["", "| ratio | value | target met |", "|---|---|---|",
              f"| streamed / in-memory img/s >= 0.9 (median over rounds of "
              f"{', '.join(f'{x:.3f}' for x in r['round_ratios'])}) | {r['ratio']:.3f} | "
              f"{'yes' if r['ratio'] >= 0.9 else 'no'} |",
              f"| file / cap >= 1.5 | {r['file_mb'] / r['cap_mb']:.2f} | "
              f"{'yes' if r['file_mb'] >= 1.5 * r['cap_mb'] else 'no'} |" if r["cap_mb"] else
              "| file / cap >= 1.5 | n/a (no cap) | n/a |",
              f"| streamed peak RSS < 4096 MB | {s['peak_rss_mb']:.0f} | {'yes' if s['peak_rss_mb'] < 4096 else 'no'} |"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
