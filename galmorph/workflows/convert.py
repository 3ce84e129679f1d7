"""`galmorph data convert SRC --output OUT.h5`: a user's images as a Galaxy10-format file that
streams well (chunks of `chunk_rows` whole images, compressed) with its SHA256 recorded.

SRC is a folder of JPEG/PNG images with a labels CSV (`file`: the image's path relative to
the folder, `label`: a class index or a class name; optional `id`, `ra`, `dec`, `redshift`,
`pxscale` are kept), or a Galaxy10-format .h5 file (badly chunked, or uncompressed), whose
labels, class_names, ids and columns are kept. Images are made square and `size` px as
`galmorph predict` makes them (galmorph.inference.inputs).

A label without its image, an image without a label and an image that cannot be read are
rows (`source`, `error`) of `<output stem>.errors.csv`, reported in one line; only nothing
left to write is an error. Each image is decoded once, as its chunk is written: one that
cannot be read is left out there, and the rows after it move up. The file is written as
`OUT.h5.part` beside a progress record `OUT.h5.part.json`, a chunk at a time: an interrupted
convert run again with the same settings continues after the last chunk recorded; the
finished file is renamed into place.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from galmorph.config import option
from galmorph.core import io
from galmorph.core.errors import GalmorphError
from galmorph.data import hdf5, integrity, stream

COMPRESSIONS = ("gzip", "lzf", "none")
EXTRA_COLUMNS = ("id",) + hdf5.COLUMNS  # optional per-image CSV columns, kept as datasets


@dataclass
class ConvertConfig:
    """Settings of `galmorph data convert`."""

    source: str = option("", "a folder of JPEG/PNG images with a labels CSV, or a Galaxy10-format .h5 file to rewrite",
                         required=True)
    output: str = option("", "the Galaxy10-format .h5 file to write; problems go to <stem>.errors.csv beside it",
                         required=True)
    labels: str = option("", "labels CSV of a folder: columns file (path relative to the folder) and label (class "
                             "index or name), optional id, ra, dec, redshift, pxscale (default: SRC/labels.csv)")
    class_names: str = option("", "comma-separated class names, label 0 first (default: the .h5's, or the names in "
                                  "the label column in sorted order; integer labels without names get none)")
    size: int = option(0, "image side in pixels (0: the first image's shorter side, or the .h5's side); images are "
                          "centre-cropped to square and resized as galmorph predict does")
    chunk_rows: int = option(hdf5.CHUNK_ROWS, "images per HDF5 chunk (the unit --stream reads)")
    compression: str = option("gzip", "compression of the images: gzip, lzf or none", COMPRESSIONS)
    quiet: bool = option(False, "no progress bar")


@dataclass
class _Plan:
    """What to write: `n` candidate rows, each with its label and extra columns, read `read`
    (start, stop) -> (uint8 images (k, size, size, 3) of the rows that could be read, their
    positions in [start, stop), [(position, source, error)] of the others); `errors`: the
    rows that were left out before any image was read."""

    n: int
    size: int
    labels: np.ndarray
    class_names: tuple[str, ...] | None
    columns: dict
    errors: list
    read: object


def run(config: ConvertConfig) -> int:
    """Convert; print one line; 0 when every image was written, 1 when some went to the errors file."""
    src, out = Path(config.source).expanduser(), Path(config.output).expanduser()
    if config.chunk_rows < 1:
        raise GalmorphError(f"chunk_rows must be at least 1, got {config.chunk_rows}")
    if config.size < 0:
        raise GalmorphError(f"size must be 0 (the images' own) or more, got {config.size}")
    io.check_writable(out, "output", "choose another --output")
    if not src.exists():
        raise GalmorphError(f"{src} does not exist; give a folder of images with a labels CSV or a .h5 file")
    plan = _from_h5(src, config) if src.is_file() else _from_folder(src, config)
    errors_path = io.errors_path(out)
    errors_path.unlink(missing_ok=True)  # an earlier run's list, not this one's
    if plan.errors:  # listed now, so that a convert that stops half-way lists them too
        _write_errors(errors_path, plan.errors)
    if plan.n == 0:
        raise GalmorphError(f"nothing to convert in {src}: no image has a label (see {errors_path})")
    written, classes, unreadable, digest = _write(out, plan, config)
    errors = plan.errors + unreadable
    if unreadable:
        _write_errors(errors_path, errors)
    if digest is None:
        raise GalmorphError(f"nothing to convert in {src}: no labelled image could be read (see {errors_path})")
    integrity.remember(out, digest)
    note = f"; {len(errors)} skipped, listed in {errors_path}" if errors else ""
    print(f"{out}: {written} images of {plan.size} px in {classes} classes, chunks of "
          f"{min(config.chunk_rows, plan.n)}, {config.compression}, sha256 {digest[:12]}...{note}")
    return 1 if errors else 0


def _write_errors(path: Path, errors: list) -> None:
    import pandas as pd

    io.atomic_write(path, lambda fh: pd.DataFrame(errors, columns=["source", "error"]).to_csv(fh, index=False))


def _from_h5(src: Path, config: ConvertConfig) -> _Plan:
    raw = hdf5.read(src, images=False)
    rows = stream.Rows(src, config.size)
    names = _names(config.class_names) or raw.class_names
    columns = dict(raw.columns)
    if raw.ids is not None:
        columns["id"] = raw.ids
    return _Plan(rows.n, rows.size, raw.labels, names, columns, [],
                 lambda a, b: (rows.read(np.arange(a, b)), np.arange(b - a), []))


def _from_folder(src: Path, config: ConvertConfig) -> _Plan:
    import pandas as pd

    from galmorph.inference import inputs

    csv = Path(config.labels).expanduser() if config.labels else src / "labels.csv"
    if not csv.is_file():
        raise GalmorphError(f"labels CSV {csv} does not exist; give one with --labels (columns file, label)")
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as exc:
        raise GalmorphError(f"{csv} is not a readable CSV ({inputs.one_line(exc)}); columns file, label") from None
    table.columns = [c.strip().lower() for c in table.columns]
    missing = [c for c in ("file", "label") if c not in table.columns]
    if missing:
        raise GalmorphError(f"{csv} lacks the column(s) {', '.join(missing)} (has: {', '.join(table.columns)}); "
                            "a labels CSV needs file (path relative to the folder) and label")
    images = {p.relative_to(src).as_posix(): p for p in sorted(src.rglob("*"))
              if p.is_file() and p.suffix.lower() in inputs.IMAGE_SUFFIXES}
    errors, keep, seen = [], [], set()
    for i, row in table.iterrows():
        name = row["file"].strip().removeprefix("./")
        if name in seen:
            errors.append((f"{csv.name}[{i}]", f"{name} is listed again; the first row's label is used"))
        elif name not in images:
            errors.append((f"{csv.name}[{i}]", f"no image {name} in {src}"))
        elif not row["label"].strip():
            errors.append((name, f"empty label in {csv.name}[{i}]"))
        else:
            keep.append(i)
        seen.add(name)
    labelled = {table.at[i, "file"].strip().removeprefix("./") for i in keep}
    errors += [(name, f"no label in {csv.name}") for name in images if name not in labelled]
    table = table.loc[keep].reset_index(drop=True)
    labels, names = _labels(table["label"].str.strip().tolist(), _names(config.class_names), csv)
    paths = [images[f.strip().removeprefix("./")] for f in table["file"]]
    size = config.size or _first_side(paths)
    geometry = inputs.Geometry(size)
    columns = {}
    for col in EXTRA_COLUMNS:
        if col in table.columns:
            try:
                columns[col] = pd.to_numeric(table[col]).to_numpy()
            except ValueError:
                raise GalmorphError(f"{csv}: column {col} holds values that are not numbers; fix or drop it") from None

    def read(start: int, stop: int):
        decoded, kept, failed = [], [], []
        for k in range(start, stop):
            try:
                decoded.append(inputs.read_image(paths[k], geometry))
                kept.append(k - start)
            except ValueError as exc:
                failed.append((k - start, paths[k].relative_to(src).as_posix(), str(exc)))
        stacked = np.stack(decoded) if decoded else np.empty((0, size, size, 3), np.uint8)
        return stacked, np.asarray(kept, dtype=np.int64), failed

    return _Plan(len(paths), size, labels, names, columns, errors, read)


def _names(text: str) -> tuple[str, ...] | None:
    names = tuple(n.strip() for n in text.split(",")) if text.strip() else None
    if names is not None and (len(set(names)) != len(names) or not all(names)):
        raise GalmorphError(f"class_names {text!r} has an empty or repeated name; give each class its own name")
    return names


def _labels(values: list[str], names, csv: Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Labels as class indices: integers as they are, names by their position in `names`
    (default: the sorted distinct names)."""
    if all(v.isdigit() for v in values):
        labels = np.asarray([int(v) for v in values], dtype=np.int64)
        if names is not None and labels.size and labels.max() >= len(names):
            raise GalmorphError(f"{csv}: label {labels.max()} is outside the {len(names)} class names given")
        return labels, names
    names = names or tuple(sorted(set(values)))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise GalmorphError(f"{csv}: label(s) {', '.join(unknown[:5])} are not among the class names "
                            f"{', '.join(names)}; fix the labels or --class-names")
    return np.asarray([index[v] for v in values], dtype=np.int64), names


