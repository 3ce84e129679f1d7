"""`galmorph predict MODEL INPUT... --output predictions.csv`: a logged galmorph model (a run,
a registered version or alias, or a multiseed ensemble) on a user's galaxies.

`run(config)` loads the model (galmorph.inference.model), streams every input as the model's
uint8 images (galmorph.inference.inputs, .fits, .catalogue: a block of rows in memory at a
time, whatever the input's length), predicts them in batches and writes them in parts of
--part-size galaxies to `<output>.parts/` (galmorph.inference.parts), each part atomically;
a rerun of the same command continues after the last part written (a different model,
inputs or options: a usage error, unless --restart). Once every galaxy is done it assembles,
each atomically (temporary name, then rename), and removes the parts:

- the output, CSV or Parquet (a .parquet name), one row per predicted galaxy in input
  order: `source`, `id`, `ra`, `dec` (where the input gives them), `p_<class>` for every
  class, `predicted`, `confidence`, and `p_<class>_std` for an ensemble;
- `<output stem>.errors.csv` beside it, one row (`source`, `error`) per galaxy that could not
  be predicted; written on every run, with the header only when nothing failed, so that an
  old one never outlives the run that made it.

Memory: a batch of images and a part's output rows, not the input's length.

Exit codes of the command: 0 every galaxy predicted; 1 some (or all) galaxies failed, the
rest are in the output; 2 a usage error (unknown model, not a galmorph model, missing input,
output folder missing or not writable, parts of another prediction, bad setting): one
`galmorph: error:` line and nothing written, and the output checked before the model is
loaded; 130 interrupted (the parts done stay, for the rerun; cutouts fetched so far stay cached).
"""

from __future__ import annotations

import hashlib
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galmorph.config import nested, option
from galmorph.core.errors import GalmorphError
from galmorph.core.io import check_writable, ensure_writable_dir, errors_path
from galmorph.data import augment
from galmorph.core.paths import cache_dir
from galmorph.data.nair2010.params import PrepareConfig
from galmorph.inference import fits, inputs, parts
from galmorph.inference.catalogue import CatalogueSource


@dataclass
class PredictConfig:
    """Settings of `galmorph predict` (MLproject `predict`)."""

    model: str = option("", "the model: a run id, runs:/<id>/model, models:/NAME/VERSION, models:/NAME@ALIAS, or a "
                            "multiseed parent run (an ensemble)", required=True)
    inputs: str = option("", "JPEG/PNG files or folders of them (recursive), FITS files, Galaxy10-format .h5 files, "
                             "CSV or Parquet catalogues with ra, dec (degrees) and optional id and scale (arcsec/px), "
                             "or with a path column of image files; the CLI takes several", required=True)
    output: str = option("predictions.csv", "output file: CSV, or Parquet where it ends in .parquet; failures go to "
                                            "<stem>.errors.csv beside it")
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
    part_size: int = option(10000, "galaxies per part of the output, written to <output>.parts/ as they are done; "
                                   "a rerun continues after the last part written")
    restart: bool = option(False, "discard the parts left by an interrupted run of this --output and start again")
    quiet: bool = option(False, "no progress bar")

    def validate(self) -> "PredictConfig":
        if self.batch_size < 1:
            raise GalmorphError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.part_size < 1:
            raise GalmorphError(f"part_size must be at least 1, got {self.part_size}")
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
        return CatalogueSource(path, geometry, cache, scale=scale, fetch=_fetcher(config, progress), fits_reader=reader)

    sources = inputs.discover(config.input_paths(), geometry, fits_reader=reader, catalogue=catalogue)
    _require("PIL", "galmorph predict")
    if any(inputs.suffix(f) in inputs.FITS_SUFFIXES for s in sources for f in getattr(s, "files", ())):
        _require("astropy", "reading FITS files")
    return sources


def _entries(sources: list, start: int):
    """The entries of `sources` one after the other, from the start-th of them all on."""
    for source in sources:
        if start >= len(source):
            start -= len(source)
            continue
        yield from source.entries(start)
        start = 0


