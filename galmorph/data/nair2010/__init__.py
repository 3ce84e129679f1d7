"""The `nair2010` data set: Nair & Abraham (2010) galaxies with SDSS colour cutouts.

Prepared once by `prepare()`, which writes a Galaxy10-style HDF5 file plus a manifest:

1. Catalogue: VizieR table J/ApJS/186/427/table2 (14,034 galaxies), all rows and all
   columns (``-out.all``, so the client does not depend on the exact names of the columns
   it does not use) plus VizieR's computed J2000 position in degrees (``_RAJ2000``,
   ``_DEJ2000``). Cached as ``catalogue.csv`` (+ ``catalogue.json``) in the cache folder;
   later calls read the cache and make no request.

   Two clients, chosen by ``vizier_server``:

   - ``None`` or a bare host name (``"vizier.cfa.harvard.edu"``): astroquery's ``Vizier``
     (the default path), on its configured mirror or the one named. astroquery always
     builds ``https://<host>/viz-bin/votable`` and cannot be pointed at a plain-http server.
   - a URL with a scheme (``"http://127.0.0.1:8080"``, ``"https://mirror.example"``): the
     VizieR ASU protocol spoken directly with requests, tab-separated output:
     ``GET <url>/viz-bin/asu-tsv?-source=J/ApJS/186/427/table2&-out.max=unlimited&-out.all
     &-out.add=_RAJ2000,_DEJ2000&-oc.form=d``. The tests use this path (and the astroquery
     path, with its URL builder redirected to a local server).

2. Labels: `ttype_to_class` maps Nair T-types to the paper's 4-way classes
   (-5 E; -3..0 S0; 1..9 Sp; 10, 99 and anything else, non-integers and missing values
   included, Irr+Misc).

3. Cutouts: 110x110 JPEGs at 0.7 arcsec/pixel from the SDSS SkyServer ImgCutout service
   (``getjpeg?ra=..&dec=..&scale=0.7&width=110&height=110``), fetched by a bounded thread
   pool under one token-bucket rate limit shared by all threads, with retries and
   exponential backoff on connection errors, timeouts, 429 and 5xx. Each good cutout is
   stored as ``cutouts/<objid>.jpg`` in the cache folder (temp name, then ``os.replace``)
   the moment it arrives, so a rerun never fetches it again. A cutout that does not decode
   as a 110x110 RGB JPEG, or is blank (every band uniform), is a failure for that galaxy
   (not stored; fetched again on the next run). Failures never abort the run; they are listed in ``<out stem>.failures.csv``.

4. Output (written to a temp name, then ``os.replace``): ``images`` uint8 (N, 110, 110, 3)
   in the SDSS JPEG order R, G, B = i, r, g (the g band the paper used is channel 2);
   ``ans`` uint8 4-way class; ``ttype`` int16 (-999 where the catalogue has none);
   ``ra``, ``dec``, ``redshift`` (NaN where missing), ``gmag`` float64; ``objid`` UTF-8
   strings (the SDSS IAU name, e.g. ``J155341.74-003422.8``; h5py reads them as bytes);
   attributes ``class_names``, ``source``, ``created`` and a few more. Only galaxies with a
   good cutout are in it, in catalogue order. Next to it, ``<out stem>.manifest.json``
   (counts, sources, URL template, scale, sha256 of the HDF5 file, galmorph version).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import requests

from galmorph import __version__
from galmorph.config import option
from galmorph.core.errors import GalmorphError
from galmorph.core.io import atomic_write, publish
from galmorph.core.paths import cache_dir
from galmorph.core.paths import cache_dir as _galmorph_cache
from galmorph.data.download import sha256_file

log = logging.getLogger(__name__)

CLASS_NAMES = ("E", "S0", "Sp", "Irr+Misc")
CATALOGUE = "J/ApJS/186/427/table2"
CATALOGUE_SOURCE = "Nair & Abraham 2010, ApJS 186, 427 (VizieR J/ApJS/186/427/table2)"
DEFAULT_CUTOUT_URL = "https://skyserver.sdss.org/dr16/SkyServerWS/ImgCutout/getjpeg"
SCALE_ARCSEC = 0.7
SIZE = 110
CHANNELS = ("i", "r", "g")  # SDSS colour JPEGs: R = i, G = r, B = g (Lupton et al. 2004)
TTYPE_MISSING = -999

# Backoff before retry k (0-based) is BACKOFF_BASE_S * 2**k, jittered by 0.5-1.5x, capped.
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
CATALOGUE_ATTEMPTS = 3
CATALOGUE_TIMEOUT_S = 300.0
_RETRY_STATUS = frozenset({429}) | frozenset(range(500, 600))
_STALE_TMP_S = 600.0

# Columns looked for in the VizieR table, first match wins (exact name, then any case).
_COLUMNS = {
    "objid": ("SDSS", "objID", "ObjID", "Name", "recno"),
    "ttype": ("TT", "TType", "T-type", "T"),
    "ra": ("_RAJ2000", "RAJ2000", "_RA", "RAdeg", "RA_ICRS", "RA"),
    "dec": ("_DEJ2000", "DEJ2000", "_DE", "DEdeg", "DE_ICRS", "DE", "Dec"),
    "redshift": ("z", "zs", "zsp", "Redshift"),
    "gmag": ("gmag", "g", "gMag"),
}


@dataclass
class PrepareConfig:
    """Settings of the nair2010 preparation (`galmorph data prepare nair2010`, MLproject
    `prepare_nair2010`); `prepare` takes its defaults from here."""

    out: str = option("", "output HDF5 file (default: $GALMORPH_CACHE/nair2010/nair2010.h5)")
    cache_dir: str = option("", "catalogue and cutout cache (default: $GALMORPH_CACHE/nair2010)")
    cutout_url: str = option(DEFAULT_CUTOUT_URL, "SDSS SkyServer ImgCutout getjpeg URL (default: DR16)")
    vizier_server: str = option("", "VizieR mirror host (astroquery) or http(s) URL (built-in ASU client); "
                                    "default: astroquery's mirror")
    workers: int = option(8, "parallel cutout requests")
    max_rate: float = option(10.0, "requests per second, all workers together")
    retries: int = option(4, "retries per cutout on errors, 429 and 5xx")
    timeout: float = option(30.0, "seconds per request")
    limit: int = option(0, "only the first N catalogue rows (0 = all 14,034)")
    experiment: str = option("galmorph", "MLflow experiment outside `mlflow run`", mlproject=False)


_DEFAULTS = PrepareConfig()


def default_output_path() -> Path:
    """``$GALMORPH_CACHE/nair2010/nair2010.h5`` (default cache: ``~/.cache/galmorph``)."""

    return cache_dir() / "nair2010" / "nair2010.h5"


def manifest_path(out: Path) -> Path:
    """The manifest JSON written next to the HDF5 file ``out``."""
    out = Path(out)
    return out.with_name(out.stem + ".manifest.json")


def failures_path(out: Path) -> Path:
    """The failures CSV (objid, ra, dec, reason) written next to the HDF5 file ``out``."""
    out = Path(out)
    return out.with_name(out.stem + ".failures.csv")


# --------------------------------------------------------------------------- labels
def ttype_to_class(ttype) -> np.ndarray:
    """4-way class (0 E, 1 S0, 2 Sp, 3 Irr+Misc) of Nair T-types, as uint8 of the input's shape.

    -5 -> E; -3, -2, -1, 0 -> S0; 1..9 -> Sp; everything else (10, 99, other integers,
    non-integers, NaN, masked or non-numeric entries) -> Irr+Misc.
    """
    if isinstance(ttype, np.ma.MaskedArray):
        ttype = ttype.astype(float).filled(np.nan)
    arr = np.asarray(ttype)
    if arr.dtype.kind in "biuf":
        t = arr.astype(float)
    else:
        t = np.array([_as_float(x) for x in arr.ravel()], dtype=float).reshape(arr.shape)
    out = np.full(t.shape, 3, dtype=np.uint8)
    whole = np.isfinite(t) & (t == np.round(t))
    out[whole & (t == -5)] = 0
    out[whole & (t >= -3) & (t <= 0)] = 1
    out[whole & (t >= 1) & (t <= 9)] = 2
    return out


def _as_float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------- catalogue
def fetch_catalogue(cache_dir: Path, vizier_server: str | None = None, row_limit: int = -1):
    """The Nair & Abraham catalogue as a pandas DataFrame, cached in ``cache_dir``.

    Columns: ``objid`` (str, SDSS IAU name), ``ra``, ``dec`` (float64, J2000 degrees),
    ``ttype`` (float64, NaN where missing), ``redshift``, ``gmag`` (float64, NaN where
    missing). ``df.attrs`` holds ``source`` and ``server``. ``row_limit`` -1 fetches every
    row; a positive value fetches that many, cached separately. ``vizier_server``: see the
    module docstring. Raises GalmorphError when the answer is empty or cannot be parsed.
    """
    import pandas as pd

    if isinstance(row_limit, bool) or not isinstance(row_limit, int) or row_limit == 0 or row_limit < -1:
        raise GalmorphError(f"row_limit must be -1 (all rows) or a positive integer (got {row_limit!r}); pass row_limit=-1")
    cache_dir = Path(cache_dir).expanduser()
    _ensure_writable_dir(cache_dir, "cache folder")
    stem = "catalogue" if row_limit < 0 else f"catalogue_rows{row_limit}"
    csv_path, meta_path = cache_dir / f"{stem}.csv", cache_dir / f"{stem}.json"

    if csv_path.is_file():
        try:
            df = _read_catalogue_csv(csv_path)
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
            log.warning("cached catalogue %s is unreadable (%s); fetching it again", csv_path, exc)
        else:
            meta = _read_json(meta_path)
            df.attrs["source"] = meta.get("source", CATALOGUE_SOURCE)
            df.attrs["server"] = meta.get("server", "unknown")
            return df

    server_desc, raw = _query_vizier(vizier_server, row_limit)
    df = _normalise_catalogue(raw, server_desc)
    _atomic_write(csv_path, lambda fh: df.to_csv(fh, index=False), text=True)
    meta = {"source": CATALOGUE_SOURCE, "server": server_desc, "rows": int(len(df)),
            "row_limit": row_limit, "fetched": _now()}
    _atomic_write(meta_path, lambda fh: json.dump(meta, fh, indent=2), text=True)
    df.attrs["source"] = CATALOGUE_SOURCE
    df.attrs["server"] = server_desc
    return df


def _read_catalogue_csv(path: Path):
    import pandas as pd

    numeric = ["ra", "dec", "ttype", "redshift", "gmag"]
    df = pd.read_csv(path, dtype={"objid": str}, keep_default_na=False,
                     na_values={c: [""] for c in numeric})
    missing = {"objid", *numeric} - set(df.columns)
    if missing or len(df) == 0:
        raise ValueError(f"missing columns {sorted(missing)}" if missing else "no rows")
    for c in numeric:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df


def _query_vizier(server: str | None, row_limit: int):
    """(description of the server, raw DataFrame) from VizieR, retried on network errors."""
    direct = server is not None and re.match(r"^https?://", server, re.I) is not None
    for attempt in range(CATALOGUE_ATTEMPTS):
        try:
            if direct:
                return server, _query_asu_tsv(server, row_limit)
            return _query_astroquery(server, row_limit)
        except requests.RequestException as exc:
            if attempt == CATALOGUE_ATTEMPTS - 1:
                where = server or "astroquery's default VizieR mirror"
                raise GalmorphError(
                    f"cannot fetch {CATALOGUE} from {where} ({_one_line(exc)}); check the network "
                    "or pass another vizier_server (a VizieR mirror host or URL)"
                ) from exc
            time.sleep(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt))
    raise AssertionError("unreachable")


def _query_asu_tsv(base_url: str, row_limit: int):
    from urllib.parse import urlencode

    url = base_url.rstrip("/") + "/viz-bin/asu-tsv"
    params = {"-source": CATALOGUE, "-out.max": "unlimited" if row_limit < 0 else str(row_limit),
              "-out.add": "_RAJ2000,_DEJ2000", "-oc.form": "d"}
    # -out.all is a bare flag in ASU (as astroquery sends it), not "-out.all=".
    query = urlencode(params, safe="/,") + "&-out.all"
    resp = requests.get(f"{url}?{query}", timeout=(30.0, CATALOGUE_TIMEOUT_S),
                        headers={"User-Agent": _user_agent()})
    if resp.status_code in _RETRY_STATUS:
        resp.raise_for_status()  # a RequestException: retried by the caller
    if resp.status_code != 200:
        raise GalmorphError(f"VizieR at {url} answered HTTP {resp.status_code}; check vizier_server")
    return _parse_asu_tsv(resp.content.decode("utf-8", errors="replace"), url)


def _query_astroquery(server: str | None, row_limit: int):
    try:
        from astroquery.vizier import Vizier
    except ImportError as exc:
        raise GalmorphError("astroquery is not installed; pip install 'galmorph[nair]', or pass "
                            "vizier_server='https://vizier.cds.unistra.fr' to use the built-in ASU client") from exc

    kwargs = {"columns": ["**", "_RAJ2000", "_DEJ2000"], "row_limit": row_limit,
              "timeout": CATALOGUE_TIMEOUT_S}
    if server:
        kwargs["vizier_server"] = server
    viz = Vizier(**kwargs)
    desc = f"astroquery Vizier ({viz.VIZIER_SERVER})"
    try:
        result = viz.query_constraints(catalog=CATALOGUE, cache=False)
    except requests.RequestException:
        raise
    except Exception as exc:  # astroquery's parse errors and the like
        raise GalmorphError(f"astroquery could not read {CATALOGUE} from {viz.VIZIER_SERVER} "
                            f"({_one_line(exc)}); retry later or pass another vizier_server") from exc
    tables = [result[k] for k in result.keys()] if result is not None and hasattr(result, "keys") else []
    tables = [t for t in tables if len(t) > 0]
    if not tables:
        raise GalmorphError(f"VizieR ({viz.VIZIER_SERVER}) returned no rows of {CATALOGUE}; "
                            "retry later or pass another vizier_server")
    table = next((t for t in tables if _find_column(t.colnames, "ttype")), tables[0])
    return desc, table.to_pandas()


def _parse_asu_tsv(text: str, where: str = "VizieR"):
    """The table of a VizieR ASU tab-separated answer as a DataFrame of strings.

    Handles ``#`` comment lines anywhere, an optional units line and the dashes line under
    the header, CRLF line ends and several tables (the one with a T-type column is taken).
    """
    import pandas as pd

    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    tables, i, n = [], 0, len(lines)
    while i < n:
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            i += 1
            continue
        header = [h.strip().strip('"').strip() for h in line.split("\t")]
        i += 1
        # Under the header: optional units line, then a line of dashes.
        if i < n and _is_dashes(lines[i]):
            i += 1
        elif i + 1 < n and not lines[i].startswith("#") and _is_dashes(lines[i + 1]):
            i += 2
        rows = []
        # A table ends at a blank line (VizieR separates tables by one); a row of empty
        # cells is still a row, and stray comment lines inside a table are skipped.
        while i < n and lines[i].strip(" "):
            if not lines[i].startswith("#"):
                cells = [c.strip() for c in lines[i].split("\t")]
                rows.append((cells + [""] * len(header))[: len(header)])
            i += 1
        if rows:
            tables.append(pd.DataFrame(rows, columns=_dedupe(header)))
    if not tables:
        errors = [ln.lstrip("#* ").strip() for ln in lines if ln.startswith("#") and "error" in ln.lower()]
        hint = f": {errors[0][:200]}" if errors else ""
        raise GalmorphError(f"the answer of {where} holds no table rows of {CATALOGUE}{hint}; "
                            "check vizier_server points at VizieR, or retry later")
    return next((t for t in tables if _find_column(t.columns, "ttype")), tables[0])


def _is_dashes(line: str) -> bool:
    cells = [c.strip() for c in line.split("\t")]
    return any(cells) and all(re.fullmatch(r"-*", c) for c in cells)


def _dedupe(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        k = seen.get(name, 0)
        out.append(name if k == 0 else f"{name}_{k}")
        seen[name] = k + 1
    return out


def _find_column(columns, key: str) -> str | None:
    columns = [str(c) for c in columns]
    for cand in _COLUMNS[key]:
        if cand in columns:
            return cand
    lower = {c.lower(): c for c in columns}
    for cand in _COLUMNS[key]:
        if cand.lower() in lower:
            return lower[cand.lower()]
    return None


def _normalise_catalogue(raw, where: str):
    """objid / ra / dec / ttype / redshift / gmag DataFrame from a raw VizieR table."""
    import pandas as pd

    if raw is None or len(raw) == 0:
        raise GalmorphError(f"the catalogue from {where} is empty; retry later or pass another vizier_server")
    cols = {key: _find_column(raw.columns, key) for key in _COLUMNS}
    for key in ("ttype", "ra", "dec"):
        if cols[key] is None:
            raise GalmorphError(
                f"the catalogue from {where} has no {key} column (looked for {', '.join(_COLUMNS[key])}; "
                f"got {', '.join(map(str, raw.columns[:12]))}); check vizier_server points at VizieR"
            )
    df = pd.DataFrame(index=range(len(raw)))
    if cols["objid"] is not None:
        ids = [_as_text(v) for v in raw[cols["objid"]].tolist()]
    else:
        ids = [""] * len(raw)
    df["objid"] = [s if s else f"nair{i:05d}" for i, s in enumerate(ids)]
    df["ra"] = _degrees(raw[cols["ra"]], hours=True)
    df["dec"] = _degrees(raw[cols["dec"]], hours=False)
    df["ttype"] = _numeric(raw[cols["ttype"]])
    for key in ("redshift", "gmag"):
        df[key] = _numeric(raw[cols[key]]) if cols[key] is not None else np.nan
    if not np.isfinite(df["ra"]).any():
        raise GalmorphError(f"the catalogue from {where} has no readable positions in {cols['ra']}; "
                            "check vizier_server points at VizieR")
    return df


def _as_text(v) -> str:
    if v is None or v is np.ma.masked:
        return ""
    if isinstance(v, bytes):
        v = v.decode("utf-8", errors="replace")
    if isinstance(v, float) and math.isnan(v):
        return ""
    return str(v).strip()


def _numeric(series) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(pd.Series([_as_text(v) for v in series.tolist()]), errors="coerce").to_numpy(float, copy=True)


def _degrees(series, hours: bool) -> np.ndarray:
    """Decimal degrees; sexagesimal strings ("hh:mm:ss.s" / "+dd mm ss") are converted."""
    values = _numeric(series)
    texts = [_as_text(v) for v in series.tolist()]
    for i, (val, txt) in enumerate(zip(values, texts)):
        if math.isnan(val) and txt:
            parts = re.split(r"[:\s]+", txt)
            try:
                nums = [abs(float(p)) for p in parts if p]
            except ValueError:
                continue
            if not nums:
                continue
            deg = sum(x / 60**k for k, x in enumerate(nums)) * (15.0 if hours else 1.0)
            values[i] = -deg if txt.lstrip().startswith("-") else deg
    return values


# --------------------------------------------------------------------------- cutouts
class _TokenBucket:
    """A thread-safe token bucket: `rate` tokens/s, at most `capacity` saved up."""

    def __init__(self, rate: float, capacity: float = 1.0):
        self.rate, self.capacity = float(rate), float(capacity)
        self.tokens, self.stamp = self.capacity, time.monotonic()
        self.lock = threading.Lock()

    def acquire(self, stop: threading.Event) -> bool:
        """Take a token, waiting for it; False when `stop` was set meanwhile."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= 1.0  # reserve now, wait outside the lock: callers queue fairly
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        return not stop.wait(wait) if wait > 0 else not stop.is_set()


