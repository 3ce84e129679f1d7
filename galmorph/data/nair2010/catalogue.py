"""The Nair & Abraham (2010) catalogue: VizieR query, ASU-TSV parsing, normalisation, and
the T-type to 4-way class mapping.

`fetch_catalogue` returns the table with the columns galmorph uses (objid, ra, dec, ttype,
redshift, gmag), cached in the cache folder so that later calls make no request. The
VizieR client is chosen by ``vizier_server`` (see the package docstring): astroquery for
``None`` or a bare host, the built-in ASU tab-separated client for an http(s) URL. Both are
retried under galmorph's HTTP policy (`galmorph.data.http`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import requests

from galmorph.core.errors import GalmorphError
from galmorph.core.io import atomic_write, ensure_writable_dir
from galmorph.data import http
from galmorph.data.nair2010.params import CATALOGUE, CATALOGUE_ATTEMPTS, CATALOGUE_SOURCE, CATALOGUE_TIMEOUT_S
from galmorph.data.nair2010.support import now, one_line, read_json

log = logging.getLogger(__name__)

# Columns looked for in the VizieR table, first match wins (exact name, then any case).
_COLUMNS = {
    "objid": ("SDSS", "objID", "ObjID", "Name", "recno"),
    "ttype": ("TT", "TType", "T-type", "T"),
    "ra": ("_RAJ2000", "RAJ2000", "_RA", "RAdeg", "RA_ICRS", "RA"),
    "dec": ("_DEJ2000", "DEJ2000", "_DE", "DEdeg", "DE_ICRS", "DE", "Dec"),
    "redshift": ("z", "zs", "zsp", "Redshift"),
    "gmag": ("gmag", "g", "gMag"),
}


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
    `galmorph.data.nair2010` docstring. Raises GalmorphError when the answer is empty or cannot be parsed.
    """
    import pandas as pd

    if isinstance(row_limit, bool) or not isinstance(row_limit, int) or row_limit == 0 or row_limit < -1:
        raise GalmorphError(f"row_limit must be -1 (all rows) or a positive integer (got {row_limit!r}); pass row_limit=-1")
    cache_dir = Path(cache_dir).expanduser()
    ensure_writable_dir(cache_dir, "cache folder")
    stem = "catalogue" if row_limit < 0 else f"catalogue_rows{row_limit}"
    csv_path, meta_path = cache_dir / f"{stem}.csv", cache_dir / f"{stem}.json"

    if csv_path.is_file():
        try:
            df = _read_catalogue_csv(csv_path)
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
            log.warning("cached catalogue %s is unreadable (%s); fetching it again", csv_path, exc)
        else:
            meta = read_json(meta_path)
            df.attrs["source"] = meta.get("source", CATALOGUE_SOURCE)
            df.attrs["server"] = meta.get("server", "unknown")
            return df

    server_desc, raw = _query_vizier(vizier_server, row_limit)
    df = _normalise_catalogue(raw, server_desc)
    atomic_write(csv_path, lambda fh: df.to_csv(fh, index=False), text=True, sync=True)
    meta = {"source": CATALOGUE_SOURCE, "server": server_desc, "rows": int(len(df)),
            "row_limit": row_limit, "fetched": now()}
    atomic_write(meta_path, lambda fh: json.dump(meta, fh, indent=2), text=True, sync=True)
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
    """(description of the server, raw DataFrame) from VizieR.

    Up to CATALOGUE_ATTEMPTS tries; the HTTP policy decides which failures get another
    (transient errors and retryable statuses) and how long to wait. Any other request
    error, or the last one, is a GalmorphError.
    """
    direct = server is not None and re.match(r"^https?://", server, re.I) is not None
    for attempt in range(CATALOGUE_ATTEMPTS):
        try:
            if direct:
                return server, _query_asu_tsv(server, row_limit)
            return _query_astroquery(server, row_limit)
        except GalmorphError:
            raise
        except Exception as exc:
            if not (isinstance(exc, requests.RequestException) or http.is_transient(exc)):
                raise
            if attempt == CATALOGUE_ATTEMPTS - 1 or not http.should_retry(exc):
                where = server or "astroquery's default VizieR mirror"
                raise GalmorphError(
                    f"cannot fetch {CATALOGUE} from {where} ({one_line(exc)}); check the network "
                    "or pass another vizier_server (a VizieR mirror host or URL)"
                ) from exc
            http.wait(http.delay(attempt, http.retry_after_of(exc)))
    raise AssertionError("unreachable")


def _query_asu_tsv(base_url: str, row_limit: int):
    from urllib.parse import urlencode

    url = base_url.rstrip("/") + "/viz-bin/asu-tsv"
    params = {"-source": CATALOGUE, "-out.max": "unlimited" if row_limit < 0 else str(row_limit),
              "-out.add": "_RAJ2000,_DEJ2000", "-oc.form": "d"}
    # -out.all is a bare flag in ASU (as astroquery sends it), not "-out.all=".
    query = urlencode(params, safe="/,") + "&-out.all"
    resp = requests.get(f"{url}?{query}", timeout=(30.0, CATALOGUE_TIMEOUT_S),
                        headers={"User-Agent": http.USER_AGENT})
    if http.retryable_status(resp.status_code):
        resp.raise_for_status()  # an HTTPError (all retryable statuses are >= 400): retried by the caller
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
    except Exception as exc:
        if isinstance(exc, requests.RequestException) or http.is_transient(exc):
            raise  # network trouble: the caller's retry policy decides
        # astroquery's parse errors and the like
        raise GalmorphError(f"astroquery could not read {CATALOGUE} from {viz.VIZIER_SERVER} "
                            f"({one_line(exc)}); retry later or pass another vizier_server") from exc
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
