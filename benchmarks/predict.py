"""`galmorph predict` throughput (issue 11): the whole command on a folder of JPEGs against
the model's own inference rate, measured side by side in one run.

C2 (PyTorch, CPU) trained for one epoch on the GZ2 sample (quality does not matter here),
then N JPEGs of the sample's 69x69 images written to a temporary folder (repeating the
sample if N exceeds it) and:

- command: `galmorph predict RUN FOLDER --output ...` in a fresh process. Two figures: the
  whole process (interpreter, imports, model loading included) and its pipeline (from the
  loaded model to the CSVs written: finding, decoding and resizing the files, batching,
  predicting, writing), which galmorph.workflows.predict reports;
- model: the same loaded model (LoadedModel.predict, same batch size) on the same images
  already decoded into one uint8 array, in this process.

The ratio command / model is the target (>= 0.5: at least half the model's rate reaches the
user, decoding, resizing and writing included).

Survey mode (issue 20), `--survey N`: a Galaxy10-format .h5 of N rows of 69 px images (the
sample's images tiled, with an id per row, 256-row chunks, uncompressed) in a temporary
folder, deleted after, and `galmorph predict RUN FILE --output out.parquet` on it in fresh
processes:

- whole: one uninterrupted run; its peak RSS (VmHWM, read by the process at its end) and its
  pipeline rate against the same model's own rate on in-memory arrays of the file's first
  rows, measured in this process (target: RSS < 2 GB, ratio >= 0.8);
- kill and resume: a second run SIGKILLed just after the part that holds the middle row is
  written (galmorph.inference.parts.after_commit), then the same command again; its output
  is checked row by row against the uninterrupted one (every row once, in order, the same
  probabilities), reading both a row group at a time.

Usage:
  python benchmarks/predict.py                 # 2,000 JPEGs (a minute or two on 2 CPU cores)
  python benchmarks/predict.py --n 200 --tiny  # checks that it runs
  python benchmarks/predict.py --survey 1000000 [--tiny] [--part-size 10000]
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


def train_model(data: Path, tmp: Path, tiny: bool) -> str:
    """The run id of a C2 (torch) trained for one epoch on `data`."""
    from galmorph.config import TrainConfig
    from galmorph.workflows import train

    started = []
    train.run(TrainConfig(dataset=str(data), backend="torch", model="c2", epochs=1, quiet=True,
                          max_images=300 if tiny else 1000, width=0.25 if tiny else 1.0, experiment="bench-predict",
                          augment="none"), started=started.append)
    return started[0]


def write_jpegs(data: Path, folder: Path, n: int) -> np.ndarray:
    """N JPEGs (quality 95) of the sample's images; the images as uint8 (N, 69, 69, 3)."""
    import h5py
    from PIL import Image

    with h5py.File(data) as f:
        images = f["images"][:]
    images = images[np.arange(n) % len(images)]
    folder.mkdir(parents=True)
    for k, img in enumerate(images):
        Image.fromarray(img).save(folder / f"g{k:05d}.jpg", quality=95)
    return images


def model_rate(run_id: str, folder: Path, batch_size: int, repeats: int) -> float:
    """images/s of LoadedModel.predict on the folder's images, decoded beforehand (best of `repeats`)."""
    from galmorph.inference import inputs
    from galmorph.inference.model import load

    model = load(run_id)
    geometry = inputs.Geometry(model.info.image_side)
    images = np.stack([inputs.read_image(p, geometry) for p in sorted(folder.glob("*.jpg"))])
    return best_rate(model, images, batch_size, repeats)


def best_rate(model, images: np.ndarray, batch_size: int, repeats: int) -> float:
    """images/s of `model.predict` over `images` in batches, after a warm-up: the best of `repeats`."""
    model.predict(images[:batch_size])  # warm-up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for start in range(0, len(images), batch_size):
            model.predict(images[start:start + batch_size])
        best = max(best, len(images) / (time.perf_counter() - t0))
    return best


