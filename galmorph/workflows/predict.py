"""`galmorph predict MODEL INPUT... --output predictions.csv`: a logged galmorph model (a run,
a registered version or alias, or a multiseed ensemble) on a user's galaxies.

`run(config)` loads the model (galmorph.inference.model), turns every input into the model's
uint8 images (galmorph.inference.inputs, .fits, .catalogue), predicts them in batches and
writes, each atomically (temporary name, then rename):

- the output CSV, one row per predicted galaxy in input order: `source`, `id`, `ra`, `dec`
  (where the input gives them), `p_<class>` for every class, `predicted`, `confidence`, and
  `p_<class>_std` for an ensemble;
- `<output stem>.errors.csv` beside it, one row (`source`, `error`) per galaxy that could not
  be predicted; written on every run, with the header only when nothing failed, so that an
  old one never outlives the run that made it.

Exit codes of the command: 0 every galaxy predicted; 1 some (or all) galaxies failed, the
rest are in the output; 2 a usage error (unknown model, not a galmorph model, missing input,
output folder missing or not writable, bad setting): one `galmorph: error:` line and nothing
written, and the output checked before the model is loaded; 130 interrupted (nothing written; cutouts fetched so far stay cached).
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galmorph.config import nested, option
from galmorph.core.errors import GalmorphError
from galmorph.core.io import atomic_write, check_writable, ensure_writable_dir
from galmorph.data import augment
from galmorph.core.paths import cache_dir
from galmorph.data.nair2010.params import PrepareConfig
from galmorph.inference import fits, inputs
from galmorph.inference.catalogue import CatalogueSource


@dataclass
class PredictConfig:
    """Settings of `galmorph predict` (MLproject `predict`)."""

    model: str = option("", "the model: a run id, runs:/<id>/model, models:/NAME/VERSION, models:/NAME@ALIAS, or a "
                            "multiseed parent run (an ensemble)", required=True)
    inputs: str = option("", "JPEG/PNG files or folders of them (recursive), FITS files, Galaxy10-format .h5 files, "
                             "CSV catalogues with ra, dec (degrees) and optional id and scale (arcsec/px); the CLI "
                             "takes several", required=True)
    output: str = option("predictions.csv", "output CSV; failures go to <stem>.errors.csv beside it")
    crop: float = option(1.0, "centre crop, as a fraction of the shorter side, before images are resized to the "
                              "model's side (1 = the whole image)")
    tta: str = option("false", "average views of every image: false, true (the 40 views: 4 rotations x 2 flips x 5 "
                               "crops) or dihedral (the 8 rotations and flips of the centre crop)", augment.TTA)
    uncalibrated: bool = option(False, "raw softmax probabilities instead of the temperature-calibrated ones")
    batch_size: int = option(256, "images per forward pass")
    spark: str = option("", "predict on Apache Spark: a master such as local[2], spark://HOST:PORT or databricks "
                           "(the cluster this runs on); the output is then Parquet (--output NAME.parquet); "
                           "docs/scale.md (empty: this process)")
    scale: float = option(0.0, "pixel scale of catalogue cutouts in arcsec/px where the catalogue has no scale "
                               "column (0 = the model's training scale)")
    stretch_q: float = option(8.0, "FITS asinh stretch: softening Q (Lupton et al. 2004; docs/predict.md)")
    stretch_alpha: float = option(1.0, "FITS asinh stretch: linear scale alpha, per data unit")
    stretch_min: float = option(0.0, "FITS asinh stretch: black level m, in the data's units")
    cutout_cache: str = option("", "folder of cached catalogue cutouts (default: $GALMORPH_CACHE/cutouts)")
    fetch: PrepareConfig = nested(PrepareConfig, "how catalogue cutouts are fetched",
                                  exclude=("out", "cache_dir", "vizier_server", "limit", "experiment"))
    quiet: bool = option(False, "no progress bar")

    def validate(self) -> "PredictConfig":
        if self.batch_size < 1:
            raise GalmorphError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 < self.crop <= 1:
            raise GalmorphError(f"crop must be in (0, 1], got {self.crop}")
        if not (np.isfinite(self.scale) and self.scale >= 0):
            raise GalmorphError(f"scale must be 0 (the model's) or a positive number of arcsec/px, got {self.scale}")
        self.stretch().check()
        out = Path(self.output).expanduser()
        if out.is_dir():
            raise GalmorphError(f"output {self.output} is a folder; give a file such as {out / 'predictions.csv'}")
        check_writable(out, "output file", "choose another --output")  # before the model and the galaxies
        if not out.parent.is_dir():
            raise GalmorphError(f"output folder {out.parent} does not exist; create it or choose another --output")
        return self

    def stretch(self) -> fits.Stretch:
        return fits.Stretch(self.stretch_q, self.stretch_alpha, self.stretch_min)

    def input_paths(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


@dataclass
class Summary:
    """What a predict run did: counts, files written; seconds in all, from the model's loading
    to the files written (`pipeline_seconds`: reading, resizing, predicting, writing), and in
    the model's forward passes alone."""

    n_predicted: int
    n_failed: int
    output: Path
    errors: Path
    seconds: float
    pipeline_seconds: float
    model_seconds: float

    @property
    def exit_code(self) -> int:
        return 1 if self.n_failed else 0


def errors_path(output: Path) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".errors.csv")


