"""From parameters to pixels: smooth light, PSF, compact sources, noise and the asinh stretch.

Images are float32 (B, 3, H, W) in display units, bands (i, r, g), until `_asinh_uint8`
turns them into uint8 (B, S, S, 3). Smooth light is rendered on the padded frame of
`instrument._Geometry` and cropped to S x S by the PSF convolution.
"""

from __future__ import annotations

import numpy as np

from galmorph.data.synthetic.instrument import (
    _PEDESTAL,
    _PSF_BAND_WIDTH,
    _PSF_WING_FRAC,
    _PSF_WING_SCALE,
    _READ_FRAC,
    _SKY_LEVEL,
    _SKY_SIGMA,
    _STAMP_HALF,
    _STAMP_OVERSAMPLE,
)
from galmorph.data.synthetic.params import _E, _IRR, _SP, _params, _sersic_b
from galmorph.data.synthetic.streams import _galaxy_draws

_Q = 8.0  # Lupton Q: the softening of the asinh stretch


def _render_chunk(index, labels, seed, noise, geo):
    """uint8 (b, S, S, 3) images for galaxies `index` (int, (b,)) with `labels` (uint8, (b,))."""
    u, z, eps = _galaxy_draws(index, seed, noise, geo.size)
    p = _params(labels, u, z, geo)
    light = _smooth_frame(p, labels, geo)
    sig, weights = _psf_terms(p)
    img = _convolve_psf(light, sig, weights, geo)
    _add_compact_sources(img, p, sig, weights, geo)
    _add_sky(img, p, noise, eps, geo)
    return _asinh_uint8(img)


def _smooth_frame(p, labels, geo):
    """Smooth light float32 (B, 3, P, P) on the padded frame, sampled at pixel centres and
    pixel-integrated on an oversampled stamp around each centre, where Sersic cusps would alias."""
    B, P = len(labels), geo.frame
    light = np.zeros((B, 3, P, P), dtype=np.float32)
    grid = geo.pix
    for c in range(4):  # one class at a time: `_smooth_light` renders one class's components
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            continue
        pc = {k: v[idx] for k, v in p.items()}
        dx = grid[None, None, :] - pc["x0"].astype(np.float32)[:, None, None]
        dy = grid[None, :, None] - pc["y0"].astype(np.float32)[:, None, None]
        light[idx] = _smooth_light(dx, dy, pc)
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
    return light


def _smooth_light(dx, dy, p):
    """Band light (b, 3, H, W) of the bulge, disk and arms at offsets dx, dy from the centre.

    dx, dy broadcast to (b, H, W); p holds (b,) parameter arrays of one class.
    """
    label = int(p["label"][0])
    cos_pa = np.cos(p["pa"]).astype(np.float32)[:, None, None]
    sin_pa = np.sin(p["pa"]).astype(np.float32)[:, None, None]
    xr = dx * cos_pa + dy * sin_pa  # along the major axis
    yr = dy * cos_pa - dx * sin_pa
    f32 = lambda a: np.asarray(a, dtype=np.float32)[:, None, None]
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
    """(b, 3) colours as float32 (b, 3, 1, 1), to scale (b, 1, H, W) light into bands."""
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


def _convolve_psf(light, sig, weights, geo):
    """float32 (B, 3, S, S): frame light (B, 3, P, P) convolved with the PSF and cropped.

    The separable pixel-integrated Gaussians act as (S, P) Toeplitz matrices, one per term.
    """
    B, S, P = light.shape[0], geo.size, geo.frame
    lag = (np.arange(S)[:, None] + geo.pad) - np.arange(P)[None, :]  # (S, P) output row - frame row
    lags = np.arange(-(P - 1), P, dtype=np.float64)
    img = np.zeros((B, 3, S, S), dtype=np.float32)
    for t in range(2):
        kern = _pixel_gauss(np.zeros(sig.shape[:2]), sig[..., t], np.append(lags - 0.5, lags[-1] + 0.5))
        conv = kern[..., lag + P - 1].astype(np.float32)  # (B, 3, S, P)
        img += np.float32(weights[t]) * (conv @ light @ conv.transpose(0, 1, 3, 2))
    return img


def _add_compact_sources(img, p, sig, weights, geo):
    """Adds the Gaussian sources to img (B, 3, S, S) in place: exact pixel integrals of each
    source convolved with each PSF term."""
    for t in range(2):
        tot = np.sqrt(p["src_sigma"][:, None, :] ** 2 + sig[..., t][..., None] ** 2)  # (B, 3, K)
        gx = _pixel_gauss(np.broadcast_to(p["src_x"][:, None, :], tot.shape), tot, geo.edges)  # (B, 3, K, S)
        gy = _pixel_gauss(np.broadcast_to(p["src_y"][:, None, :], tot.shape), tot, geo.edges)
        fy = gy * (weights[t] * p["src_flux"].transpose(0, 2, 1))[..., None]
        img += (fy.transpose(0, 1, 3, 2) @ gx).astype(np.float32)


def _add_sky(img, p, noise, eps, geo):
    """Adds noise and the sky pedestal to img (B, 3, S, S) in place.

    Poisson noise on source + sky in its large-count Gaussian limit plus read noise, scaled by
    `noise`, from the unit normals eps (B, 3, S, S).
    """
    sky = p["sky_sigma"].astype(np.float32)[:, :, None, None]
    if noise > 0:
        var = sky**2 * (1 + _READ_FRAC**2 + np.maximum(img, 0) / np.float32(_SKY_LEVEL))
        img += np.float32(noise) * np.sqrt(var) * eps
    img += np.float32(_PEDESTAL * _SKY_SIGMA * geo.noise_scale)[None, :, None, None]


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