CHILD = """
import json, os, signal, sys
from galmorph.inference import parts
from galmorph.workflows import predict
run_id, inputs, output, batch_size, part_size, kill = sys.argv[1:]
if kill:
    parts.after_commit = lambda path: path.name == kill and os.kill(os.getpid(), signal.SIGKILL)
s = predict.run(predict.PredictConfig(model=run_id, inputs=inputs, output=output, batch_size=int(batch_size),
                                      part_size=int(part_size), quiet=True))
print('SUMMARY' + json.dumps({'n': s.n_predicted, 'failed': s.n_failed, 'pipeline_s': s.pipeline_seconds,
                              'model_s': s.model_seconds, 'peak_rss_mb': PEAK_RSS_MB()}))
"""
# the process's own high-water mark: ru_maxrss of a child counts the parent's size at the fork
PEAK = """
def PEAK_RSS_MB():
    line = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:'))
    return int(line.split()[1]) / 1024
"""


def predict_child(run_id: str, inputs: Path, out: Path, batch_size: int, part_size: int = 10000,
                  kill: str = "") -> dict:
    """`galmorph predict` (galmorph.workflows.predict.run) in a fresh process (`child`); with
    `kill`, SIGKILLed once the part of that name is written."""
    return child([PEAK + CHILD, run_id, str(inputs), str(out), str(batch_size), str(part_size), kill], out)