def _fetcher(config: PredictConfig, progress: bool):
    from galmorph.data.nair2010.cutouts import download_cutouts, remove_stale_tmp

    f = config.fetch

    def fetch(todo, files, ra, dec, scales, failures, side):
        if not todo:
            return
        ensure_writable_dir(files[todo[0]].parent, "cutout cache folder")
        remove_stale_tmp(files[todo[0]].parent)
        download_cutouts(todo, files, ra, dec, failures, url=f.cutout_url, workers=f.workers, max_rate=f.max_rate,
                         retries=f.retries, timeout=f.timeout, progress=progress, scale=scales, size=side,
                         desc="cutouts")

    return fetch


def _require(module: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise GalmorphError(f"{what} needs {module}, which is not installed; pip install 'galmorph[predict]'")


def sources_for(config: PredictConfig, info, progress: bool) -> list:
    """The inputs' sources for a model described by `info` (ModelInfo); GalmorphError when a
    library that reading them needs is missing."""
    geometry = inputs.Geometry(info.image_side, config.crop)
    cache = Path(config.cutout_cache).expanduser() if config.cutout_cache else cache_dir() / "cutouts"
    scale = config.scale or info.pixel_scale
    reader = fits.reader(config.stretch(), len(info.band))

    def catalogue(path: Path):
        return CatalogueSource(path, geometry, cache, scale=scale, fetch=_fetcher(config, progress))

    sources = inputs.discover(config.input_paths(), geometry, fits_reader=reader, catalogue=catalogue)
    _require("PIL", "galmorph predict")
    if any(inputs.suffix(f) in inputs.FITS_SUFFIXES for s in sources for f in getattr(s, "files", ())):
        _require("astropy", "reading FITS files")
    return sources


class _Collector:
    """Predicts batches of entries and keeps the rows of the output and of the errors file."""

    def __init__(self, model, config: PredictConfig, bar):
        self.model, self.config, self.bar = model, config, bar
        self.meta: list[dict] = []
        self.proba: list[np.ndarray] = []
        self.std: list[np.ndarray] = []
        self.errors: list[tuple[str, str]] = []
        self.pending: list[inputs.Entry] = []
        self.model_seconds = 0.0

    def add(self, entry: inputs.Entry) -> None:
        if entry.image is None:
            self.errors.append((entry.source, entry.error or "unreadable"))
            self.bar.update(1)
            return
        self.pending.append(entry)
        if len(self.pending) >= self.config.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        images = np.stack([e.image for e in batch])
        t0 = time.perf_counter()
        pred = self.model.predict(images, tta=self.config.tta, calibrated=not self.config.uncalibrated)
        self.model_seconds += time.perf_counter() - t0
        self.proba.append(np.asarray(pred.proba))
        if pred.std is not None:
            self.std.append(np.asarray(pred.std))
        self.meta += [{"source": e.source, **e.meta} for e in batch]
        self.bar.update(len(batch))


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="predict", unit="img", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _write_output(path: Path, collector: _Collector, class_names) -> None:
    import pandas as pd

    from galmorph.inference.model import Prediction, table

    k = len(class_names)
    proba = np.concatenate(collector.proba) if collector.proba else np.zeros((0, k))
    std = np.concatenate(collector.std) if collector.std else None
    probs = table(Prediction(proba, std, collector.model.decision_weights), class_names)
    # object columns: an h5 file's integer ids stay integers beside the rows without one
    meta = pd.DataFrame(collector.meta, columns=_meta_columns(collector.meta), dtype=object)
    frame = pd.concat([meta.reset_index(drop=True), probs.reset_index(drop=True)], axis=1)
    atomic_write(path, lambda fh: frame.to_csv(fh, index=False, lineterminator="\n"), text=True)


def _meta_columns(meta: list[dict]) -> list[str]:
    present = {key for row in meta for key, value in row.items() if value is not None}
    return ["source"] + [c for c in ("id", "ra", "dec") if c in present]


def _write_errors(path: Path, errors: list[tuple[str, str]]) -> None:
    def write(fh):
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["source", "error"])
        w.writerows(errors)

    atomic_write(path, write, text=True)


def run(config: PredictConfig, *, progress: bool | None = None) -> Summary:
    """Predict every galaxy of `config.inputs` with `config.model` and write the output and
    errors CSVs (module docstring). GalmorphError, before anything is written, for an unknown
    or non-galmorph model, a missing input, an output folder that does not exist or takes no
    files, or a bad setting. `progress`: draw bars (default: when stderr is a terminal and not quiet)."""
    from galmorph.inference.model import load

    started = time.perf_counter()
    config.validate()
    if progress is None:
        progress = not config.quiet and sys.stderr.isatty()
    output = Path(config.output).expanduser()
    model = load(config.model)
    loaded = time.perf_counter()
    sources = sources_for(config, model.info, progress)
    bar = _progress_bar(sum(len(s) for s in sources), progress)
    collector = _Collector(model, config, bar)
    try:
        for source in sources:
            for entry in source:
                collector.add(entry)
        collector.flush()
    finally:
        bar.close()
    _write_output(output, collector, model.info.class_names)
    errors = errors_path(output)
    _write_errors(errors, collector.errors)
    n_ok = sum(len(p) for p in collector.proba)
    done = time.perf_counter()
    return Summary(n_ok, len(collector.errors), output, errors, done - started, done - loaded, collector.model_seconds)
