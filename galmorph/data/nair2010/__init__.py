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
   pool under one token-bucket rate limit shared by all threads, retried under galmorph's
   HTTP policy (`galmorph.data.http`: connection errors, timeouts, HTTP 408, 425, 429, 500,
   502, 503, 504; jittered exponential backoff, Retry-After honoured). Each good cutout is
   stored as ``cutouts/<objid>.jpg`` in the cache folder (temp name, then ``os.replace``)
   the moment it arrives, so a rerun never fetches it again. A cutout that does not decode
   as a 110x110 RGB JPEG, or is blank (every band uniform), is a failure for that galaxy
   (not stored; fetched again on the next run). Failures never abort the run; they are
   listed in ``<out stem>.failures.csv``.

4. Output (written to a temp name, then ``os.replace``): ``images`` uint8 (N, 110, 110, 3)
   in the SDSS JPEG order R, G, B = i, r, g (the g band the paper used is channel 2);
   ``ans`` uint8 4-way class; ``ttype`` int16 (-999 where the catalogue has none);
   ``ra``, ``dec``, ``redshift`` (NaN where missing), ``gmag`` float64; ``objid`` UTF-8
   strings (the SDSS IAU name, e.g. ``J155341.74-003422.8``; h5py reads them as bytes);
   attributes ``class_names``, ``source``, ``created`` and a few more. Only galaxies with a
   good cutout are in it, in catalogue order. Next to it, ``<out stem>.manifest.json``
   (counts, sources, URL template, scale, sha256 of the HDF5 file, galmorph version).

Modules: `params` (constants, `PrepareConfig`, default paths), `catalogue` (VizieR,
parsing, T-type to class), `cutouts` (fetching, checking, rate limit, thread pool), `build`
(`prepare`: HDF5, manifest, failures), `support` (folder, JSON and text helpers).
Everything other code uses is re-exported here.
"""

from galmorph.data.nair2010.build import prepare
from galmorph.data.nair2010.catalogue import fetch_catalogue, ttype_to_class
from galmorph.data.nair2010.params import (
    CATALOGUE,
    CATALOGUE_ATTEMPTS,
    CATALOGUE_SOURCE,
    CATALOGUE_TIMEOUT_S,
    CHANNELS,
    CLASS_NAMES,
    DEFAULT_CUTOUT_URL,
    SCALE_ARCSEC,
    SIZE,
    TTYPE_MISSING,
    PrepareConfig,
    default_cache_dir,
    default_output_path,
    failures_path,
    manifest_path,
)

__all__ = ["CATALOGUE", "CATALOGUE_ATTEMPTS", "CATALOGUE_SOURCE",
           "CATALOGUE_TIMEOUT_S", "CHANNELS", "CLASS_NAMES", "DEFAULT_CUTOUT_URL", "SCALE_ARCSEC", "SIZE",
           "TTYPE_MISSING", "PrepareConfig", "default_cache_dir", "default_output_path", "failures_path",
           "fetch_catalogue", "manifest_path", "prepare", "ttype_to_class"]