def child(code_and_args: list[str], logs: Path) -> dict:
    """`python -c CODE ARGS...` in a fresh process: its exit code, wall seconds, stderr and the
    summary it printed (None when killed)."""
    logs = logs.with_name(logs.name + ".log")
    t0 = time.perf_counter()
    with open(logs, "w") as err, open(logs.with_suffix(".out"), "w") as std:
        proc = subprocess.Popen([sys.executable, "-c", *code_and_args], stdout=std, stderr=err,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        proc.wait()
    wall = time.perf_counter() - t0
    stdout, stderr = logs.with_suffix(".out").read_text(), logs.read_text()
    line = next((ln for ln in stdout.splitlines() if ln.startswith("SUMMARY")), None)
    return {"code": proc.returncode, "wall_s": wall, "stderr": stderr,
            "summary": json.loads(line[7:]) if line else None}


def command(run_id: str, folder: Path, out: Path, batch_size: int) -> tuple[float, float, dict]:
    """(whole-process s, pipeline s, summary) of `galmorph predict` on the folder, fresh process."""
    got = predict_child(run_id, folder, out, batch_size)
    if got["code"] != 0:
        raise SystemExit(f"galmorph predict failed:\n{got['stderr'][-3000:]}")
    return got["wall_s"], got["summary"]["pipeline_s"], got["summary"]


def build_survey(data: Path, path: Path, n: int) -> None:
    """N rows of the sample's images, tiled, with id = row, as a Galaxy10-format file."""
    import h5py

    with h5py.File(data) as f:
        images, labels = f["images"][:], f["ans"][:]
    with h5py.File(path, "w") as out:
        ds = out.create_dataset("images", (n, *images.shape[1:]), np.uint8, chunks=(256, *images.shape[1:]))
        ans, ids = out.create_dataset("ans", (n,), labels.dtype), out.create_dataset("id", (n,), np.int64)
        for start in range(0, n, 8192):
            rows = np.arange(start, min(start + 8192, n))
            ds[rows[0]:rows[-1] + 1] = images[rows % len(images)]
            ans[rows[0]:rows[-1] + 1] = labels[rows % len(images)]
            ids[rows[0]:rows[-1] + 1] = rows


RATE = """
import importlib.util, json, sys
import h5py
from galmorph.inference.model import load
run_id, h5, batch_size, repeats, rows = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
spec = importlib.util.spec_from_file_location("predict_benchmark", sys.argv[6])  # this file, for best_rate
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
model = load(run_id)
with h5py.File(h5) as f:
    images = f["images"][:rows]
best = bench.best_rate(model, images, batch_size, repeats)
print('SUMMARY' + json.dumps({'img_s': best, 'n': len(images), 'peak_rss_mb': PEAK_RSS_MB()}))
"""


def in_memory_rate(run_id: str, h5: Path, batch_size: int, repeats: int, rows: int = 8192) -> dict:
    """LoadedModel.predict on the file's first rows, read into memory beforehand, in a fresh
    process like the command's: images/s (best of `repeats`) and that process's peak RSS."""
    got = child([PEAK + RATE, run_id, str(h5), str(batch_size), str(repeats), str(rows), str(Path(__file__).resolve())],
                h5.with_name("rate"))
    if got["code"] != 0:
        raise SystemExit(f"the model's rate failed:\n{got['stderr'][-3000:]}")
    summary = got["summary"]
    return {"img_s": summary["img_s"], "rows": summary["n"], "peak_rss_mb": summary["peak_rss_mb"]}


def same_rows(h5: Path, n: int, a: Path, b: Path) -> dict:
    """Whether parquet outputs `a` and `b` hold rows 0..n-1 of `h5` once each, in order, with
    the same values: compared a row group at a time."""
    import pyarrow.parquet as pq

    fa, fb = pq.ParquetFile(a), pq.ParquetFile(b)
    seen, differ, max_diff = 0, 0, 0.0
    for ta, tb in zip(fa.iter_batches(batch_size=8192), fb.iter_batches(batch_size=8192), strict=True):
        expected = [f"{h5}[{k}]" for k in range(seen, seen + ta.num_rows)]
        differ += sum(x != y for x, y in zip(ta.column("source").to_pylist(), expected))
        differ += sum(x != y for x, y in zip(tb.column("source").to_pylist(), expected))
        for name in ta.schema.names:
            if name.startswith("p_"):
                d = np.abs(ta.column(name).to_numpy() - tb.column(name).to_numpy())
                max_diff = max(max_diff, float(d.max(initial=0.0)))
        seen += ta.num_rows
    return {"rows": seen, "rows_out_of_place": differ, "max_abs_diff": max_diff,
            "every_row_once": seen == n and differ == 0}


def survey(args, run_id: str, tmp: Path) -> dict:
    h5 = tmp / "survey.h5"
    t0 = time.perf_counter()
    build_survey(Path(args.data), h5, args.survey)
    built_s = time.perf_counter() - t0
    whole = predict_child(run_id, h5, tmp / "whole.parquet", args.batch_size, args.part_size)
    if whole["code"] != 0:
        raise SystemExit(f"galmorph predict failed:\n{whole['stderr'][-3000:]}")
    middle = (args.survey // 2) // args.part_size  # the part holding the middle row
    killed = predict_child(run_id, h5, tmp / "resumed.parquet", args.batch_size, args.part_size,
                   kill=f"part-{middle:06d}.parquet")
    resumed = predict_child(run_id, h5, tmp / "resumed.parquet", args.batch_size, args.part_size)
    check = same_rows(h5, args.survey, tmp / "whole.parquet", tmp / "resumed.parquet")
    model = in_memory_rate(run_id, h5, args.batch_size, args.repeats)
    n, s = args.survey, whole["summary"]
    result = {"benchmark": "predict-survey", "n": n, "batch_size": args.batch_size, "part_size": args.part_size,
              "tiny": args.tiny, "file_gb": h5.stat().st_size / 1e9, "build_s": built_s,
              "model_img_s": model["img_s"], "model_rows": model["rows"], "model_peak_rss_mb": model["peak_rss_mb"],
              "pipeline_img_s": n / s["pipeline_s"], "process_img_s": n / whole["wall_s"],
              "pipeline_s": s["pipeline_s"], "process_s": whole["wall_s"], "model_s_in_pipeline": s["model_s"],
              "peak_rss_mb": s["peak_rss_mb"], "killed_code": killed["code"], "killed_after_part": middle,
              "resume_code": resumed["code"], "resume_stderr": resumed["stderr"].strip().splitlines()[-1:],
              "resume_peak_rss_mb": resumed["summary"]["peak_rss_mb"], **check,
              "platform": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    result["ratio"] = result["pipeline_img_s"] / model["img_s"]
    return result


def survey_markdown(r: dict) -> str:
    ok = r["every_row_once"] and r["killed_code"] == -9 and r["resume_code"] == 0
    return "\n".join([
        f"# galmorph predict, survey scale: {r['n']:,} rows of a 69 px .h5 ({r['file_gb']:.2f} GB), "
        f"C2{' (tiny)' if r['tiny'] else ''}, PyTorch, CPU ({r['platform']})", "",
        "| figure | value |", "|---|---|",
        f"| model alone ({r['model_rows']:,} rows in memory, LoadedModel.predict, fresh process) | "
        f"{r['model_img_s']:.0f} img/s |",
        f"| galmorph predict, pipeline (loaded model -> Parquet assembled) | {r['pipeline_img_s']:.0f} img/s |",
        f"| galmorph predict, whole process ({r['process_s']:.0f} s) | {r['process_img_s']:.0f} img/s |",
        f"| the model's forward passes inside the pipeline ({r['model_s_in_pipeline']:.0f} of {r['pipeline_s']:.0f} s) | "
        f"{r['model_s_in_pipeline'] / r['pipeline_s']:.0%} of its time |",
        f"| peak RSS of the predict process | {r['peak_rss_mb']:.0f} MB |",
        f"| peak RSS of the model-alone process (the model loaded, {r['model_rows']:,} rows in memory) | "
        f"{r['model_peak_rss_mb']:.0f} MB |",
        f"| killed after part {r['killed_after_part']} (exit {r['killed_code']}), rerun (exit {r['resume_code']}) | "
        f"{r['rows']:,} rows, {r['rows_out_of_place']} out of place, max abs diff {r['max_abs_diff']:.1e} |", "",
        f"ratio pipeline / model: {r['ratio']:.2f} (target >= 0.8: {'met' if r['ratio'] >= 0.8 else 'NOT met'}; the two "
        "are separate processes on shared cores: the share of the pipeline's time in the forward passes, measured "
        "inside one process, is the steadier figure); "
        f"peak RSS < 2 GB: {'met' if r['peak_rss_mb'] < 2048 else 'NOT met'}; kill and resume, every row once "
        f"with the uninterrupted run's values: {'yes' if ok and r['max_abs_diff'] == 0 else 'NO'}", ""])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="JPEGs in the folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="timings of the model alone (the best is kept)")
    p.add_argument("--tiny", action="store_true", help="C2 at width 0.25 trained on 300 images: checks that it runs")
    p.add_argument("--data", default=str(SAMPLE), help="Galaxy10-format .h5 of 69x69 images")
    p.add_argument("--out", default=None, help="folder for predict.md / predict.json (survey: predict-survey.*)")
    p.add_argument("--survey", type=int, default=0, metavar="N",
                   help="survey mode: N rows of a 69 px .h5 instead of the JPEG folder (the issue's figure: 1000000)")
    p.add_argument("--part-size", type=int, default=10000, help="survey mode: galmorph predict --part-size")
    p.add_argument("--tmp", default=None, help="folder for the temporary files (default: the system's)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-predict-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        os.environ.setdefault("GALMORPH_CACHE", str(tmp / "cache"))
        run_id = train_model(Path(args.data), tmp, args.tiny)
        if args.survey:
            return _report(survey(args, run_id, tmp), survey_markdown, "predict-survey", args.out)
        write_jpegs(Path(args.data), tmp / "jpegs", args.n)
        wall, pipeline_s, summary = command(run_id, tmp / "jpegs", tmp / "p.csv", args.batch_size)
        model = model_rate(run_id, tmp / "jpegs", args.batch_size, args.repeats)
    assert summary["n"] == args.n and summary["failed"] == 0, summary
    result = {"benchmark": "predict", "n": args.n, "batch_size": args.batch_size, "tiny": args.tiny,
              "model_img_s": model, "command_pipeline_img_s": args.n / pipeline_s, "command_process_img_s": args.n / wall,
              "process_s": wall, "pipeline_s": pipeline_s, "platform": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    result["ratio"] = result["command_pipeline_img_s"] / model
    result["ratio_process"] = result["command_process_img_s"] / model
    md = "\n".join([
        f"# galmorph predict: {args.n} JPEGs, C2{' (tiny)' if args.tiny else ''}, PyTorch, CPU ({result['platform']})", "",
        "| figure | img/s |", "|---|---|",
        f"| model alone (decoded images, LoadedModel.predict) | {model:.0f} |",
        f"| galmorph predict, pipeline (loaded model -> CSVs written) | {result['command_pipeline_img_s']:.0f} |",
        f"| galmorph predict, whole process ({wall:.1f} s: start-up and model loading included) | "
        f"{result['command_process_img_s']:.0f} |", "",
        f"ratio pipeline / model: {result['ratio']:.2f} (target >= 0.5: {'met' if result['ratio'] >= 0.5 else 'NOT met'}); "
        f"whole process / model: {result['ratio_process']:.2f}", ""])
    return _report(result, lambda _: md, "predict", args.out)


def _report(result: dict, markdown, name: str, out: str | None) -> int:
    md = markdown(result)
    print(md)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.md").write_text(md)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
