"""A CSV or Parquet catalogue as a source of galaxies: of coordinates, SDSS SkyServer cutouts at
the model's side and pixel scale, fetched by the nair2010 fetcher (galmorph.data.nair2010.cutouts:
one token-bucket rate limit, retries under galmorph's HTTP policy, each good cutout stored in
the cache the moment it arrives).

Columns (names case-insensitive): `ra` and `dec` in degrees (required), `id` (optional; the
output's source, else `<file>.csv[row]`), `scale` in arcsec/px (optional; else --scale, else
the model's training pixel scale). A cutout is cached under
`<cache>/<ra>_<dec>_<scale>_<side>.jpg`, so a run that was interrupted, or a later run on an
overlapping catalogue, fetches only what is not cached yet.

Or of image files: a `path` column (relative to the catalogue's folder, or absolute) names a
JPEG, PNG or FITS file per row, read, cropped and resized as galmorph.inference.inputs reads
files; `id`, `ra` and `dec` are optional and carried into the output.

A catalogue of any length is read PIECE rows at a time: each piece is planned, its missing
cutouts fetched, and its galaxies yielded before the next piece is read.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterator
from pathlib import Path

from galmorph.core.errors import GalmorphError
from galmorph.inference.inputs import Entry, Geometry, file_entry, one_line

PIECE = 4096  # catalogue rows planned, fetched and decoded together
COLUMNS = ("ra", "dec", "id", "scale", "path")  # the columns read; any others are ignored


def cutout_file(cache: Path, ra: float, dec: float, scale: float, side: int) -> Path:
    return cache / f"{ra:.6f}_{dec:+.6f}_{scale:g}_{side}.jpg"


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def read_columns(path: Path) -> tuple[list[str], int]:
    """A catalogue's column names (lower-cased) and its number of rows; GalmorphError when it
    cannot be read or has neither ra and dec nor path."""
    try:
        if _parquet(path):
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path).metadata
            columns, n = [c.strip().lower() for c in meta.schema.names], meta.num_rows
        else:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                columns = [c.strip().lower() for c in next(reader, [])]
                n = sum(1 for row in reader if row)  # as csv.DictReader, which reads the rows, skips blank lines
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        what = "Parquet" if _parquet(path) else "CSV"
        raise GalmorphError(f"catalogue {path}: cannot read it as {what} ({one_line(exc)})") from None
    missing = [c for c in ("ra", "dec") if c not in columns]
    if missing and "path" not in columns:
        raise GalmorphError(f"catalogue {path} has no {' or '.join(missing)} column (has: {', '.join(columns) or 'none'}); "
                            "give ra and dec in degrees, with an optional id and scale (arcsec/px), or a path "
                            "column of image files")
    return columns, n


def read_rows(path: Path, start: int = 0) -> Iterator[dict]:
    """The rows of a catalogue from the start-th on, as dicts of text (keys lower-cased, values
    stripped, a missing value ""), of the columns COLUMNS that it has."""
    if not _parquet(path):
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for row in itertools.islice(csv.DictReader(fh), start, None):
                yield {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        return
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    names = [c for c in f.schema_arrow.names if c.strip().lower() in COLUMNS]
    for batch in f.iter_batches(batch_size=PIECE, columns=names):
        if start >= batch.num_rows:
            start -= batch.num_rows
            continue
        for row in batch.slice(start).to_pylist():  # str(float) gives back the same float
            yield {k.strip().lower(): "" if v is None else str(v).strip() for k, v in row.items()}
        start = 0


class CatalogueSource:
    """The galaxies of one catalogue, one entry per row in file order. `fetch(todo, files, ra,
    dec, scales, failures, side)` fetches the side x side cutouts of rows `todo` into `files`
    (the nair2010 fetcher with the run's URL, rate and retries); it is called once per piece
    of PIECE rows, before the piece's galaxies are yielded. Catalogue cutouts come at the
    model's side: --crop does not apply."""

    kind = "catalogue"

    def __init__(self, path: Path, geometry: Geometry, cache: Path, *, scale: float | None, fetch, fits_reader=None):
        self.path, self.geometry, self.cache, self.fetch = path, geometry, cache, fetch
        columns, self.n = read_columns(path)
        self.fits_reader, self.of_files = fits_reader, "path" in columns  # a catalogue of image files
        if scale is None and "scale" not in columns and not self.of_files:
            raise GalmorphError(f"the model's training set has no fixed pixel scale (each cutout was scaled to its galaxy), "
                                f"so catalogue {path} needs a scale column in arcsec/px, or pass --scale")
        self.default_scale = scale

    def __len__(self) -> int:
        return self.n

    def _plan(self, rows: list[dict]) -> tuple[list, list, list, list, dict]:
        """(ra, dec, scale, cache file per row, {row: reason} for rows that cannot have a cutout)."""
        ras, decs, scales, files, problems = [], [], [], [], {}
        for k, row in enumerate(rows):
            ra, dec = _number(row.get("ra")), _number(row.get("dec"))
            scale = _number(row.get("scale")) if row.get("scale") else self.default_scale
            if ra is None:
                problems[k] = f"ra missing or not a number ({row.get('ra')!r})"
            elif dec is None:
                problems[k] = f"dec missing or not a number ({row.get('dec')!r})"
            elif not 0 <= ra < 360:
                problems[k] = f"ra {ra:g} outside [0, 360) degrees"
            elif not -90 <= dec <= 90:
                problems[k] = f"dec {dec:g} outside [-90, 90] degrees"
            elif scale is None or scale <= 0:
                problems[k] = f"no usable pixel scale ({row.get('scale')!r}); give a positive scale in arcsec/px"
            ras.append(ra if ra is not None else math.nan)
            decs.append(dec if dec is not None else math.nan)
            scales.append(scale if scale is not None else math.nan)
            files.append(None if k in problems else cutout_file(self.cache, ra, dec, scale, self.geometry.side))
        return ras, decs, scales, files, problems

    def __iter__(self) -> Iterator[Entry]:
        return self.entries()

    def entries(self, start: int = 0) -> Iterator[Entry]:
        rows = read_rows(self.path, start)
        for first in itertools.count(start, PIECE):
            piece = list(itertools.islice(rows, PIECE))
            if not piece:
                return
            yield from self._piece(piece, first)

    def _files(self, rows: list[dict], first: int) -> Iterator[Entry]:
        for k, row in enumerate(rows):
            meta = {key: row[key] for key in ("id",) if row.get(key)}
            meta.update({key: _number(row[key]) for key in ("ra", "dec") if row.get(key)})
            if not row.get("path"):
                yield Entry(row.get("id") or f"{self.path}[{first + k}]", error="no path", meta=meta)
                continue
            path = self.path.parent / Path(row["path"]).expanduser()  # an absolute path stays itself
            yield file_entry(path, self.geometry, self.fits_reader, row.get("id") or row["path"], meta)

    def _piece(self, rows: list[dict], first: int) -> Iterator[Entry]:
        from galmorph.data.nair2010.cutouts import decode

        if self.of_files:
            yield from self._files(rows, first)
            return
        ras, decs, scales, files, problems = self._plan(rows)
        todo = [k for k, f in enumerate(files) if f is not None and not f.is_file()]
        self.fetch(todo, files, ras, decs, scales, problems, self.geometry.side)
        for k, row in enumerate(rows):
            source = row.get("id") or f"{self.path}[{first + k}]"
            meta = {"id": row["id"]} if row.get("id") else {}
            meta.update(ra=ras[k], dec=decs[k])
            if k in problems:
                yield Entry(source, error=problems[k], meta=meta)
                continue
            try:
                image = decode(files[k], self.geometry.side)
            except Exception as exc:  # damaged in the cache since it was stored: fetched again next run
                files[k].unlink(missing_ok=True)
                yield Entry(source, error=one_line(f"cached cutout unreadable ({type(exc).__name__}: {exc}); removed"),
                            meta=meta)
                continue
            yield Entry(source, image, meta=meta)
