"""`galmorph predict --spark local[2]` against `galmorph predict` on the same 2 CPU cores,
measured side by side in one run (issue 20: Spark at least 0.7x predict, outputs equal to 1e-6).

C2 (PyTorch, CPU) trained for one epoch on the GZ2 sample (quality does not matter here),
then a Galaxy10-format .h5 of N of the sample's 69x69 images (repeated as needed), and, each
in a fresh process and in turn (never at once):

- predict: `galmorph predict RUN FILE.h5 --output p.csv` (one process; PyTorch's threads
  on the machine's cores);
- spark: `galmorph predict RUN FILE.h5 --spark local[2] --output s.parquet` (the driver plus
  two Python workers, one PyTorch thread each: Spark gives a worker spark.task.cpus threads).

Both figures are whole processes, interpreter start, model loading and (for Spark) the JVM
and its workers included: that is what a user waits for. The pair runs --repeats times, one
command after the other (a shared machine's load changes by the minute); printed: seconds and
images/s of each, the ratio spark / predict of every pair and their median (target >= 0.7),
and the largest absolute difference between the two outputs' probabilities, row by row
(target <= 1e-6).

Usage:
  python benchmarks/spark.py                     # 20,000 images
  python benchmarks/spark.py --n 4000            # a few minutes on 2 shared CPU cores
  python benchmarks/spark.py --n 300 --tiny --repeats 1   # checks that it runs
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

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE = REPO.parent / "shared" / "data" / "gz2_zhu5_sample.h5"
sys.path.insert(0, str(HERE))

from predict import train_model  # noqa: E402  (benchmarks/predict.py: the same C2, one epoch)


def write_h5(data: Path, path: Path, n: int) -> None:
    """A Galaxy10-format file of N of `data`'s images (repeated), with ids."""
    from galmorph.data import hdf5

    raw = hdf5.read(data)
    pick = np.arange(n) % len(raw.images)
    hdf5.write(path, raw.images[pick], raw.labels[pick], list(raw.class_names), id=np.arange(n))


def timed(argv: list[str]) -> float:
    """Seconds of `python -m galmorph ARGV` in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "galmorph", *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"galmorph {' '.join(argv[:1])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000, help="images in the .h5 file (69x69)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--master", default="local[2]", help="the Spark master")
    p.add_argument("--repeats", type=int, default=3, help="pairs of runs, one of each in turn (the median ratio)")
    p.add_argument("--tiny", action="store_true", help="C2 at width 0.25 trained on 300 images: checks that it runs")
    p.add_argument("--data", default=str(SAMPLE), help="Galaxy10-format .h5 of 69x69 images")
    p.add_argument("--out", default=None, help="folder for spark.md / spark.json")
    args = p.parse_args(argv)
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        os.environ.setdefault("GALMORPH_CACHE", str(tmp / "cache"))
        run_id = train_model(Path(args.data), tmp, args.tiny)
        h5 = tmp / "galaxies.h5"
        write_h5(Path(args.data), h5, args.n)
        common = [run_id, str(h5), "--batch-size", str(args.batch_size), "--quiet"]
        pairs = []
        for _ in range(args.repeats):  # in turn, so that both meet the same load
            pairs.append((timed(["predict", *common, "--output", str(tmp / "p.csv")]),
                          timed(["predict", *common, "--spark", args.master, "--output", str(tmp / "s.parquet")])))
        ref, got = pd.read_csv(tmp / "p.csv", dtype={"id": str}), pd.read_parquet(tmp / "s.parquet")
    assert len(ref) == len(got) == args.n and list(ref["source"]) == list(got["source"])
    names = [c for c in ref.columns if c.startswith("p_")]
    diff = float(np.abs(ref[names].to_numpy() - got[names].to_numpy()).max())
    ratios = [p / s for p, s in pairs]
    ratio = float(np.median(ratios))
    result = {"benchmark": "spark", "n": args.n, "batch_size": args.batch_size, "master": args.master,
              "tiny": args.tiny, "pairs_s": pairs, "ratios": ratios, "ratio": ratio, "max_abs_diff": diff,
              "same_predicted": bool((ref["predicted"] == got["predicted"]).all()),
              "platform": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    ok_ratio, ok_diff = ratio >= 0.7, diff <= 1e-6
    rows = [f"| {k + 1} | {p:.1f} ({args.n / p:.0f}) | {s:.1f} ({args.n / s:.0f}) | {p / s:.2f} |"
            for k, (p, s) in enumerate(pairs)]
    md = "\n".join([
        f"# galmorph predict --spark {args.master} vs galmorph predict: {args.n} images of 69x69, "
        f"C2{' (tiny)' if args.tiny else ''}, PyTorch, CPU ({result['platform']})", "",
        "| run | galmorph predict: s (img/s) | --spark: s (img/s) | ratio |", "|---|---|---|---|", *rows, "",
        f"median ratio spark / predict: {ratio:.2f} (target >= 0.7: {'met' if ok_ratio else 'NOT met'}); "
        f"max |p_spark - p_predict|: {diff:.1e} (target <= 1e-6: {'met' if ok_diff else 'NOT met'}); "
        f"same predicted class on every row: {result['same_predicted']}", ""])
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "spark.md").write_text(md)
        (out / "spark.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
