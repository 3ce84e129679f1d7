"""Constants of the nair2010 data set, its preparation settings and where it is written.

`PrepareConfig` is the one place the preparation defaults are written; the CLI, the
MLproject entry point, docs/parameters.md and `prepare()` all take them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from galmorph.core.settings import option
from galmorph.core.paths import cache_dir

CLASS_NAMES = ("E", "S0", "Sp", "Irr+Misc")
CATALOGUE = "J/ApJS/186/427/table2"
CATALOGUE_SOURCE = "Nair & Abraham 2010, ApJS 186, 427 (VizieR J/ApJS/186/427/table2)"
DEFAULT_CUTOUT_URL = "https://skyserver.sdss.org/dr16/SkyServerWS/ImgCutout/getjpeg"
SCALE_ARCSEC = 0.7
SIZE = 110
CHANNELS = ("i", "r", "g")  # SDSS colour JPEGs: R = i, G = r, B = g (Lupton et al. 2004)
TTYPE_MISSING = -999

CATALOGUE_ATTEMPTS = 3  # tries of the VizieR query (the HTTP policy decides which failures get another)
CATALOGUE_TIMEOUT_S = 300.0  # read timeout of the VizieR query: the whole table comes in one answer
STALE_TMP_S = 600.0  # a cutout temp file this old belongs to no live run


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
    retries: int = option(4, "retries per cutout on connection errors and the statuses galmorph.data.http retries (408, 425, 429, 500, 502-504)")
    timeout: float = option(30.0, "seconds per request")
    limit: int = option(0, "only the first N catalogue rows (0 = all 14,034)")
    experiment: str = option("galmorph", "MLflow experiment outside `mlflow run`", mlproject=False)


DEFAULTS = PrepareConfig()


def default_cache_dir() -> Path:
    """``$GALMORPH_CACHE/nair2010``: the catalogue and cutout cache, reused by later runs."""
    return cache_dir() / "nair2010"


def default_output_path() -> Path:
    """``$GALMORPH_CACHE/nair2010/nair2010.h5`` (default cache: ``~/.cache/galmorph``)."""
    return default_cache_dir() / "nair2010.h5"


def manifest_path(out: Path) -> Path:
    """The manifest JSON written next to the HDF5 file ``out``."""
    out = Path(out)
    return out.with_name(out.stem + ".manifest.json")


def failures_path(out: Path) -> Path:
    """The failures CSV (objid, ra, dec, reason) written next to the HDF5 file ``out``."""
    out = Path(out)
    return out.with_name(out.stem + ".failures.csv")
