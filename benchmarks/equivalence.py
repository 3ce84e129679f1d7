"""Do the performance paths change results? Test accuracy with and without each (issue 6).

Trains C2 through the real `galmorph.workflows.train.run` (TrainStream, backend fit, the neutral
reporter, MLflow) for every backend x path x seed, each run in a fresh process, on the same
data and split per seed, and compares each path's mean test accuracy with the plain fp32
path's. "Within noise" means |difference| <= 2 x the standard error of the difference,
estimated from the seed-to-seed spread of both variants (a Welch-style two-sample bound).

Paths: PyTorch fp32 (baseline), bf16 autocast, channels-last, torch.compile; Keras fp32
(baseline), mixed_bfloat16, XLA. fp16 is left to the tiny test (tests/test_performance.py):
without fp16 hardware on a CPU it is emulated and very slow.

Usage: python benchmarks/equivalence.py [--seeds 3] [--epochs 6] [--synthetic-n 800] [--width 0.5]
       [--dataset PATH] [--backends torch,keras] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

PATHS = {
    "torch": {"fp32": {"precision": "fp32", "compile": "false", "channels_last": "false"},
              "bf16": {"precision": "bf16", "compile": "false", "channels_last": "false"},
              "channels_last": {"precision": "fp32", "compile": "false", "channels_last": "true"},
              "compile": {"precision": "fp32", "compile": "true", "channels_last": "false"}},
    "keras": {"fp32": {"precision": "fp32", "compile": "false"},
              "bf16": {"precision": "bf16", "compile": "false"},
              "xla": {"precision": "fp32", "compile": "true"}},
}

CHILD = """
import json, sys
from galmorph.config import TrainConfig
from galmorph.workflows.train import run
m = run(TrainConfig(**json.loads(sys.argv[1])))
print(json.dumps({k: m[k] for k in ("test_accuracy", "test_log_loss", "epochs_run", "fit_time_s") if k in m}))
"""


def one(config: dict, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(results: dict) -> list[dict]:
    rows = []
    for backend, paths in results.items():
        base = [r["test_accuracy"] for r in paths["fp32"]]
        for name, runs in paths.items():
            acc = [r["test_accuracy"] for r in runs]
            mean, sd = _mean_sd(acc)
            bmean, bsd = _mean_sd(base)
            diff = mean - bmean
            se = math.sqrt(sd**2 / len(acc) + bsd**2 / len(base)) if len(acc) > 1 else float("nan")
            paired = [a - b for a, b in zip(acc, base)]
            rows.append({"backend": backend, "path": name, "seeds": len(acc), "test_accuracy": acc,
                         "mean": mean, "sd": sd, "diff_vs_fp32": diff, "se_diff": se,
                         "paired_diffs": paired, "within_noise": name == "fp32" or abs(diff) <= 2 * se,
                         "fit_time_s": _mean_sd([r["fit_time_s"] for r in runs])[0]})
    return rows


def _mean_sd(xs):
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"C2 (width {meta['width']}) on {meta['dataset']} ({meta['n']} images), {meta['epochs']} epochs, "
             f"batch {meta['batch_size']}, Adam {meta['learning_rate']:g}, "
             f"seeds {', '.join(map(str, range(meta['seeds'])))}; test accuracy per seed; within noise = "
             "|mean difference| <= 2 standard errors of the difference.", "",
             "| backend | path | test accuracy per seed | mean ± sd | diff vs fp32 | 2 x s.e. | within noise | fit s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['path']} | {', '.join(f'{a:.3f}' for a in r['test_accuracy'])} | "
                     f"{r['mean']:.3f} ± {r['sd']:.3f} | {r['diff_vs_fp32']:+.3f} | {2 * r['se_diff']:.3f} | "
                     f"{'yes' if r['within_noise'] else 'NO'} | {r['fit_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    p.add_argument("--learning-rate", dest="learning_rate", type=float, default=5e-4)
    p.add_argument("--width", type=float, default=1.0, help="C2 filter multiplier (0.5 for a quicker check)")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--synthetic-n", dest="synthetic_n", type=int, default=800)
    p.add_argument("--backends", default="torch,keras")
    p.add_argument("--paths", default="", help="comma-separated subset of the paths (fp32 is always run)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--experiment", default="galmorph-equivalence")
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args(argv)
    wanted = set(args.paths.split(",")) | {"fp32"} if args.paths else None
    results: dict = {}
    t0 = time.time()
    for backend in args.backends.split(","):
        results[backend] = {}
        for name, path in PATHS[backend].items():
            if wanted and name not in wanted:
                continue
            runs = []
            for seed in range(args.seeds):
                config = {"backend": backend, "model": "c2", "dataset": args.dataset, "synthetic_n": args.synthetic_n,
                          "epochs": args.epochs, "batch_size": args.batch_size, "patience": 0, "seed": seed,
                          "learning_rate": args.learning_rate, "width": args.width,
                          "log_model": False, "experiment": args.experiment,
                          "run_name": f"equivalence-{backend}-{name}-seed{seed}", **path}
                runs.append(one(config, args.timeout))
                print(backend, name, seed, runs[-1], flush=True)
            results[backend][name] = runs
    rows = summarise(results)
    meta = {"dataset": args.dataset, "n": args.synthetic_n if args.dataset == "synthetic" else "all",
            "epochs": args.epochs, "batch_size": args.batch_size, "seeds": args.seeds, "wall_s": time.time() - t0,
            "learning_rate": args.learning_rate, "width": args.width,
            "load_average": os.getloadavg()}
    md = markdown(rows, meta)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "equivalence.md").write_text(md)
    (out / "equivalence.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
