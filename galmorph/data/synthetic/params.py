"""Per-class physical parameters of the simulated galaxies, drawn from each galaxy's stream.

`_params` turns a chunk's labels and draws into a dict of float64 arrays, (B,) per galaxy or
(B, K[, 3]) per compact source: lengths in output pixels, positions in padded-frame pixels,
surface brightness in display units (see `instrument`), colours as (i, r, g) multipliers
relative to i. The helpers consume one `_Draws` in a fixed order: reordering, adding or
removing a draw changes the images, so it needs a GENERATOR_VERSION bump.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from galmorph.data.synthetic.instrument import _REF_SCALE, _SKY_SIGMA
from galmorph.data.synthetic.streams import _Draws

CLASS_NAMES: tuple[str, ...] = ("E", "S0", "Sp", "Irr")  # label i is CLASS_NAMES[i]
_E, _S0, _SP, _IRR = range(4)

_N_GAL_SRC, _N_STARS, _N_BG = 12, 3, 4  # Gaussian-source slots per image (+ 3 for a companion)


class _Sources(NamedTuple):
    """Round Gaussian sources: x, y (frame pixels), sigma (output pixels; 0 = point), flux (B, k),
    colour (B, k, 3)."""

    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    flux: np.ndarray
    col: np.ndarray


def _params(labels, u, z, geo):
    """All per-galaxy parameters for a chunk, vectorised over galaxies; lengths in output pixels.

    labels uint8 (B,); u (B, _N_U) uniforms and z (B, _N_Z) normals from `streams._galaxy_draws`.
    """
    d = _Draws(u, z)
    kinds = tuple(labels == c for c in range(4))
    p = {"label": labels}
    _place(d, p, geo)
    # Hubble stage within the class: S0- -> S0+, Sa -> Sd, Magellanic Sm/Im -> chaotic irregular.
    # Early spirals (big red bulge, tight weak arms) shade into S0s and late ones into irregulars,
    # which is what makes the classes overlap as in real samples.
    stage = d.uniform()
    z_stage = d.normal(4)
    _bulge_and_disk(d, p, kinds, stage, z_stage, geo.scale)
    _arms_and_lopsidedness(d, p, kinds, stage, z_stage)
    tilt = _colours(d, p, kinds, stage)

    area = (_REF_SCALE / geo.scale) ** 2  # fluxes of compact sources are in units of 1.188" pixels
    regions = _star_forming_regions(d, p, kinds, stage, tilt, geo.scale)
    stars = _stars(d, p, geo, area)
    background = _background(d, geo, area)
    companion = _companion(d, p, geo, area)
    _collect_sources(p, (regions, stars, background, companion), geo.pad)

    _observing_conditions(d, p, geo)
    return p


def _place(d, p, geo):
    """Centre x0, y0 (frame pixels) within 1.1 arcsec of the cutout centre; position angle pa (rad)."""
    off_r = 1.1 * np.sqrt(d.uniform()) / geo.scale
    off_t = d.uniform(0, 2 * np.pi)
    p["x0"] = geo.centre + off_r * np.cos(off_t)
    p["y0"] = geo.centre + off_r * np.sin(off_t)
    p["pa"] = d.uniform(0, np.pi)


def _bulge_and_disk(d, p, kinds, stage, z_stage, s):
    """Sersic bulge (n, q_b, re, ie) and exponential disk (h, q_d, i0); s is the pixel scale (arcsec)."""
    is_e, is_s0, is_sp, is_irr = kinds
    # inclination of disks: cos i uniform, Hubble's formula with intrinsic thickness q0
    cosi = d.uniform(0.08, 1.0)
    q0 = d.uniform(0.12, 0.22)
    q_disk = np.sqrt(cosi**2 * (1 - q0**2) + q0**2)

    # bulge / spheroid (E, S0, Sp)
    n_e, n_s0 = d.uniform(3.0, 5.5), d.uniform(2.0, 4.0)
    n_sp = np.clip(2.6 - 1.5 * stage + 0.3 * z_stage[:, 0], 0.8, 3.5)
    p["n"] = np.select([is_e, is_s0, is_sp], [n_e, n_s0, n_sp], 1.0)
    q_e = d.uniform(0.6, 1.0)
    q_bul = np.maximum(q_disk, d.uniform(0.65, 1.0))
    p["q_b"] = np.where(is_e, q_e, q_bul)

    # disk (S0, Sp; the diffuse component of Irr)
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

    # bulge size and brightness: E free, S0/Sp set by bulge-to-total relative to the disk
    bt_sp = np.clip(np.exp(np.log(0.4) + (np.log(0.03) - np.log(0.4)) * stage + 0.25 * z_stage[:, 1]), 0.02, 0.5)
    bt = np.select([is_s0, is_sp], [0.7 - 0.4 * (stage * 0.8 + 0.2 * d.uniform()), bt_sp], 0.0)
    re_e = d.loguniform(3.0, 10.0) / s
    re_b_frac = np.where(is_s0, d.uniform(0.15, 0.35), d.uniform(0.1, 0.22))
    p["re"] = np.where(is_e, re_e, np.maximum(re_b_frac * 1.678 * p["h"], 0.35 / s))
    ie_e = d.loguniform(1.0, 5.0)
    unit = _sersic_flux_per_ie(p["re"], p["n"], p["q_b"])
    f_bulge = np.where(is_e, ie_e * unit, bt / np.maximum(1 - bt, 1e-3) * f_disk)
    p["ie"] = np.where(is_irr, 0.0, f_bulge / unit)


def _arms_and_lopsidedness(d, p, kinds, stage, z_stage):
    """Logarithmic spiral arms (m, pitch, phi0, f_arm, ...; used by Sp only) and the m = 1
    lopsidedness of irregulars (lop_a, lop_t)."""
    is_sp, is_irr = kinds[_SP], kinds[_IRR]
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

    p["lop_a"] = np.where(is_irr, 0.15 + 0.55 * stage + 0.1 * d.uniform(), 0.0)
    p["lop_t"] = d.uniform(0, 2 * np.pi)


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


def _colours(d, p, kinds, stage):
    """Bulge, disk and arm colours c_bulge, c_disk, c_arm (B, 3); returns the per-galaxy colour
    tilt (B, 3) (dust / metallicity), which the compact sources share."""
    is_s0, is_sp = kinds[_S0], kinds[_SP]
    tilt = np.exp(0.07 * d.normal())[:, None] ** np.array([0.0, 0.5, 1.0])
    late = stage[:, None]
    col_bulge = np.where(is_sp[:, None], _colour(d, (1, 0.87, 0.69)), _colour(d, (1, 0.86, 0.66)))
    sp_disk = (1 - late) * np.array([1, 0.885, 0.72]) + late * np.array([1, 0.96, 0.93])
    col_disk = np.select([is_s0[:, None], is_sp[:, None]],
                         [_colour(d, (1, 0.88, 0.71)), _colour(d, sp_disk)], _colour(d, (1, 0.98, 1.05)))
    col_arm = _colour(d, (1 - late) * np.array([1, 0.93, 0.82]) + late * np.array([1, 1.02, 1.18]))
    p["c_bulge"], p["c_disk"], p["c_arm"] = col_bulge * tilt, col_disk * tilt, col_arm * tilt
    return tilt


def _sersic_b(n):
    """b_n of a Sersic profile of index n (Ciotti & Bertin 1999 expansion), so Re encloses half the light."""
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2)


def _sersic_flux_per_ie(re, n, q):
    """Total flux of a Sersic profile with unit intensity at Re."""
    b = _sersic_b(n)
    lg = np.array([math.lgamma(2 * v) for v in np.ravel(n)]).reshape(np.shape(n))
    return 2 * np.pi * n * q * re**2 * np.exp(b + lg - 2 * n * np.log(b))


def _star_forming_regions(d, p, kinds, stage, tilt, s) -> _Sources:
    """_N_GAL_SRC slots per galaxy: knots along the arms of Sp, clumps of Irr, zero flux otherwise."""
    is_sp, is_irr = kinds[_SP], kinds[_IRR]
    kx_d, ky_d, knot_flux, knot_sigma, knot_col = _knots(d, p, stage, s)
    cx_d, cy_d, clump_flux, clump_sigma, clump_col = _clumps(d, p, stage, s)
    sel = is_irr[:, None]
    gx_d = np.where(sel, cx_d, kx_d)
    gy_d = np.where(sel, cy_d, ky_d)
    cos_pa, sin_pa = np.cos(p["pa"])[:, None], np.sin(p["pa"])[:, None]
    return _Sources(
        x=p["x0"][:, None] + gx_d * cos_pa - gy_d * sin_pa,
        y=p["y0"][:, None] + gx_d * sin_pa + gy_d * cos_pa,
        sigma=np.where(sel, clump_sigma, knot_sigma),
        flux=np.where(sel, clump_flux, np.where(is_sp[:, None], knot_flux, 0.0)),
        col=np.where(sel[..., None], clump_col, knot_col[:, None, :]) * tilt[:, None, :],
    )


def _knots(d, p, stage, s):
    """Star-forming knots on the arm ridges, in the disk frame (x along the major axis):
    x, y, flux, sigma (B, K) and one colour (B, 3) per galaxy."""
    K = _N_GAL_SRC
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
    return kx_d, ky_d, knot_flux, knot_sigma, knot_col


def _clumps(d, p, stage, s):
    """Irregulars' clumps, an asymmetric cloud shifted to the lopsided side, in the disk frame:
    x, y, flux, sigma (B, K) and colours (B, K, 3)."""
    K = _N_GAL_SRC
    B = stage.shape[0]
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
    return cx_d, cy_d, clump_flux, clump_sigma, clump_col


def _stars(d, p, geo, area) -> _Sources:
    """0-3 foreground stars: point sources, anywhere but on the galaxy, a range of stellar colours."""
    S = geo.size
    B = p["x0"].shape[0]
    n_star = (d.uniform() < 0.45).astype(int) + (d.uniform() < 0.15) + (d.uniform() < 0.05)
    st_r = S * d.uniform(0.14, 0.5, _N_STARS)
    st_t = d.uniform(0, 2 * np.pi, _N_STARS)
    st_flux = area * d.loguniform(0.4, 120.0, _N_STARS) * (np.arange(_N_STARS)[None, :] < n_star[:, None])
    st_temp = d.uniform(0, 1, _N_STARS)[..., None]
    st_col = (1 - st_temp) * np.array([1.0, 0.72, 0.45]) + st_temp * np.array([1.0, 1.02, 1.15])
    return _Sources(x=p["x0"][:, None] + st_r * np.cos(st_t), y=p["y0"][:, None] + st_r * np.sin(st_t),
                    sigma=np.zeros((B, _N_STARS)), flux=st_flux, col=st_col)


def _background(d, geo, area) -> _Sources:
    """0-4 faint, red-ish background galaxies anywhere in the cutout."""
    S = geo.size
    n_bg = sum((d.uniform() < t).astype(int) for t in (0.6, 0.35, 0.15, 0.05))
    B = n_bg.shape[0]
    bg_x = geo.pad + S * d.uniform(0.02, 0.98, _N_BG)
    bg_y = geo.pad + S * d.uniform(0.02, 0.98, _N_BG)
    bg_sigma = d.uniform(0.6, 1.8, _N_BG) / geo.scale
    bg_flux = area * d.loguniform(0.4, 6.0, _N_BG) * (np.arange(_N_BG)[None, :] < n_bg[:, None])
    bg_col = np.stack([np.ones((B, _N_BG)), 0.86 * np.exp(0.06 * d.normal(_N_BG)),
                       0.68 * np.exp(0.15 * d.normal(_N_BG))], -1)
    return _Sources(x=bg_x, y=bg_y, sigma=bg_sigma, flux=bg_flux, col=bg_col)


def _companion(d, p, geo, area) -> _Sources:
    """A small companion galaxy in 20 % of images: three Gaussians along a line (elongated)."""
    S = geo.size
    has_comp = d.uniform() < 0.2
    cr, ct = S * d.uniform(0.2, 0.42), d.uniform(0, 2 * np.pi)
    cxc, cyc = p["x0"] + cr * np.cos(ct), p["y0"] + cr * np.sin(ct)
    c_sig = d.uniform(0.8, 1.8) / geo.scale
    c_len = c_sig * d.uniform(0.0, 1.6)
    c_dir = d.uniform(0, np.pi)
    c_flux = area * d.loguniform(2.0, 30.0) * has_comp
    c_col = _colour(d, (1, 0.9, 0.8), 0.12)
    t = np.array([-1.0, 0.0, 1.0])
    return _Sources(x=cxc[:, None] + t * (c_len * np.cos(c_dir))[:, None],
                    y=cyc[:, None] + t * (c_len * np.sin(c_dir))[:, None],
                    sigma=c_sig[:, None] * np.array([0.8, 1.0, 0.8]),
                    flux=c_flux[:, None] * np.array([0.25, 0.5, 0.25]),
                    col=np.repeat(c_col[:, None, :], 3, 1))


def _collect_sources(p, groups, pad):
    """Concatenates source groups into src_x, src_y (output pixels), src_sigma (B, K) and
    src_flux (B, K, 3), the per-band flux of each source."""
    p["src_x"] = np.concatenate([g.x for g in groups], 1) - pad
    p["src_y"] = np.concatenate([g.y for g in groups], 1) - pad
    p["src_sigma"] = np.concatenate([g.sigma for g in groups], 1)
    flux = np.concatenate([g.flux for g in groups], 1)
    col = np.concatenate([g.col for g in groups], 1)
    p["src_flux"] = flux[..., None] * col


def _observing_conditions(d, p, geo):
    """Seeing psf_fwhm (B,) in output pixels (i band) and sky noise sky_sigma (B, 3) per output pixel."""
    p["psf_fwhm"] = np.clip(1.4 * np.exp(0.12 * d.normal()), 1.0, 1.9) / geo.scale
    p["sky_sigma"] = _SKY_SIGMA[None, :] * np.exp(0.12 * d.normal())[:, None] * geo.noise_scale
