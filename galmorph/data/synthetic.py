"""Offline, seeded SDSS-like galaxy cutouts in Galaxy10 format (the `synthetic` dataset).

Four classes, physically modelled:

- E: one de Vaucouleurs-like Sersic profile (n 3-5.5, axis ratio 0.6-1), red.
- S0: Sersic bulge (n 2-4) + inclined exponential disk, bulge-to-total 0.3-0.7, no arms, red-ish.
- Sp: bulge + inclined exponential disk + logarithmic spiral arms (2-4 arms, pitch about
  10-35 deg), bluer disk and arms, star-forming knots on the arms. A Hubble stage Sa -> Sd
  sets bulge-to-total (0.4 -> 0.03), bulge n, pitch angle, arm strength, colour and knots,
  so early spirals shade into S0s and late ones into irregulars, as in real samples.
- Irr: 3-12 star-forming clumps scattered asymmetrically over a faint lopsided diffuse
  component, blue; from Magellanic (mildly lopsided, few clumps) to chaotic.

Most images also hold foreground stars, faint background galaxies or a small companion.
Inclinations are random (cos i uniform, intrinsic disk thickness 0.12-0.22); disks have no
dust lanes.

Each component has its own (i, r, g) colour with scatter. Smooth profiles are sampled at
pixel centres and integrated on a 5x-oversampled stamp over the galaxy core (so Sersic cusps
are not aliased); compact sources (clumps, knots, stars, background galaxies, companions)
are round Gaussians whose pixel integrals are evaluated exactly. The PSF is an SDSS-like
double Gaussian (core FWHM about 1.4 arcsec, 10 % wing at twice the width, slightly wider in
g), applied as separable pixel-integrated convolution matrices. Then sky noise (Poisson on
source + sky, in the large-count Gaussian limit, plus read noise; scaled by `noise`) and the
Lupton et al. (2004) asinh colour stretch to uint8, channel 0 = i, 1 = r, 2 = g as in SDSS
colour JPEGs.

Pixel scale follows the image size: 69 px -> 1.188 arcsec/px (Galaxy10: SDSS 0.396"/px
downscaled 3x), 110 px -> 0.7 arcsec/px (Nair & Abraham SkyServer cutouts); see
`pixel_scale`. Surface brightness is per unit area, so smaller pixels are noisier, as in
real cutouts.

Every galaxy's parameters and noise come from its own random stream (seed, index), so the
output does not depend on `chunk`, and image i is the same for any `n` with the same label.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from galmorph.core.errors import GalmorphError
from galmorph.core.paths import cache_dir as root
from galmorph.data import hdf5

CLASS_NAMES: tuple[str, ...] = ("E", "S0", "Sp", "Irr")
GENERATOR_VERSION = 2  # bump whenever the output for given settings changes (invalidates caches)

_E, _S0, _SP, _IRR = range(4)

# Display units: 1.0 is a surface brightness that the asinh stretch maps to the linear/log knee.
_Q = 8.0  # Lupton Q: the softening of the asinh stretch
_SKY_SIGMA = np.array([0.028, 0.024, 0.022])  # sky noise per 1.188" pixel, (i, r, g), display units
_SKY_LEVEL = 2.0  # sky per pixel in display units: sets the source/sky Poisson variance ratio
_READ_FRAC = 0.3  # read noise relative to sky noise
_PEDESTAL = np.array([1.0, 1.0, 0.85])  # sky-subtraction offset in sky sigmas (Galaxy10 corners ~ (8, 7, 5))
_REF_SCALE = 1.188  # arcsec/px at 69 px
_PSF_WING_FRAC, _PSF_WING_SCALE = 0.1, 2.0
_PSF_BAND_WIDTH = np.array([1.0, 1.03, 1.08])  # seeing is worse in bluer bands

_N_U, _N_Z = 160, 128  # uniforms and normals drawn per galaxy (fixed, so streams never shift)
_N_GAL_SRC, _N_STARS, _N_BG = 12, 3, 4  # Gaussian-source slots per image (+ 3 for a companion)
_STAMP_HALF, _STAMP_OVERSAMPLE = 4, 5  # core stamp: 9x9 native pixels, 5x5 subpixels each


def pixel_scale(size: int) -> float:
    """Arcsec per pixel for `size`-pixel cutouts: a power law through 69 -> 1.188 and 110 -> 0.7."""
    slope = math.log(0.7 / 1.188) / math.log(110 / 69)
    return 1.188 * (size / 69) ** slope


def generate(n: int, size: int = 69, seed: int = 0, noise: float = 1.0,
             class_fractions: Sequence[float] | None = None,
             chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """images uint8 (n, size, size, 3) [i, r, g channel order], labels uint8 (n,).

    Deterministic for (n, size, seed, noise, class_fractions); `chunk` (images rendered at
    once) only trades speed for memory. `noise` scales the noise (0 = noiseless, 1 = SDSS-like).
    """
    n, size = _check_int("n", n, 1), _check_int("size", size, 16)
    seed, chunk = _check_int("seed", seed, 0), _check_int("chunk", chunk, 1)
    noise = _check_noise(noise)
    fractions = _check_fractions(class_fractions)
    labels = _labels(n, seed, fractions)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    geo = _Geometry(size)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        images[start:stop] = _render_chunk(np.arange(start, stop), labels[start:stop], seed, noise, geo)
    return images, labels


def cached_path(n, size, seed, noise, cache_dir: Path) -> Path:
    """Path of the cache file for these settings (name: settings + short hash incl. GENERATOR_VERSION)."""
    settings = {"n": int(n), "size": int(size), "seed": int(seed), "noise": float(noise),
                "version": GENERATOR_VERSION}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"synthetic_n{int(n)}_s{int(size)}_seed{int(seed)}_v{GENERATOR_VERSION}_{digest}.h5"


def load_or_generate(n, size=69, seed=0, noise=1.0, cache_dir: Path | None = None) -> Path:
    """Path of a Galaxy10-format HDF5 file holding generate(n, size, seed, noise)'s output.

    Written atomically on first use (datasets `images`, `ans`, `id`; attribute `class_names`)
    under `cache_dir` (default $GALMORPH_CACHE or ~/.cache/galmorph, subfolder `synthetic`).
    """
    n, size, seed = _check_int("n", n, 1), _check_int("size", size, 16), _check_int("seed", seed, 0)
    noise = _check_noise(noise)
    if cache_dir is None:

        cache_dir = root() / "synthetic"
    path = cached_path(n, size, seed, noise, Path(cache_dir).expanduser())
    if _is_complete(path, n, size):
        return path

    images, labels = generate(n, size, seed=seed, noise=noise)
    try:
        hdf5.write(path, images, labels, class_names=CLASS_NAMES, id=np.arange(n, dtype=np.int64))
    except OSError as exc:
        raise GalmorphError(
            f"cannot write the synthetic dataset to {path} ({exc.strerror or exc}); "
            "set GALMORPH_CACHE to a writable folder"
        ) from None
    return path


# ---------------------------------------------------------------------------------------------
# validation


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GalmorphError(f"synthetic {name} must be an integer, got {value!r}; pass a whole number >= {minimum}")
    if value < minimum:
        hint = {"size": "; cutouts smaller than 16 px cannot hold a resolved galaxy"}.get(name, "")
        raise GalmorphError(f"synthetic {name} must be >= {minimum}, got {value}{hint}; pass a larger value")
    return int(value)


def _check_noise(noise):
    try:
        value = float(noise)
    except (TypeError, ValueError):
        raise GalmorphError(f"synthetic noise must be a number, got {noise!r}; use 1.0 for SDSS-like noise") from None
    if not math.isfinite(value) or value < 0:
        raise GalmorphError(
            f"synthetic noise must be finite and >= 0, got {noise!r}; use 0 (noiseless) to 1 (SDSS-like) or more"
        )
    return value


def _check_fractions(fractions):
    if fractions is None:
        return np.full(4, 0.25)
    try:
        arr = np.asarray(fractions, dtype=float)
    except (TypeError, ValueError):
        raise GalmorphError(
            f"class_fractions must be 4 numbers (E, S0, Sp, Irr), got {fractions!r}; e.g. (0.25, 0.25, 0.25, 0.25)"
        ) from None
    if arr.shape != (4,):
        raise GalmorphError(
            f"class_fractions needs 4 numbers, got {fractions!r}; give one per class {', '.join(CLASS_NAMES)}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise GalmorphError(
            f"class_fractions must be non-negative, got {fractions!r}; give one fraction >= 0 per class"
        )
    if abs(arr.sum() - 1.0) > 1e-6:
        raise GalmorphError(f"class_fractions sum to {arr.sum():.6g}, not 1; rescale them so they add up to 1")
    return arr


def _is_complete(path: Path, n: int, size: int) -> bool:
    """An existing cache file is reused only if it opens and has the expected shapes."""
    if not path.is_file():
        return False
    try:
        import h5py

        with h5py.File(path, "r") as fh:
            return fh["images"].shape == (n, size, size, 3) and fh["ans"].shape == (n,)
    except (OSError, KeyError):
        return False


# ---------------------------------------------------------------------------------------------
# labels and per-galaxy random streams


def _labels(n, seed, fractions):
    """Exactly n * fractions of each class (largest remainder), shuffled with the seed."""
    raw = fractions * n
    counts = np.floor(raw).astype(int)
    short = n - counts.sum()
    counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    labels = np.repeat(np.arange(4, dtype=np.uint8), counts)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return labels[rng.permutation(n)]


class _Draws:
    """Hands out columns of the per-galaxy uniform (u) and normal (z) draws in a fixed order."""

    def __init__(self, u, z):
        self.u, self.z, self.iu, self.iz = u, z, 0, 0

    def uniform(self, lo=0.0, hi=1.0, cols=None):
        k = 1 if cols is None else cols
        out = self.u[:, self.iu:self.iu + k]
        self.iu += k
        if self.iu > self.u.shape[1]:
            raise RuntimeError("synthetic: raise _N_U")
        out = lo + (hi - lo) * out
        return out[:, 0] if cols is None else out

    def loguniform(self, lo, hi, cols=None):
        return np.exp(self.uniform(math.log(lo), math.log(hi), cols))

    def normal(self, cols=None):
        k = 1 if cols is None else cols
        out = self.z[:, self.iz:self.iz + k]
        self.iz += k
        if self.iz > self.z.shape[1]:
            raise RuntimeError("synthetic: raise _N_Z")
        return out[:, 0] if cols is None else out


# ---------------------------------------------------------------------------------------------
# geometry and parameters


class _Geometry:
    """Sizes and grids for one cutout size: the output S x S and a padded P x P render frame."""

    def __init__(self, size):
        self.size = size
        self.scale = pixel_scale(size)
        worst_wing = _PSF_WING_SCALE * 1.9 * _PSF_BAND_WIDTH[-1] / 2.3548 / self.scale
        self.pad = max(4, int(math.ceil(4 * worst_wing)))
        self.frame = size + 2 * self.pad
        self.pix = np.arange(self.frame, dtype=np.float32)
        self.edges = np.arange(size + 1, dtype=np.float64) - 0.5  # output pixel edges
        self.centre = self.pad + (size - 1) / 2.0  # galaxy centre before offsets, frame pixels
        self.noise_scale = _REF_SCALE / self.scale  # per-pixel noise grows as pixels shrink
        sub = (np.arange(_STAMP_OVERSAMPLE) + 0.5) / _STAMP_OVERSAMPLE - 0.5
        stamp = np.arange(-_STAMP_HALF, _STAMP_HALF + 1)
        self.stamp_offsets = stamp
        self.stamp_sub = (stamp[:, None] + sub[None, :]).ravel().astype(np.float32)


def _colour(d, base, scatter=0.05):
    """(B, 3) band multipliers relative to i: base (i, r, g) with log-normal scatter in r and g."""
    z = d.normal(2)
    base = np.broadcast_to(np.asarray(base, dtype=float), (z.shape[0], 3))
    col = np.empty((z.shape[0], 3))
    col[:, 0] = 1.0
    # g-r and r-i are correlated (one underlying stellar population), with a little independent scatter
    col[:, 1] = base[:, 1] * np.exp(scatter * (0.9 * z[:, 0] + 0.3 * z[:, 1]))
    col[:, 2] = base[:, 2] * np.exp(scatter * 2.0 * (z[:, 0] + 0.2 * z[:, 1]))
    return col


def _sersic_b(n):
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2)


def _sersic_flux_per_ie(re, n, q):
    """Total flux of a Sersic profile with unit intensity at Re."""
    b = _sersic_b(n)
    lg = np.array([math.lgamma(2 * v) for v in np.ravel(n)]).reshape(np.shape(n))
    return 2 * np.pi * n * q * re**2 * np.exp(b + lg - 2 * n * np.log(b))


def _params(labels, u, z, geo):
    """All per-galaxy parameters for a chunk, vectorised over galaxies; lengths in output pixels."""
    B = labels.shape[0]
    d = _Draws(u, z)
    s = geo.scale
    is_e, is_s0, is_sp, is_irr = (labels == c for c in range(4))
    p = {"label": labels}

    # position, orientation
    area = (_REF_SCALE / s) ** 2  # fluxes of compact sources are in units of 1.188" pixels
    off_r = 1.1 * np.sqrt(d.uniform()) / s  # centring error up to 1.1 arcsec
    off_t = d.uniform(0, 2 * np.pi)
    p["x0"] = geo.centre + off_r * np.cos(off_t)
    p["y0"] = geo.centre + off_r * np.sin(off_t)
    p["pa"] = d.uniform(0, np.pi)

    # Hubble stage within the class: S0- -> S0+, Sa -> Sd, Magellanic Sm/Im -> chaotic irregular.
    # Early spirals (big red bulge, tight weak arms) shade into S0s and late ones into irregulars,
    # which is what makes the classes overlap as in real samples.
    stage = d.uniform()
    z_stage = d.normal(4)

    # inclination of disks: cos i uniform, Hubble's formula with intrinsic thickness q0
    cosi = d.uniform(0.08, 1.0)
    q0 = d.uniform(0.12, 0.22)
    q_disk = np.sqrt(cosi**2 * (1 - q0**2) + q0**2)

    # --- bulge / spheroid (E, S0, Sp) ---
    n_e, n_s0 = d.uniform(3.0, 5.5), d.uniform(2.0, 4.0)
    n_sp = np.clip(2.6 - 1.5 * stage + 0.3 * z_stage[:, 0], 0.8, 3.5)
    p["n"] = np.select([is_e, is_s0, is_sp], [n_e, n_s0, n_sp], 1.0)
    q_e = d.uniform(0.6, 1.0)
    q_bul = np.maximum(q_disk, d.uniform(0.65, 1.0))
    p["q_b"] = np.where(is_e, q_e, q_bul)

    # --- disk (S0, Sp; Irr diffuse) ---
    h_arcsec = np.select([is_s0, is_sp, is_irr],
                         [d.loguniform(2.6, 6.0), d.loguniform(3.0, 8.0), d.loguniform(2.8, 7.0)], 2.0)
    p["h"] = h_arcsec / s
    q_irr = d.uniform(0.45, 1.0)
    p["q_d"] = np.where(is_irr, q_irr, q_disk)
    # face-on central surface brightness; inclined optically thin disks brighten as q^-0.5 (some dust)
    i0 = np.select([is_s0, is_sp, is_irr],
                   [d.loguniform(2.5, 8.0), d.loguniform(1.8, 5.5), d.loguniform(0.9, 2.7)], 0.0)
    p["i0"] = i0 * np.where(is_irr, 1.0, p["q_d"] ** -0.5)
    f_disk = 2 * np.pi * p["h"] ** 2 * p["q_d"] * p["i0"]

    bt_sp = np.clip(np.exp(np.log(0.4) + (np.log(0.03) - np.log(0.4)) * stage + 0.25 * z_stage[:, 1]), 0.02, 0.5)
    bt = np.select([is_s0, is_sp], [0.7 - 0.4 * (stage * 0.8 + 0.2 * d.uniform()), bt_sp], 0.0)
    re_e = d.loguniform(3.0, 10.0) / s
    re_b_frac = np.where(is_s0, d.uniform(0.15, 0.35), d.uniform(0.1, 0.22))
    p["re"] = np.where(is_e, re_e, np.maximum(re_b_frac * 1.678 * p["h"], 0.35 / s))
    ie_e = d.loguniform(1.0, 5.0)
    unit = _sersic_flux_per_ie(p["re"], p["n"], p["q_b"])
    f_bulge = np.where(is_e, ie_e * unit, bt / np.maximum(1 - bt, 1e-3) * f_disk)
    p["ie"] = np.where(is_irr, 0.0, f_bulge / unit)

    # --- spiral arms ---
    p["m"] = np.floor(d.uniform(2, 5 - 1e-9)).astype(int)  # 2-4 arms
    m_weight = d.uniform()
    p["m"] = np.where(m_weight < 0.5, 2, p["m"])  # grand-design two-armed spirals are the most common
    p["pitch"] = np.deg2rad(np.clip(11 + 22 * stage + 4 * z_stage[:, 2], 9.0, 38.0))
    p["phi0"] = d.uniform(0, 2 * np.pi)
    # Arms carry at least a quarter of the disk light: weaker arms, lost in one noisy band,
    # made early spirals indistinguishable from S0s and capped g-band C2 near 82 %.
    p["f_arm"] = np.where(is_sp, np.clip(0.25 + 0.5 * stage + 0.1 * z_stage[:, 3], 0.2, 0.8), 0.0)
    p["arm_w"] = d.uniform(1.0, 3.5)  # arm sharpness: ((1 + cos)/2)^w
    p["arm_mean"] = np.exp(np.array([math.lgamma(w + 0.5) - math.lgamma(w + 1) for w in p["arm_w"]])) / math.sqrt(np.pi)
    p["r_in"] = np.maximum(2.0 * p["re"], 0.6 * p["h"])
    p["h_arm"] = p["h"] * d.uniform(0.9, 1.2)
    p["arm_asym"] = d.uniform(0.0, 0.6)  # lopsided arm brightness: (1 + a cos(theta - theta_a))
    p["arm_asym_t"] = d.uniform(0, 2 * np.pi)
    p["wind_dir"] = np.where(d.uniform() < 0.5, -1.0, 1.0)  # S or Z winding

    # --- irregular lopsidedness ---
    p["lop_a"] = np.where(is_irr, 0.15 + 0.55 * stage + 0.1 * d.uniform(), 0.0)
    p["lop_t"] = d.uniform(0, 2 * np.pi)

    # --- colours (i, r, g) per component, with a per-galaxy tilt (dust / metallicity) ---
    tilt = np.exp(0.07 * d.normal())[:, None] ** np.array([0.0, 0.5, 1.0])
    late = stage[:, None]
    col_bulge = np.where(is_sp[:, None], _colour(d, (1, 0.87, 0.69)), _colour(d, (1, 0.86, 0.66)))
    sp_disk = (1 - late) * np.array([1, 0.885, 0.72]) + late * np.array([1, 0.96, 0.93])
    col_disk = np.select([is_s0[:, None], is_sp[:, None]],
                         [_colour(d, (1, 0.88, 0.71)), _colour(d, sp_disk)], _colour(d, (1, 0.98, 1.05)))
    col_arm = _colour(d, (1 - late) * np.array([1, 0.93, 0.82]) + late * np.array([1, 1.02, 1.18]))
    p["c_bulge"], p["c_disk"], p["c_arm"] = col_bulge * tilt, col_disk * tilt, col_arm * tilt

    # --- compact sources: star-forming knots (Sp) or clumps (Irr), stars, background, companion ---
    K = _N_GAL_SRC
    src = {k: np.zeros((B, K)) for k in ("x", "y", "sigma", "flux")}
    src["col"] = np.zeros((B, K, 3))
    # Sp knots along the arm ridges
    n_knot = np.floor(d.uniform(0, 1 - 1e-9) * (4 + 9 * stage)).astype(int)
    f_knots = d.uniform(0.0, 0.35) * stage * np.minimum(n_knot / 6, 1.0)  # a few knots carry little light
    arm_flux = 2 * np.pi * p["h_arm"] ** 2 * p["q_d"] * p["i0"] * p["f_arm"]
    kr = p["h"][:, None] * d.uniform(0.7, 2.8, K)
    karm = np.floor(d.uniform(0, 1 - 1e-9, K) * p["m"][:, None])
    kth = (2 * np.pi * karm - p["phi0"][:, None]
           + p["wind_dir"][:, None] * p["m"][:, None] / np.tan(p["pitch"])[:, None] * np.log(kr / p["h"][:, None])) \
        / p["m"][:, None] + 0.12 * d.normal(K)
    kx_d, ky_d = kr * np.cos(kth), kr * np.sin(kth) * p["q_d"][:, None]
    kw = np.exp(0.6 * d.normal(K)) * (np.arange(K)[None, :] < n_knot[:, None])
    kw = kw / np.maximum(kw.sum(1, keepdims=True), 1e-12)
    knot_flux = kw * (f_knots * arm_flux)[:, None]
    knot_sigma = d.uniform(0.4, 1.1, K) / s
    knot_col = _colour(d, (1, 1.08, 1.45), 0.08)
    # Irr clumps: an asymmetric cloud, shifted to the lopsided side
    n_clump = np.floor(3 + d.uniform(0, 1 - 1e-9) * (4 + 6 * stage)).astype(int)
    f_clumps = 0.25 + 0.4 * stage + d.uniform(0.0, 0.1)
    shift = d.uniform(0.2, 1.0) * p["h"]
    spread = p["h"][:, None] * d.uniform(0.6, 1.5, 2)
    cx_d = shift[:, None] * np.cos(p["lop_t"])[:, None] + spread[:, :1] * d.normal(K)
    cy_d = (shift[:, None] * np.sin(p["lop_t"])[:, None] + spread[:, 1:] * d.normal(K)) * p["q_d"][:, None]
    cw = np.exp(0.7 * d.normal(K)) * (np.arange(K)[None, :] < n_clump[:, None])
    cw = cw / np.maximum(cw.sum(1, keepdims=True), 1e-12)
    diffuse_flux = 2 * np.pi * p["h"] ** 2 * p["q_d"] * p["i0"]
    clump_flux = cw * (diffuse_flux * f_clumps / (1 - f_clumps))[:, None]
    clump_sigma = d.loguniform(0.6, 2.4, K) / s
    clump_col = np.stack([np.ones((B, K)), 1.07 * np.exp(0.05 * d.normal(K)), 1.35 * np.exp(0.12 * d.normal(K))], -1)
    sel = is_irr[:, None]
    gx_d = np.where(sel, cx_d, kx_d)
    gy_d = np.where(sel, cy_d, ky_d)
    cos_pa, sin_pa = np.cos(p["pa"])[:, None], np.sin(p["pa"])[:, None]
    src["x"] = p["x0"][:, None] + gx_d * cos_pa - gy_d * sin_pa
    src["y"] = p["y0"][:, None] + gx_d * sin_pa + gy_d * cos_pa
    src["sigma"] = np.where(sel, clump_sigma, knot_sigma)
    src["flux"] = np.where(sel, clump_flux, np.where(is_sp[:, None], knot_flux, 0.0))
    src["col"] = np.where(sel[..., None], clump_col, knot_col[:, None, :]) * tilt[:, None, :]

    S = geo.size
    # stars: point sources, anywhere but on the galaxy, a range of stellar colours
    n_star = (d.uniform() < 0.45).astype(int) + (d.uniform() < 0.15) + (d.uniform() < 0.05)
    st_r = S * d.uniform(0.14, 0.5, _N_STARS)
    st_t = d.uniform(0, 2 * np.pi, _N_STARS)
    st_flux = area * d.loguniform(0.4, 120.0, _N_STARS) * (np.arange(_N_STARS)[None, :] < n_star[:, None])
    st_temp = d.uniform(0, 1, _N_STARS)[..., None]
    st_col = (1 - st_temp) * np.array([1.0, 0.72, 0.45]) + st_temp * np.array([1.0, 1.02, 1.15])
    # faint background galaxies
    n_bg = sum((d.uniform() < t).astype(int) for t in (0.6, 0.35, 0.15, 0.05))
    bg_x = geo.pad + S * d.uniform(0.02, 0.98, _N_BG)
    bg_y = geo.pad + S * d.uniform(0.02, 0.98, _N_BG)
    bg_sigma = d.uniform(0.6, 1.8, _N_BG) / s
    bg_flux = area * d.loguniform(0.4, 6.0, _N_BG) * (np.arange(_N_BG)[None, :] < n_bg[:, None])
    bg_col = np.stack([np.ones((B, _N_BG)), 0.86 * np.exp(0.06 * d.normal(_N_BG)),
                       0.68 * np.exp(0.15 * d.normal(_N_BG))], -1)
    # a companion galaxy: three Gaussians along a line (an elongated small galaxy)
    has_comp = d.uniform() < 0.2
    cr, ct = S * d.uniform(0.2, 0.42), d.uniform(0, 2 * np.pi)
    cxc, cyc = p["x0"] + cr * np.cos(ct), p["y0"] + cr * np.sin(ct)
    c_sig = d.uniform(0.8, 1.8) / s
    c_len = c_sig * d.uniform(0.0, 1.6)
    c_dir = d.uniform(0, np.pi)
    c_flux = area * d.loguniform(2.0, 30.0) * has_comp
    c_col = _colour(d, (1, 0.9, 0.8), 0.12)
    t = np.array([-1.0, 0.0, 1.0])
    comp_x = cxc[:, None] + t * (c_len * np.cos(c_dir))[:, None]
    comp_y = cyc[:, None] + t * (c_len * np.sin(c_dir))[:, None]
    comp_sigma = c_sig[:, None] * np.array([0.8, 1.0, 0.8])
    comp_flux = c_flux[:, None] * np.array([0.25, 0.5, 0.25])

    star_x = p["x0"][:, None] + st_r * np.cos(st_t)
    star_y = p["y0"][:, None] + st_r * np.sin(st_t)
    p["src_x"] = np.concatenate([src["x"], star_x, bg_x, comp_x], 1) - geo.pad
    p["src_y"] = np.concatenate([src["y"], star_y, bg_y, comp_y], 1) - geo.pad
    p["src_sigma"] = np.concatenate([src["sigma"], np.zeros((B, _N_STARS)), bg_sigma, comp_sigma], 1)
    flux = np.concatenate([src["flux"], st_flux, bg_flux, comp_flux], 1)
    col = np.concatenate([src["col"], st_col, bg_col, np.repeat(c_col[:, None, :], 3, 1)], 1)
    p["src_flux"] = flux[..., None] * col  # (B, K, 3)

    # --- observing conditions ---
    p["psf_fwhm"] = np.clip(1.4 * np.exp(0.12 * d.normal()), 1.0, 1.9) / s  # output pixels, i band
    p["sky_sigma"] = _SKY_SIGMA[None, :] * np.exp(0.12 * d.normal())[:, None] * geo.noise_scale
    return p


# ---------------------------------------------------------------------------------------------
# rendering


def _smooth_light(dx, dy, p):
    """Band light (b, 3, H, W) of the bulge, disk and arms at offsets dx, dy from the centre.

    dx, dy broadcast to (b, H, W); p holds (b,) parameter arrays of one class.
    """
    label = int(p["label"][0])
    cos_pa = np.cos(p["pa"]).astype(np.float32)[:, None, None]
    sin_pa = np.sin(p["pa"]).astype(np.float32)[:, None, None]
    xr = dx * cos_pa + dy * sin_pa  # along the major axis
    yr = dy * cos_pa - dx * sin_pa
    f32 = lambda a: np.asarray(a, dtype=np.float32)[:, None, None]  # noqa: E731
    out = None
    if label != _IRR:  # Sersic bulge / spheroid
        r2 = (xr * xr + (yr / f32(p["q_b"])) ** 2) / f32(p["re"] ** 2)
        b = f32(_sersic_b(p["n"]))
        bulge = f32(p["ie"]) * np.exp(b * (1 - np.exp(np.log(np.maximum(r2, 1e-12)) * f32(0.5 / p["n"]))))
        out = bulge[:, None] * _bands(p["c_bulge"])
    if label == _E:
        return out
    u, v = xr, yr / f32(p["q_d"])
    r2 = u * u + v * v
    r = np.sqrt(r2)
    disk = f32(p["i0"]) * np.exp(-r / f32(p["h"]))
    if label == _IRR:  # m = 1 lopsidedness: (1 + a cos(theta - theta1)), softened at the centre
        cos_t = (u * f32(np.cos(p["lop_t"])) + v * f32(np.sin(p["lop_t"]))) / (r + 0.5 * f32(p["h"]))
        disk = disk * (1 + f32(p["lop_a"]) * cos_t)
    if label == _SP:
        disk = disk * (1 - f32(p["f_arm"]))
    light = disk[:, None] * _bands(p["c_disk"])
    out = light if out is None else out + light
    if label == _SP:  # logarithmic spiral: psi = m theta - m ln(r/h) / tan(pitch) + phi0
        theta = np.arctan2(v, u)
        m = f32(p["m"])
        psi = m * theta - f32(p["wind_dir"] * p["m"] / np.tan(p["pitch"])) * np.log(np.maximum(r, 1e-3) / f32(p["h"])) \
            + f32(p["phi0"])
        pattern = np.exp(f32(p["arm_w"]) * np.log(np.maximum(0.5 + 0.5 * np.cos(psi), 1e-6))) / f32(p["arm_mean"])
        envelope = np.exp(-r / f32(p["h_arm"])) * (1 - np.exp(-r2 / f32(p["r_in"] ** 2)))
        cos_a = (u * f32(np.cos(p["arm_asym_t"])) + v * f32(np.sin(p["arm_asym_t"]))) / (r + 0.5 * f32(p["h"]))
        arms = f32(p["i0"] * p["f_arm"]) * envelope * pattern * (1 + f32(p["arm_asym"]) * cos_a)
        out = out + arms[:, None] * _bands(p["c_arm"])
    return out


def _bands(col):
    return np.asarray(col, dtype=np.float32)[:, :, None, None]


def _erf(x):
    """erf, Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), so that numpy alone suffices."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _pixel_gauss(centres, sigma, edges):
    """Pixel integrals of unit 1D Gaussians: (..., len(edges) - 1) for centres, sigma (...)."""
    z = (edges - centres[..., None]) / (np.sqrt(2.0) * sigma[..., None])
    return 0.5 * np.diff(_erf(z), axis=-1)