class _Predictor:
    """Predicts the entries of one part in batches: its output rows and its errors."""

    def __init__(self, model, config: PredictConfig, bar):
        self.model, self.config, self.bar = model, config, bar
        self.model_seconds = 0.0

    def part(self, entries) -> tuple:
        """(parts.part_table of the predicted entries, [(source, error)] of the others)."""
        from galmorph.inference.model import Prediction

        meta, proba, std, errors, pending = [], [], [], [], []

        def flush():
            pred = self._predict(np.stack([e.image for e in pending]))
            proba.append(pred.proba)
            if pred.std is not None:
                std.append(pred.std)
            meta.extend({"source": e.source, **e.meta} for e in pending)
            self.bar.update(len(pending))
            pending.clear()

        for entry in entries:
            if entry.image is None:
                errors.append((entry.source, entry.error or "unreadable"))
                self.bar.update(1)
                continue
            pending.append(entry)
            if len(pending) >= self.config.batch_size:
                flush()
        if pending:
            flush()
        k = len(self.model.info.class_names)
        prediction = Prediction(np.concatenate(proba) if proba else np.zeros((0, k)),
                                np.concatenate(std) if std else (np.zeros((0, k)) if self._ensemble else None),
                                self.model.decision_weights)
        return parts.part_table(meta, prediction, self.model.info.class_names), errors

    @property
    def _ensemble(self) -> bool:
        return self.model.info.kind == "ensemble"

    def _predict(self, images: np.ndarray):
        t0 = time.perf_counter()
        pred = self.model.predict(images, tta=self.config.tta, calibrated=not self.config.uncalibrated)
        self.model_seconds += time.perf_counter() - t0
        return pred


def _progress_bar(total: int, enabled: bool, initial: int = 0):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="predict", unit="img", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)


def _input_key(source) -> dict:
    """What identifies an input: its kind, galaxies and the path, size and time of its files."""
    digest = hashlib.sha256()
    for path in getattr(source, "files", None) or [source.path]:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return {"kind": source.kind, "galaxies": len(source), "files": digest.hexdigest()}


def parts_key(config: PredictConfig, model, sources: list) -> dict:
    """What the output parts of a run are the output of (galmorph.inference.parts): a rerun
    continues them only where this is the same."""
    options = {name: getattr(config, name) for name in ("crop", "tta", "uncalibrated", "scale", "stretch_q",
                                                        "stretch_alpha", "stretch_min")}
    return {"model": {"uri": model.uri, "run_id": model.info.run_id, "members": list(model.info.members)},
            "inputs": [_input_key(s) for s in sources], "options": options, "part_size": config.part_size}


def run(config: PredictConfig, *, progress: bool | None = None) -> Summary:
    """Predict every galaxy of `config.inputs` with `config.model` and write the output and
    errors files, by way of the parts (module docstring). GalmorphError, before anything is written, for an unknown
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
    total = sum(len(s) for s in sources)
    store = parts.Parts.open(output, parts_key(config, model, sources), restart=config.restart)
    first = store.done()
    done = min(first * config.part_size, total)
    if done:
        print(f"galmorph predict: continuing {store.folder}: {done} of {total} galaxies done", file=sys.stderr)
    bar = _progress_bar(total, progress, done)
    predictor = _Predictor(model, config, bar)
    entries = _entries(sources, done)
    try:
        for index in itertools.count(first):
            chunk = itertools.islice(entries, config.part_size)  # read as predicted: a batch in memory
            head = next(chunk, None)
            if head is None:
                break
            store.write(index, *predictor.part(itertools.chain([head], chunk)))
    finally:
        bar.close()
    errors = errors_path(output)
    n_ok, n_failed = store.assemble(output, errors)
    store.remove()
    finished = time.perf_counter()
    return Summary(n_ok, n_failed, output, errors, finished - started, finished - loaded, predictor.model_seconds)