class _Sessions:
    """One requests.Session per worker thread (a Session is not thread-safe)."""

    def __init__(self):
        self.local, self.all, self.lock = threading.local(), [], threading.Lock()

    def get(self) -> requests.Session:
        s = getattr(self.local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = _user_agent()
            self.local.session = s
            with self.lock:
                self.all.append(s)
        return s

    def close(self):
        for s in self.all:
            s.close()


def _check_cutout(data: bytes) -> str | None:
    """None when `data` is a 110x110 RGB JPEG that decodes completely, else the reason."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, size, mode = im.format, im.size, im.mode
            im.load()
            extrema = im.getextrema()
    except Exception as exc:  # PIL raises many types for broken files
        head = data[:40].decode("latin-1", errors="replace")
        return _one_line(f"not a decodable image ({type(exc).__name__}: {exc}; starts {head!r})")[:300]
    if fmt != "JPEG":
        return f"not a JPEG ({fmt})"
    if size != (SIZE, SIZE):
        return f"wrong size {size[0]}x{size[1]} (expected {SIZE}x{SIZE})"
    if mode != "RGB":
        return f"not an RGB colour image (mode {mode})"
    # Outside the footprint SkyServer answers a uniform image; galmorph's HDF5 reader
    # rejects blank images, and they carry no information anyway.
    if all(lo == hi for lo, hi in extrema):
        return "blank image (every band uniform; no SDSS imaging here?)"
    return None


def _decode(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.format != "JPEG" or im.size != (SIZE, SIZE) or im.mode != "RGB":
            raise ValueError(f"{im.format} {im.size} {im.mode}")
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _fetch_cutout(session: requests.Session, url: str, ra: float, dec: float, *, timeout: float,
                  retries: int, bucket: _TokenBucket, stop: threading.Event) -> tuple[bytes | None, str | None]:
    """(JPEG bytes, None) or (None, reason). Retries network errors, timeouts, 429 and 5xx."""
    params = {"ra": f"{ra:.6f}", "dec": f"{dec:.6f}", "scale": f"{SCALE_ARCSEC:g}",
              "width": str(SIZE), "height": str(SIZE)}
    reason = "not attempted"
    for attempt in range(retries + 1):
        if not bucket.acquire(stop):
            return None, "interrupted"
        retry_after = None
        try:
            resp = session.get(url, params=params, timeout=timeout)
            status, content = resp.status_code, resp.content
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            reason = type(exc).__name__
        else:
            if status == 200:
                return (content, None) if (bad := _check_cutout(content)) is None else (None, bad)
            reason = f"HTTP {status}"
            if status not in _RETRY_STATUS:
                return None, reason
            retry_after = _retry_after(resp.headers.get("Retry-After"))
        if attempt < retries:
            delay = BACKOFF_BASE_S * 2**attempt * random.uniform(0.5, 1.5) if retry_after is None else retry_after
            if stop.wait(min(BACKOFF_MAX_S, delay)):
                return None, "interrupted"
    return None, f"{reason} after {retries + 1} attempt{'s' if retries else ''}"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


def _cutout_name(objid: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", objid) + ".jpg"


def _remove_stale_tmp(folder: Path):
    """Temp files left by a killed run (old enough not to belong to a live one)."""
    now = time.time()
    for p in folder.glob("*.tmp"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_S:
                p.unlink()
        except OSError:
            pass


# --------------------------------------------------------------------------- prepare
def prepare(out: Path | None = None, cache_dir: Path | None = None, *, cutout_url: str = DEFAULT_CUTOUT_URL,
            vizier_server: str | None = None, workers: int = _DEFAULTS.workers, max_rate: float = _DEFAULTS.max_rate,
            retries: int = _DEFAULTS.retries, timeout: float = _DEFAULTS.timeout, limit: int | None = None,
            progress: bool = True) -> dict:
    """Build the nair2010 HDF5 file (+ manifest and failures CSV) and return the manifest.

    ``out`` defaults to `default_output_path()`; ``cache_dir`` (catalogue and cutouts,
    reused by later runs) to ``$GALMORPH_CACHE/nair2010``. ``limit`` keeps the first N
    catalogue rows. ``workers`` threads share a ``max_rate`` requests/s budget; each request
    gets ``timeout`` seconds (connect and read) and up to ``retries`` retries. Raises
    GalmorphError on bad arguments, an unwritable folder, an unusable catalogue, or when no
    cutout at all could be fetched (then no HDF5 file is written).
    """
    from tqdm.auto import tqdm

    _check_args(cutout_url, workers, max_rate, retries, timeout, limit)
    try:
        import PIL.Image  # noqa: F401  (the workers decode every cutout)
    except ImportError as exc:
        raise GalmorphError("pillow is not installed; pip install 'galmorph[nair]'") from exc
    out = Path(out).expanduser() if out is not None else default_output_path()
    if out.is_dir():
        raise GalmorphError(f"output {out} is a folder; pass a file path such as {out / 'nair2010.h5'}")
    _ensure_writable_dir(out.parent, "output folder")
    if cache_dir is None:

        cache_dir = _galmorph_cache() / "nair2010"
    cache = Path(cache_dir).expanduser()
    cut_dir = cache / "cutouts"
    _ensure_writable_dir(cut_dir, "cutout cache folder")
    _remove_stale_tmp(cut_dir)

    cat = fetch_catalogue(cache, vizier_server=vizier_server)
    rows = cat.iloc[:limit].reset_index(drop=True) if limit is not None else cat
    n = len(rows)
    ids = rows["objid"].astype(str).tolist()
    ra, dec = rows["ra"].to_numpy(float), rows["dec"].to_numpy(float)
    files = [cut_dir / _cutout_name(i) for i in ids]

    failures: dict[int, str] = {}
    todo = []
    for k in range(n):
        if not (np.isfinite(ra[k]) and np.isfinite(dec[k])):
            failures[k] = "no RA/Dec in the catalogue"
        elif not files[k].is_file():
            todo.append(k)
    log.info("nair2010: %d galaxies, %d cutouts cached, %d to fetch", n, n - len(todo) - len(failures), len(todo))

    _download(todo, files, ra, dec, failures, url=cutout_url, workers=workers, max_rate=max_rate,
              retries=retries, timeout=timeout, progress=progress, tqdm=tqdm)

    fail_csv = failures_path(out)
    created = _now()
    h5_tmp = None
    try:
        kept, h5_tmp = _write_hdf5(out, rows, files, failures, cutout_url, created)
        _write_failures(fail_csv, ids, ra, dec, failures)
        if len(kept) == 0:
            raise GalmorphError(
                f"no cutout of the {n} galaxies could be fetched (reasons in {fail_csv}); "
                f"check cutout_url ({cutout_url}) and the network, then run again"
            )
        digest, size = sha256_file(h5_tmp), h5_tmp.stat().st_size
        publish(h5_tmp, out)
        h5_tmp = None
    finally:
        if h5_tmp is not None:
            h5_tmp.unlink(missing_ok=True)

    labels = ttype_to_class(rows["ttype"].to_numpy(float)[kept])
    manifest = {
        "dataset": "nair2010",
        "file": out.name,
        "path": str(out),
        "n_galaxies": len(kept),
        "n_failed": len(failures),
        "n_catalogue": n,
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
        "failures_csv": fail_csv.name,
        "galmorph_version": _version(),
        "created": created,
    }
    _atomic_write(manifest_path(out), lambda fh: json.dump(manifest, fh, indent=2), text=True)
    if failures:
        log.warning("nair2010: %d of %d galaxies have no cutout (listed in %s); run prepare again to retry them",
                    len(failures), n, fail_csv)
    log.info("nair2010: wrote %s (%d galaxies)", out, len(kept))
    return manifest


def _check_args(cutout_url, workers, max_rate, retries, timeout, limit):
    def whole(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if not isinstance(cutout_url, str) or not re.match(r"^https?://\S+$", cutout_url, re.I):
        raise GalmorphError(f"cutout_url must be an http(s) URL (got {cutout_url!r}); pass e.g. {DEFAULT_CUTOUT_URL}")
    if not whole(workers) or workers < 1:
        raise GalmorphError(f"workers must be an integer >= 1 (got {workers!r}); pass e.g. workers=8")
    if not isinstance(max_rate, (int, float)) or isinstance(max_rate, bool) or not (0 < max_rate < math.inf):
        raise GalmorphError(f"max_rate must be a positive number of requests per second (got {max_rate!r}); pass e.g. max_rate=10")
    if not whole(retries) or retries < 0:
        raise GalmorphError(f"retries must be an integer >= 0 (got {retries!r}); pass e.g. retries=4")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not (0 < timeout < math.inf):
        raise GalmorphError(f"timeout must be a positive number of seconds (got {timeout!r}); pass e.g. timeout=30")
    if limit is not None and (not whole(limit) or limit < 1):
        raise GalmorphError(f"limit must be None (all galaxies) or an integer >= 1 (got {limit!r}); pass e.g. limit=100")


def _download(todo, files, ra, dec, failures, *, url, workers, max_rate, retries, timeout, progress, tqdm):
    """Fetch and store the cutouts of rows `todo`; failures go into `failures` (row -> reason)."""
    if not todo:
        return
    bucket, stop, sessions = _TokenBucket(max_rate), threading.Event(), _Sessions()

    def job(k: int) -> tuple[int, str | None]:
        if stop.is_set():
            return k, "interrupted"
        data, reason = _fetch_cutout(sessions.get(), url, ra[k], dec[k], timeout=timeout, retries=retries,
                                     bucket=bucket, stop=stop)
        if data is not None:
            _store_cutout(files[k], data)
        return k, reason

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nair2010")
    bar = tqdm(total=len(todo), desc="nair2010 cutouts", unit="img", disable=not progress)
    try:
        futures = [pool.submit(job, k) for k in todo]
        for fut in as_completed(futures):
            k, reason = fut.result()
            if reason is not None:
                failures[k] = reason
            bar.update(1)
            if failures:
                bar.set_postfix(failed=len(failures), refresh=False)
    except BaseException:
        # Ctrl-C or a bug: stop the workers at their next wait, drop the queue, keep what is stored.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        bar.close()
        sessions.close()


def _store_cutout(path: Path, data: bytes):
    _atomic_write(path, lambda fh: fh.write(data), text=False, sync=False)


def _write_hdf5(out: Path, rows, files, failures, cutout_url, created) -> tuple[np.ndarray, Path | None]:
    """Write the HDF5 file to a temp name next to `out`; (kept row indices, temp path or None)."""
    import h5py

    candidates = [k for k in range(len(rows)) if k not in failures and files[k].is_file()]
    if not candidates:
        return np.zeros(0, dtype=int), None
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        kept = []
        with h5py.File(tmp, "w") as f:
            images = f.create_dataset("images", shape=(len(candidates), SIZE, SIZE, 3), dtype=np.uint8,
                                      maxshape=(None, SIZE, SIZE, 3), chunks=(8, SIZE, SIZE, 3))
            for k in candidates:
                try:
                    img = _decode(files[k])
                except Exception as exc:  # damaged on disk since it was stored: fetch again next run
                    failures[k] = _one_line(f"cached cutout unreadable ({type(exc).__name__}: {exc}); "
                                            "removed, fetched again next run")
                    files[k].unlink(missing_ok=True)
                    continue
                images[len(kept)] = img
                kept.append(k)
            kept = np.asarray(kept, dtype=int)
            images.resize(len(kept), axis=0)
            ttype = rows["ttype"].to_numpy(float)[kept]
            f.create_dataset("ans", data=ttype_to_class(ttype))
            f.create_dataset("ttype", data=np.where(np.isfinite(ttype), np.nan_to_num(ttype), TTYPE_MISSING).astype(np.int16))
            f.create_dataset("ra", data=rows["ra"].to_numpy(np.float64)[kept])
            f.create_dataset("dec", data=rows["dec"].to_numpy(np.float64)[kept])
            f.create_dataset("redshift", data=rows["redshift"].to_numpy(np.float64)[kept])
            f.create_dataset("gmag", data=rows["gmag"].to_numpy(np.float64)[kept])
            f.create_dataset("objid", data=np.array(rows["objid"].astype(str).to_numpy()[kept], dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
            f.attrs["class_names"] = list(CLASS_NAMES)
            f.attrs["source"] = (f"{CATALOGUE_SOURCE}; SDSS SkyServer ImgCutout {cutout_url} "
                                 f"({SIZE}x{SIZE} px at {SCALE_ARCSEC:g} arcsec/px)")
            f.attrs["created"] = created
            f.attrs["channels"] = list(CHANNELS)
            f.attrs["pixel_scale_arcsec"] = SCALE_ARCSEC
            f.attrs["ttype_missing"] = TTYPE_MISSING
            f.attrs["galmorph_version"] = _version()
        if len(kept) == 0:
            tmp.unlink()
            return kept, None
        return kept, tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_failures(path: Path, ids, ra, dec, failures: dict[int, str]):
    def write(fh):
        w = csv.writer(fh)
        w.writerow(["objid", "ra", "dec", "reason"])
        for k in sorted(failures):
            w.writerow([ids[k], f"{ra[k]:.6f}", f"{dec[k]:.6f}", failures[k]])

    _atomic_write(path, write, text=True)


# --------------------------------------------------------------------------- helpers
def _atomic_write(path: Path, write: Callable, *, text: bool, sync: bool = True):
    atomic_write(path, write, text=text, sync=sync)


def _ensure_writable_dir(path: Path, what: str):
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise GalmorphError(f"cannot write to the {what} {path} ({exc.strerror or type(exc).__name__}); "
                            "pass a writable folder") from exc


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _one_line(x) -> str:
    return " ".join(str(x).split())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    return __version__


def _user_agent() -> str:
    return f"galmorph/{_version()} (nair2010 data set preparation)"
