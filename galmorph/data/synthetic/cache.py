"""The HDF5 cache of generated datasets, in Galaxy10 format, keyed by settings and GENERATOR_VERSION."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from galmorph.core import paths
from galmorph.core.errors import GalmorphError
from galmorph.core.io import check_writable
from galmorph.data import hdf5, integrity
from galmorph.data.synthetic.checks import _check_int, _check_noise
from galmorph.data.synthetic.params import CLASS_NAMES
from galmorph.data.synthetic.simulate import GENERATOR_VERSION, generate

log = logging.getLogger(__name__)


def cached_path(n, size, seed, noise, cache_dir: Path) -> Path:
    """Path of the cache file for these settings (name: settings + short hash incl. GENERATOR_VERSION)."""
    settings = {"n": int(n), "size": int(size), "seed": int(seed), "noise": float(noise),
                "version": GENERATOR_VERSION}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"synthetic_n{int(n)}_s{int(size)}_seed{int(seed)}_v{GENERATOR_VERSION}_{digest}.h5"


def load_or_generate(n, size=69, seed=0, noise=1.0, cache_dir: Path | None = None) -> Path:
    """Path of a Galaxy10-format HDF5 file holding generate(n, size, seed, noise)'s output.

    Written atomically on first use (datasets `images`, `ans`, `id`; attribute `class_names`)
    under `cache_dir` (default $GALMORPH_CACHE or ~/.cache/galmorph, subfolder `synthetic`),
    with its SHA256 in a sidecar (galmorph.data.integrity). A cached file that no longer
    matches its checksum (corrupted, truncated, rewritten) or lacks one is generated again,
    never used; the check hashes the file once per file version.
    """
    n, size, seed = _check_int("n", n, 1), _check_int("size", size, 16), _check_int("seed", seed, 0)
    noise = _check_noise(noise)
    if cache_dir is None:
        cache_dir = paths.cache_dir() / "synthetic"
    path = cached_path(n, size, seed, noise, Path(cache_dir).expanduser())
    if path.is_file():
        problem = integrity.check(path) or _shape_problem(path, n, size)
        if problem is None:
            return path
        log.warning("synthetic cache %s is not usable (%s); generating it again", path, problem)

    check_writable(path, "synthetic dataset cache", "set GALMORPH_CACHE to a writable folder")  # before generating
    images, labels = generate(n, size, seed=seed, noise=noise)
    try:
        hdf5.write(path, images, labels, class_names=CLASS_NAMES, id=np.arange(n, dtype=np.int64), checksum=True)
    except OSError as exc:
        raise GalmorphError(
            f"cannot write the synthetic dataset to {path} ({exc.strerror or exc}); "
            "set GALMORPH_CACHE to a writable folder"
        ) from None
    return path


def _shape_problem(path: Path, n: int, size: int) -> str | None:
    """Why a cache file whose checksum matches still is not this dataset (a file copied under
    another settings' name), or None."""
    try:
        import h5py  # deferred like in galmorph.data.hdf5: generating in memory needs no HDF5

        with h5py.File(path, "r") as fh:
            if fh["images"].shape == (n, size, size, 3) and fh["ans"].shape == (n,):
                return None
            return f"images {fh['images'].shape}, expected {(n, size, size, 3)}"
    except (OSError, KeyError) as exc:
        return f"unreadable ({exc})"
