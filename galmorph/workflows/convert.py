"""`galmorph data convert SRC --output OUT.h5`: a user's images as a Galaxy10-format file that
streams well (chunks of `chunk_rows` whole images, compressed) with its SHA256 recorded.

SRC is a folder of JPEG/PNG images with a labels CSV (`file`: the image's path relative to
the folder, `label`: a class index or a class name; optional `id`, `ra`, `dec`, `redshift`,
`pxscale` are kept), or a Galaxy10-format .h5 file (badly chunked, or uncompressed), whose
labels, class_names, ids and columns are kept. Images are made square and `size` px as
`galmorph predict` makes them (galmorph.inference.inputs).

A label without its image, an image without a label and an image that cannot be read are
rows (`source`, `error`) of `<output stem>.errors.csv`, reported in one line; only nothing
left to write is an error. The file is written as `OUT.h5.part` beside a progress record
`OUT.h5.part.json`, a chunk at a time: an interrupted convert run again with the same
settings continues after the last chunk recorded; the finished file is renamed into place.
"""

from __future__ import annotations

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
    """What to write: per row its image reader argument and label, plus the file's extras."""

    n: int
    size: int
    labels: np.ndarray
    class_names: tuple[str, ...] | None
    columns: dict
    errors: list
    read: object  # read(start, stop) -> uint8 (stop - start, size, size, 3)


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
    if plan.errors:
        import pandas as pd

        io.atomic_write(errors_path, lambda fh: pd.DataFrame(plan.errors, columns=["source", "error"]).to_csv(
            fh, index=False))
    if plan.n == 0:
        raise GalmorphError(f"nothing to convert in {src}: no image has a label (see {errors_path})")
    digest = _write(out, plan, config)
    integrity.remember(out, digest)
    note = f"; {len(plan.errors)} skipped, listed in {errors_path}" if plan.errors else ""
    print(f"{out}: {plan.n} images of {plan.size} px in {len(set(plan.labels.tolist()))} classes, chunks of "
          f"{min(config.chunk_rows, plan.n)}, {config.compression}, sha256 {digest[:12]}...{note}")
    return 1 if plan.errors else 0


def _from_h5(src: Path, config: ConvertConfig) -> _Plan:
    raw = hdf5.read(src, images=False)
    rows = stream.Rows(src, config.size)
    names = _names(config.class_names) or raw.class_names
    columns = dict(raw.columns)
    if raw.ids is not None:
        columns["id"] = raw.ids
    return _Plan(rows.n, rows.size, raw.labels, names, columns, [],
                 lambda a, b: rows.read(np.arange(a, b)))


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
    # an unreadable image is found before writing, so that the rows, labels and columns agree
    good = []
    for k, path in enumerate(paths):
        try:
            inputs.read_image(path, geometry)
            good.append(k)
        except ValueError as exc:
            errors.append((path.relative_to(src).as_posix(), str(exc)))
    good = np.asarray(good, dtype=np.int64)
    paths = [paths[k] for k in good]
    return _Plan(len(paths), size, labels[good] if good.size else labels[:0], names,
                 {k: v[good] for k, v in columns.items()}, errors,
                 lambda a, b: np.stack([inputs.read_image(p, geometry) for p in paths[a:b]]))


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
        except Exception:  # an unreadable one is found and listed by the check that follows
            continue
    return 1


def _write(out: Path, plan: _Plan, config: ConvertConfig) -> str:
    """Write `plan` to `out` through OUT.part and its progress record; the file's SHA256."""
    import h5py

    part = out.with_name(out.name + ".part")
    record = part.with_name(part.name + ".json")
    key = {"source": str(Path(config.source).resolve()), "settings": asdict(config), "rows": plan.n,
           "size": plan.size, "labels": _digest(plan.labels)}
    done = _progress(record, key, part)
    chunk = min(config.chunk_rows, plan.n)
    if done == 0:
        part.unlink(missing_ok=True)
        with h5py.File(part, "w") as fh:
            shape = (plan.n, plan.size, plan.size, 3)
            fh.create_dataset("images", shape, np.uint8, chunks=hdf5.image_chunks(shape, chunk),
                              compression=None if config.compression == "none" else config.compression)
            fh.create_dataset("ans", data=plan.labels)
            for name, values in plan.columns.items():
                fh.create_dataset(name, data=values)
            if plan.class_names is not None:
                fh.attrs["class_names"] = list(plan.class_names)
    bar = None
    if not config.quiet:
        from tqdm import tqdm

        bar = tqdm(total=plan.n, initial=done, desc=f"convert {out.name}", unit="img", file=sys.stderr,
                   dynamic_ncols=True)
    try:
        with h5py.File(part, "r+") as fh:
            ds = fh["images"]
            for start in range(done, plan.n, chunk):
                stop = min(plan.n, start + chunk)
                ds[start:stop] = plan.read(start, stop)
                fh.flush()
                io.atomic_write(record, lambda f, stop=stop: json.dump({**key, "done": stop}, f))
                if bar is not None:
                    bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
    digest = integrity.sha256_file(part)
    os.replace(part, out)
    record.unlink(missing_ok=True)
    return digest


def _progress(record: Path, key: dict, part: Path) -> int:
    """Rows already written by an interrupted run with the same settings, else 0."""
    try:
        doc = json.loads(record.read_text())
    except (OSError, ValueError):
        return 0
    if not isinstance(doc, dict) or {k: doc.get(k) for k in key} != key or not part.is_file():
        return 0
    try:
        import h5py

        with h5py.File(part, "r") as fh:
            fh["images"].shape  # noqa: B018  (opens: a part left unreadable by the kill starts over)
    except (OSError, KeyError):
        return 0
    return int(doc.get("done", 0))


def _digest(values: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16]

