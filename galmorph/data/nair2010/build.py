"""`prepare()`: the nair2010 HDF5 file, its manifest and its failures CSV, from the catalogue
and the cutouts. Nothing half-written is ever left under a final name."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from galmorph import __version__
from galmorph.core.errors import GalmorphError
from galmorph.core.io import atomic_write, check_writable, ensure_writable_dir, publish
from galmorph.data import integrity
from galmorph.data.nair2010.catalogue import fetch_catalogue, ttype_to_class
from galmorph.data.nair2010.cutouts import cutout_name, decode, download_cutouts, remove_stale_tmp
from galmorph.data.nair2010.params import (
    CATALOGUE_SOURCE,
    CHANNELS,
    CLASS_NAMES,
    DEFAULTS,
    SCALE_ARCSEC,
    SIZE,
    TTYPE_MISSING,
    default_cache_dir,
    default_output_path,
    failures_path,
    manifest_path,
)
from galmorph.data.nair2010.support import now, one_line

log = logging.getLogger(__name__)


def prepare(out: Path | None = None, cache_dir: Path | None = None, *, cutout_url: str = DEFAULTS.cutout_url,
            vizier_server: str | None = None, workers: int = DEFAULTS.workers, max_rate: float = DEFAULTS.max_rate,
            retries: int = DEFAULTS.retries, timeout: float = DEFAULTS.timeout, limit: int | None = None,
            progress: bool = True) -> dict:
    """Build the nair2010 HDF5 file (+ manifest and failures CSV) and return the manifest.

    ``out`` defaults to `default_output_path()`; ``cache_dir`` (catalogue and cutouts,
    reused by later runs) to ``$GALMORPH_CACHE/nair2010``. ``limit`` keeps the first N
    catalogue rows. ``workers`` threads share a ``max_rate`` requests/s budget; each request
    gets ``timeout`` seconds (connect and read) and up to ``retries`` retries. Defaults come
    from `PrepareConfig`. Raises GalmorphError on bad arguments, an unwritable folder, an
    unusable catalogue, or when no cutout at all could be fetched (then no HDF5 file is
    written).
    """
    _check_args(cutout_url, workers, max_rate, retries, timeout, limit)
    try:
        import PIL.Image  # noqa: F401  (the workers decode every cutout)
    except ImportError as exc:
        raise GalmorphError("pillow is not installed; pip install 'galmorph[nair]'") from exc
    out = Path(out).expanduser() if out is not None else default_output_path()
    if out.is_dir():
        raise GalmorphError(f"output {out} is a folder; pass a file path such as {out / 'nair2010.h5'}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cut_dir = cache / "cutouts"
    folders = ((out.parent, "output folder"), (cut_dir, "cutout cache folder"))
    for folder, what in folders:  # both checked before either is made
        check_writable(folder, what, "pass a writable folder", folder=True)
    for folder, what in folders:
        ensure_writable_dir(folder, what)
    remove_stale_tmp(cut_dir)

    cat = fetch_catalogue(cache, vizier_server=vizier_server)
    rows = cat.iloc[:limit].reset_index(drop=True) if limit is not None else cat
    ids = rows["objid"].astype(str).tolist()
    ra, dec = rows["ra"].to_numpy(float), rows["dec"].to_numpy(float)
    files = [cut_dir / cutout_name(i) for i in ids]
    todo, failures = _plan(files, ra, dec)
    log.info("nair2010: %d galaxies, %d cutouts cached, %d to fetch",
             len(rows), len(rows) - len(todo) - len(failures), len(todo))

    download_cutouts(todo, files, ra, dec, failures, url=cutout_url, workers=workers, max_rate=max_rate,
                     retries=retries, timeout=timeout, progress=progress)

    created = now()
    kept, digest, size = _write_outputs(out, rows, files, failures, cutout_url, created)
    manifest = _manifest(out, cat, rows, kept, failures, limit, cutout_url, digest, size, created)
    atomic_write(manifest_path(out), lambda fh: json.dump(manifest, fh, indent=2), text=True, sync=True)
    if failures:
        log.warning("nair2010: %d of %d galaxies have no cutout (listed in %s); run prepare again to retry them",
                    len(failures), len(rows), failures_path(out))
    log.info("nair2010: wrote %s (%d galaxies)", out, len(kept))
    return manifest


def _check_args(cutout_url, workers, max_rate, retries, timeout, limit):
    def whole(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if not isinstance(cutout_url, str) or not re.match(r"^https?://\S+$", cutout_url, re.I):
        raise GalmorphError(f"cutout_url must be an http(s) URL (got {cutout_url!r}); "
                            f"pass e.g. {DEFAULTS.cutout_url}")
    if not whole(workers) or workers < 1:
        raise GalmorphError(f"workers must be an integer >= 1 (got {workers!r}); pass e.g. workers=8")
    if not isinstance(max_rate, (int, float)) or isinstance(max_rate, bool) or not (0 < max_rate < math.inf):
        raise GalmorphError(f"max_rate must be a positive number of requests per second (got {max_rate!r}); "
                            "pass e.g. max_rate=10")
    if not whole(retries) or retries < 0:
        raise GalmorphError(f"retries must be an integer >= 0 (got {retries!r}); pass e.g. retries=4")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not (0 < timeout < math.inf):
        raise GalmorphError(f"timeout must be a positive number of seconds (got {timeout!r}); pass e.g. timeout=30")
    if limit is not None and (not whole(limit) or limit < 1):
        raise GalmorphError(f"limit must be None (all galaxies) or an integer >= 1 (got {limit!r}); "
                            "pass e.g. limit=100")


def _plan(files, ra, dec) -> tuple[list[int], dict[int, str]]:
    """(rows whose cutout is still to fetch, {row: reason} for rows that cannot have one)."""
    failures: dict[int, str] = {}
    todo = []
    for k in range(len(files)):
        if not (np.isfinite(ra[k]) and np.isfinite(dec[k])):
            failures[k] = "no RA/Dec in the catalogue"
        elif not files[k].is_file():
            todo.append(k)
    return todo, failures


def _write_outputs(out: Path, rows, files, failures, cutout_url, created) -> tuple[np.ndarray, str, int]:
    """Write the failures CSV and publish the HDF5 file at `out`; (kept rows, sha256, bytes).

    Raises GalmorphError (after writing the failures CSV, and leaving no HDF5 file) when
    no cutout could be used.
    """
    fail_csv = failures_path(out)
    ids = rows["objid"].astype(str).tolist()
    ra, dec = rows["ra"].to_numpy(float), rows["dec"].to_numpy(float)
    h5_tmp = None
    try:
        kept, h5_tmp = _write_hdf5(out, rows, files, failures, cutout_url, created)
        _write_failures(fail_csv, ids, ra, dec, failures)
        if len(kept) == 0:
            raise GalmorphError(
                f"no cutout of the {len(rows)} galaxies could be fetched (reasons in {fail_csv}); "
                f"check cutout_url ({cutout_url}) and the network, then run again"
            )
        digest, size = integrity.sha256_file(h5_tmp), h5_tmp.stat().st_size
        publish(h5_tmp, out)
        h5_tmp = None
        integrity.remember(out, digest)  # loading verifies against the manifest, hashing once per version
    finally:
        if h5_tmp is not None:
            h5_tmp.unlink(missing_ok=True)
    return kept, digest, size


def _manifest(out: Path, cat, rows, kept, failures, limit, cutout_url, digest, size, created) -> dict:
    """The manifest: counts, sources, cutout URL template and geometry, checksum, versions."""
    labels = ttype_to_class(rows["ttype"].to_numpy(float)[kept])
    return {
        "dataset": "nair2010",
        "file": out.name,
        "path": str(out),
        "n_galaxies": len(kept),
        "n_failed": len(failures),
        "n_catalogue": len(rows),
        "limit": limit,
        "class_names": list(CLASS_NAMES),
        "class_counts": {name: int((labels == c).sum()) for c, name in enumerate(CLASS_NAMES)},
        "catalogue_source": cat.attrs.get("source", CATALOGUE_SOURCE),
        "catalogue_server": cat.attrs.get("server", "unknown"),
        "cutout_url_template": f"{cutout_url}?ra={{ra}}&dec={{dec}}&scale={SCALE_ARCSEC:g}&width={SIZE}&height={SIZE}",
        "scale_arcsec_per_pixel": SCALE_ARCSEC,
        "width": SIZE,
        "height": SIZE,
        "channels": list(CHANNELS),
        "g_channel": CHANNELS.index("g"),
        "sha256": digest,
        "size_bytes": size,
        "failures_csv": failures_path(out).name,
        "galmorph_version": __version__,
        "created": created,
    }


def _write_hdf5(out: Path, rows, files, failures, cutout_url, created) -> tuple[np.ndarray, Path | None]:
    """Write the HDF5 file to a temp name next to `out`; (kept row indices, temp path or None).

    A cached cutout that no longer decodes becomes a failure and is deleted (fetched again
    by the next run).
    """
    import h5py

    candidates = [k for k in range(len(rows)) if k not in failures and files[k].is_file()]
    if not candidates:
        return np.zeros(0, dtype=int), None
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        with h5py.File(tmp, "w") as f:
            kept = _write_images(f, candidates, files, failures)
            _write_columns(f, rows, kept)
            f.attrs["class_names"] = list(CLASS_NAMES)
            f.attrs["source"] = (f"{CATALOGUE_SOURCE}; SDSS SkyServer ImgCutout {cutout_url} "
                                 f"({SIZE}x{SIZE} px at {SCALE_ARCSEC:g} arcsec/px)")
            f.attrs["created"] = created
            f.attrs["channels"] = list(CHANNELS)
            f.attrs["pixel_scale_arcsec"] = SCALE_ARCSEC
            f.attrs["ttype_missing"] = TTYPE_MISSING
            f.attrs["galmorph_version"] = __version__
        if len(kept) == 0:
            tmp.unlink()
            return kept, None
        return kept, tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_images(f, candidates, files, failures) -> np.ndarray:
    """Decode the cached cutouts of rows `candidates` into dataset ``images``; the rows kept."""
    images = f.create_dataset("images", shape=(len(candidates), SIZE, SIZE, 3), dtype=np.uint8,
                              maxshape=(None, SIZE, SIZE, 3), chunks=(8, SIZE, SIZE, 3))
    kept = []
    for k in candidates:
        try:
            img = decode(files[k])
        except Exception as exc:  # damaged on disk since it was stored: fetch again next run
            failures[k] = one_line(f"cached cutout unreadable ({type(exc).__name__}: {exc}); "
                                   "removed, fetched again next run")
            files[k].unlink(missing_ok=True)
            continue
        images[len(kept)] = img
        kept.append(k)
    images.resize(len(kept), axis=0)
    return np.asarray(kept, dtype=int)


def _write_columns(f, rows, kept) -> None:
    """The per-galaxy datasets of rows `kept`: ans, ttype, ra, dec, redshift, gmag, objid."""
    import h5py

    ttype = rows["ttype"].to_numpy(float)[kept]
    f.create_dataset("ans", data=ttype_to_class(ttype))
    f.create_dataset("ttype", data=np.where(np.isfinite(ttype), np.nan_to_num(ttype), TTYPE_MISSING).astype(np.int16))
    f.create_dataset("ra", data=rows["ra"].to_numpy(np.float64)[kept])
    f.create_dataset("dec", data=rows["dec"].to_numpy(np.float64)[kept])
    f.create_dataset("redshift", data=rows["redshift"].to_numpy(np.float64)[kept])
    f.create_dataset("gmag", data=rows["gmag"].to_numpy(np.float64)[kept])
    f.create_dataset("objid", data=np.array(rows["objid"].astype(str).to_numpy()[kept], dtype=object),
                     dtype=h5py.string_dtype("utf-8"))


def _write_failures(path: Path, ids, ra, dec, failures: dict[int, str]):
    def write(fh):
        w = csv.writer(fh)
        w.writerow(["objid", "ra", "dec", "reason"])
        for k in sorted(failures):
            w.writerow([ids[k], f"{ra[k]:.6f}", f"{dec[k]:.6f}", failures[k]])

    atomic_write(path, write, text=True, sync=True)