def _first_side(paths) -> int:
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as im:
                return min(im.size)
        except Exception:  # an unreadable one is listed when its chunk is written
            continue
    return 1


def _write(out: Path, plan: _Plan, config: ConvertConfig) -> tuple[int, int, list, str | None]:
    """Write `plan` to `out` through OUT.part and its progress record: (rows written, classes
    among them, [(source, error)] of the images that could not be read, the file's SHA256, or
    None, and no file, when none could be).

    Rows are written a whole chunk at a time at chunk-aligned places (a compressed chunk
    written in two goes would be compressed and stored twice): rows read beyond the last
    whole chunk wait in memory, and a resumed run reads them again. The images that could not
    be read are appended to OUT.part.errors.csv; the record says how many of its rows, and
    how many candidates (`done`) and rows (`written`), are in place."""
    import h5py

    part = out.with_name(out.name + ".part")
    record, failures = part.with_name(part.name + ".json"), part.with_name(part.name + ".errors.csv")
    key = {"format": 2, "source": str(Path(config.source).resolve()), "settings": asdict(config), "rows": plan.n,
           "size": plan.size, "labels": _digest(plan.labels)}
    done, written, n_bad = _progress(record, key, part, failures)
    chunk = min(config.chunk_rows, plan.n)
    per_row = {"ans": plan.labels, **plan.columns}
    if done == 0:
        part.unlink(missing_ok=True)
        failures.write_text("")
        with h5py.File(part, "w") as fh:
            shape = (plan.n, plan.size, plan.size, 3)
            fh.create_dataset("images", shape, np.uint8, chunks=hdf5.image_chunks(shape, chunk),
                              maxshape=(None, *shape[1:]),
                              compression=None if config.compression == "none" else config.compression)
            for name, values in per_row.items():  # resizable: rows whose image cannot be read are left out
                fh.create_dataset(name, (plan.n,), values.dtype, maxshape=(None,))
            if plan.class_names is not None:
                fh.attrs["class_names"] = list(plan.class_names)
    bar = None
    if not config.quiet:
        from tqdm import tqdm

        bar = tqdm(total=plan.n, initial=done, desc=f"convert {out.name}", unit="img", file=sys.stderr,
                   dynamic_ncols=True)
    waiting = np.empty((0, plan.size, plan.size, 3), np.uint8)  # read, not yet written: images,
    positions = np.empty(0, np.int64)  # their candidate rows,
    bad: list = []  # and the unreadable ones among them: (candidate row, source, error)
    try:
        with h5py.File(part, "r+") as fh, open(failures, "a", newline="", encoding="utf-8") as listed:
            for start in range(done, plan.n, chunk):
                stop = min(plan.n, start + chunk)
                images, kept, failed = plan.read(start, stop)
                waiting, positions = np.concatenate([waiting, images]), np.concatenate([positions, start + kept])
                bad += [(start + k, source, error) for k, source, error in failed]
                while positions.size >= chunk or (stop == plan.n and (positions.size or bad)):
                    m = min(chunk, positions.size)
                    if m:
                        fh["images"][written:written + m] = waiting[:m]
                        for name, values in per_row.items():
                            fh[name][written:written + m] = values[positions[:m]]
                    written += m
                    done = plan.n if m == positions.size and stop == plan.n else int(positions[m - 1]) + 1
                    waiting, positions = waiting[m:], positions[m:]
                    csv.writer(listed, lineterminator="\n").writerows((s, e) for k, s, e in bad if k < done)
                    n_bad += sum(k < done for k, _, _ in bad)
                    bad = [b for b in bad if b[0] >= done]
                    fh.flush()
                    listed.flush()
                    state = {**key, "done": done, "written": written, "unreadable": n_bad}
                    io.atomic_write(record, lambda f, state=state: json.dump(state, f))
                if bar is not None:
                    bar.update(stop - start)
            if written < plan.n:
                for name in ("images", *per_row):
                    fh[name].resize(written, axis=0)
            classes = len(set(fh["ans"][:].tolist()))
    finally:
        if bar is not None:
            bar.close()
    with open(failures, newline="", encoding="utf-8") as fh:
        unreadable = [tuple(row) for row in csv.reader(fh)]
    if written == 0:
        part.unlink(missing_ok=True)
    else:
        digest = integrity.sha256_file(part)
        os.replace(part, out)
    record.unlink(missing_ok=True)
    failures.unlink(missing_ok=True)
    return written, classes, unreadable, digest if written else None


def _progress(record: Path, key: dict, part: Path, failures: Path) -> tuple[int, int, int]:
    """(candidate rows done, rows written, images listed as unreadable) of an interrupted run
    with the same settings, else (0, 0, 0); the list of unreadable images is cut back to
    what the record counts."""
    try:
        doc = json.loads(record.read_text())
    except (OSError, ValueError):
        return 0, 0, 0
    if not isinstance(doc, dict) or {k: doc.get(k) for k in key} != key or not part.is_file():
        return 0, 0, 0
    try:
        import h5py

        with h5py.File(part, "r") as fh:
            fh["images"].shape  # noqa: B018  (opens: a part left unreadable by the kill starts over)
        with open(failures, newline="", encoding="utf-8") as fh:
            listed = list(csv.reader(fh))[: int(doc["unreadable"])]
    except (OSError, KeyError, ValueError):
        return 0, 0, 0
    io.atomic_write(failures, lambda fh: csv.writer(fh, lineterminator="\n").writerows(listed))
    return int(doc["done"]), int(doc["written"]), len(listed)


def _digest(values: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16]