def _psf_terms(p):
    """Double-Gaussian PSF per image and band: sigmas (B, 3, 2) in output pixels, weights (2,)."""
    core = (p["psf_fwhm"][:, None] * _PSF_BAND_WIDTH[None, :] / 2.3548)
    sig = np.stack([core, core * _PSF_WING_SCALE], -1)
    return sig, np.array([1 - _PSF_WING_FRAC, _PSF_WING_FRAC])


def _render_chunk(index, labels, seed, noise, geo):
    """uint8 (b, S, S, 3) images for galaxies `index` with `labels`."""
    B, S, P = len(index), geo.size, geo.frame
    u = np.empty((B, _N_U))
    z = np.empty((B, _N_Z))
    eps = np.empty((B, 3, S, S), dtype=np.float32)
    for j, i in enumerate(index):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, int(i))))
        u[j] = rng.random(_N_U)
        z[j] = rng.standard_normal(_N_Z)
        if noise > 0:
            rng.standard_normal(out=eps[j], dtype=np.float32)
    p = _params(labels, u, z, geo)

    # smooth light, sampled at pixel centres of the padded frame ...
    light = np.zeros((B, 3, P, P), dtype=np.float32)
    grid = geo.pix
    for c in range(4):
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            continue
        pc = {k: v[idx] for k, v in p.items()}
        dx = grid[None, None, :] - pc["x0"].astype(np.float32)[:, None, None]
        dy = grid[None, :, None] - pc["y0"].astype(np.float32)[:, None, None]
        light[idx] = _smooth_light(dx, dy, pc)
        # ... and integrated over pixels on an oversampled stamp around the cusp
        cx = np.rint(pc["x0"]).astype(int)
        cy = np.rint(pc["y0"]).astype(int)
        sx = (cx[:, None] + geo.stamp_sub[None, :] - pc["x0"][:, None]).astype(np.float32)
        sy = (cy[:, None] + geo.stamp_sub[None, :] - pc["y0"][:, None]).astype(np.float32)
        fine = _smooth_light(sx[:, None, :], sy[:, :, None], pc)
        k, o = 2 * _STAMP_HALF + 1, _STAMP_OVERSAMPLE
        binned = fine.reshape(idx.size, 3, k, o, k, o).mean(axis=(3, 5))
        rows = (cy[:, None] + geo.stamp_offsets[None, :])[:, None, :, None]
        cols = (cx[:, None] + geo.stamp_offsets[None, :])[:, None, None, :]
        light[idx[:, None, None, None], np.arange(3)[None, :, None, None], rows, cols] = binned

    # PSF: separable pixel-integrated double Gaussian as Toeplitz matrices, cropped to the output
    sig, weights = _psf_terms(p)
    lag = (np.arange(S)[:, None] + geo.pad) - np.arange(P)[None, :]  # (S, P) output row - frame row
    lags = np.arange(-(P - 1), P, dtype=np.float64)
    img = np.zeros((B, 3, S, S), dtype=np.float32)
    for t in range(2):
        kern = _pixel_gauss(np.zeros(sig.shape[:2]), sig[..., t], np.append(lags - 0.5, lags[-1] + 0.5))
        conv = kern[..., lag + P - 1].astype(np.float32)  # (B, 3, S, P)
        img += np.float32(weights[t]) * (conv @ light @ conv.transpose(0, 1, 3, 2))

    # compact sources: exact pixel integrals of Gaussians convolved with each PSF term
    for t in range(2):
        tot = np.sqrt(p["src_sigma"][:, None, :] ** 2 + sig[..., t][..., None] ** 2)  # (B, 3, K)
        gx = _pixel_gauss(np.broadcast_to(p["src_x"][:, None, :], tot.shape), tot, geo.edges)  # (B, 3, K, S)
        gy = _pixel_gauss(np.broadcast_to(p["src_y"][:, None, :], tot.shape), tot, geo.edges)
        fy = gy * (weights[t] * p["src_flux"].transpose(0, 2, 1))[..., None]
        img += (fy.transpose(0, 1, 3, 2) @ gx).astype(np.float32)

    # noise: Poisson on source + sky (Gaussian limit) and read noise, scaled by the knob
    sky = p["sky_sigma"].astype(np.float32)[:, :, None, None]
    if noise > 0:
        var = sky**2 * (1 + _READ_FRAC**2 + np.maximum(img, 0) / np.float32(_SKY_LEVEL))
        img += np.float32(noise) * np.sqrt(var) * eps
    img += np.float32(_PEDESTAL * _SKY_SIGMA * geo.noise_scale)[None, :, None, None]
    return _asinh_uint8(img)


def _asinh_uint8(img):
    """Lupton et al. (2004) colour-preserving asinh stretch of (B, 3, S, S) -> uint8 (B, S, S, 3)."""
    intensity = img.mean(axis=1, keepdims=True)
    x = np.float32(_Q) * intensity
    small = np.abs(x) < 1e-4
    factor = np.where(small, np.float32(1.0), np.arcsinh(x) / np.where(small, np.float32(1.0), x))
    rgb = np.maximum(img * factor, 0)
    peak = rgb.max(axis=1, keepdims=True)
    rgb = rgb / np.maximum(peak, np.float32(1.0))  # saturate to white-ish while keeping the colour
    return np.rint(rgb * np.float32(255)).astype(np.uint8).transpose(0, 2, 3, 1)
