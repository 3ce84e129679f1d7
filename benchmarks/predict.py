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

Usage:
  python benchmarks/predict.py                 # 2,000 JPEGs (a minute or two on 2 CPU cores)
  python benchmarks/predict.py --n 200 --tiny  # checks that it runs
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
    model.predict(images[:batch_size])  # warm-up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for start in range(0, len(images), batch_size):
            model.predict(images[start:start + batch_size])
        best = max(best, len(images) / (time.perf_counter() - t0))
    return best


def command(run_id: str, folder: Path, out: Path, batch_size: int) -> tuple[float, float, str]:
    """(whole-process s, pipeline s, stdout) of `galmorph predict` on the folder, fresh process."""
    code = ("import json, sys; from galmorph.workflows import predict; "
            "s = predict.run(predict.PredictConfig(model=sys.argv[1], inputs=sys.argv[2], output=sys.argv[3], "
            "batch_size=int(sys.argv[4]), quiet=True)); "
            "print('SUMMARY' + json.dumps({'n': s.n_predicted, 'failed': s.n_failed, 'pipeline_s': s.pipeline_seconds}))")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, run_id, str(folder), str(out), str(batch_size)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"galmorph predict failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY"))[7:])
    return wall, summary["pipeline_s"], summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="JPEGs in the folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="timings of the model alone (the best is kept)")
    p.add_argument("--tiny", action="store_true", help="C2 at width 0.25 trained on 300 images: checks that it runs")
    p.add_argument("--data", default=str(SAMPLE), help="Galaxy10-format .h5 of 69x69 images")
    p.add_argument("--out", default=None, help="folder for predict.md / predict.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        os.environ.setdefault("GALMORPH_CACHE", str(tmp / "cache"))
        run_id = train_model(Path(args.data), tmp, args.tiny)
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
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "predict.md").write_text(md)
        (out / "predict.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
