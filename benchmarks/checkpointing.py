"""Per-epoch cost of checkpoints and progress lines (issue 10), side by side in one run.

C2 on the synthetic set, each backend in a process of its own (one framework per process),
the backend's own `fit` with the neutral reporter in five modes, taken in turns (round k
runs every mode once, the order rotating) so that a change of machine load hits all alike:

- plain: no checkpoints, no progress (`--checkpoints false --quiet`), the baseline;
- lines: one plain progress line per epoch (logs, `mlflow run`, CI), no checkpoints;
- bar: the terminal's tqdm bar, moved after every batch (written to /dev/null), no checkpoints;
- checkpoints: a checkpoint after every epoch (galmorph.core.checkpoints: the backend's
  save_state, sha256 of the files, the best weights linked, the folder renamed into place);
- both: checkpoints and one plain progress line per epoch (what `galmorph train` does in a log).

An epoch's wall time runs from one start_epoch to the next (the last one to the end of fit):
training, BN re-estimation, validation, the reporter and the checkpoint, everything the user
waits for. Each fit's first epoch (graph building, warm-up) is left out; the figure is the
median. The ratio mode / plain above 1 is the overhead (target: under 1.02). The seconds
spent inside the checkpoint's save are also timed on their own (median), and given as a
fraction of the plain epoch: on a shared, loaded machine the wall-time ratios wander by more
than the 2 % being measured, that fraction does not.

Usage:
  python benchmarks/checkpointing.py             # the benchmark (minutes on 2 CPU cores)
  python benchmarks/checkpointing.py --tiny      # seconds: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent))

MODES = ("plain", "lines", "bar", "checkpoints", "both")


def measure(backend_name: str, n: int, epochs: int, rounds: int, batch_size: int) -> dict:
    """Per-epoch wall seconds of each mode (every steady epoch of every round), in this process."""
    import numpy as np

    from galmorph import backends
    from galmorph.config import TrainConfig
    from galmorph.core import checkpoints, progress, specs, training
    from galmorph.data import augment
    from galmorph.workflows.prepare import hyper_from, prepare, train_stream

    config = TrainConfig(backend=backend_name, dataset="synthetic", synthetic_n=n, epochs=epochs,
                         batch_size=batch_size, patience=0, threads=0)
    prepared = prepare(config)
    data, split, maker = prepared.data, prepared.split, prepared.maker
    spec = specs.resolve("c2", maker.input_shape, len(data.class_names))
    backend = backends.get(backend_name)
    backend.setup(config.seed)
    hyper = hyper_from(config, data.labels[split.train], len(data.class_names))
    model = backend.build(spec, hyper)
    stream = train_stream(config, prepared)
    val_batches = lambda: augment.eval_batches(maker, split.val, config.eval_batch_size)  # noqa: E731
    times: dict[str, list[float]] = {m: [] for m in MODES}
    state_bytes, saving = 0, []
    # an untimed fit first: graph building, allocator and thread pools warm for every mode alike
    model = backend.fit(model, stream, val_batches, hyper, training.EpochReporter(data.labels[split.val]))
    with open(os.devnull, "w") as sink, tempfile.TemporaryDirectory(prefix="galmorph-bench-") as tmp:
        for r in range(rounds):
            for mode in MODES[r % len(MODES):] + MODES[: r % len(MODES)]:
                shown = progress.EpochProgress(epochs, stream.images_per_epoch, stream=sink, bar=mode == "bar") \
                    if mode in ("lines", "bar", "both") else None
                saver = checkpoints.Checkpointer(f"bench-{r}-{mode}", backend_name, folder=Path(tmp) / f"{r}-{mode}") \
                    if mode in ("checkpoints", "both") else None
                if saver is not None:  # the checkpoint's own seconds, apart: a figure that load noise cannot hide
                    save = saver.save

                    def timed_save(*a, _save=save, **k):
                        t0 = time.perf_counter()
                        try:
                            return _save(*a, **k)
                        finally:
                            saving.append(time.perf_counter() - t0)

                    saver.save = timed_save
                reporter = training.EpochReporter(data.labels[split.val], progress=shown)
                starts = []
                start_epoch = reporter.start_epoch
                reporter.start_epoch = lambda *a: (starts.append(time.perf_counter()), start_epoch(*a))[1]
                model = backend.fit(model, stream, val_batches, hyper, reporter, saver)
                starts.append(time.perf_counter())
                times[mode] += list(np.diff(starts)[1:])  # the first epoch warms up
                if saver is not None:
                    state_bytes = (checkpoints.latest(saver.folder) / "state").stat().st_size
    return {"backend": backend_name, "images_per_epoch": stream.images_per_epoch, "batches": len(stream),
            "state_mb": state_bytes / 2**20, "save_s": float(np.median(saving)), "epoch_s": {m: float(np.median(t)) for m, t in times.items()},
            "epochs_timed": {m: len(t) for m, t in times.items()}}


def table(rows: list[dict]) -> str:
    others = MODES[1:]
    out = ["| backend | images/epoch | state MB | plain s/epoch | " + " | ".join(f"{m} / plain" for m in others)
           + " | one checkpoint s | checkpoint / plain epoch |", "|---" * (len(others) + 6) + "|"]
    for r in rows:
        e = r["epoch_s"]
        out.append(f"| {r['backend']} | {r['images_per_epoch']} | {r['state_mb']:.1f} | {e['plain']:.3f} | "
                   + " | ".join(f"{e[m] / e['plain']:.3f}" for m in others)
                   + f" | {r['save_s']:.3f} | {r['save_s'] / e['plain']:.4f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="keras,torch")
    p.add_argument("--n", type=int, default=1000, help="synthetic images (70 %% train)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per fit (the first is not timed)")
    p.add_argument("--rounds", type=int, default=3, help="fits per mode, taken in turns")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tiny", action="store_true", help="160 images, 2 epochs, 1 round: checks that it runs")
    p.add_argument("--out", default=None, help="folder for checkpointing.md / checkpointing.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one backend here
    args = p.parse_args(argv)
    if args.tiny:
        args.n, args.epochs, args.rounds = 160, 2, 1
    if args.one:
        print(json.dumps(measure(args.one, args.n, args.epochs, args.rounds, args.batch_size)))
        return 0
    rows = []
    for name in args.backends.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--n", str(args.n), "--epochs", str(args.epochs),
               "--rounds", str(args.rounds), "--batch-size", str(args.batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            return proc.returncode
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # each backend's figures as soon as they exist
    md = table(rows)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                "n": args.n, "epochs": args.epochs, "rounds": args.rounds, "batch_size": args.batch_size}
        (out / "checkpointing.md").write_text(md + "\n")
        (out / "checkpointing.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
