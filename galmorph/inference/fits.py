"""FITS images as 8-bit colour composites, by the asinh stretch of Lupton et al. 2004
(PASP 116, 133), so that a calibrated image looks like the JPEG composites galmorph's
models were trained on.

For bands b with pixel values x_b (any linear flux unit) and parameters m (`stretch_min`,
the black level, in the data's units), alpha (`stretch_alpha`, the linear scale, per data
unit) and Q (`stretch_q`, the asinh softening):

    X_b = x_b - m                     (per band)
    I   = mean over b of X_b          (the intensity; X_b itself for one band)
    F   = asinh(alpha * Q * I) / Q
    C_b = X_b * F / I                 (0 where I <= 0)

then, per pixel, all C_b are divided by max_b C_b where that exceeds 1 (saturated pixels
keep their colour, Lupton et al. section 3.2), clipped to [0, 1] and scaled to 0..255.
For one band this is C = clip(asinh(alpha * Q * (x - m)) / Q, 0, 1): linear, slope alpha,
for faint pixels, logarithmic for bright ones, and white (255) where
alpha * Q * (x - m) >= sinh(Q).

Layout: a 2-D image is one band. It goes into every channel of the composite, so the model
reads it from whichever channel holds its band (an SDSS g-band model reads channel 2, the
blue one, where SDSS composites put g); a model that reads several bands (gri, grz) needs a
cube. A 3-D cube holds 3 planes (NAXIS3 = 3), bluest band first (g, r, i for SDSS; g, r, z
for DECaLS), placed as the survey's composites place them: red = plane 2, green = plane 1,
blue = plane 0 (galmorph.data.bands). The first HDU with data is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galmorph.core.errors import GalmorphError


@dataclass(frozen=True)
class Stretch:
    """The asinh stretch's parameters (module docstring): Q, alpha and the black level m."""

    q: float = 8.0
    alpha: float = 1.0
    minimum: float = 0.0

    def check(self) -> "Stretch":
        if not (np.isfinite(self.q) and self.q > 0):
            raise GalmorphError(f"stretch_q must be a positive number, got {self.q}")
        if not (np.isfinite(self.alpha) and self.alpha > 0):
            raise GalmorphError(f"stretch_alpha must be a positive number, got {self.alpha}")
        if not np.isfinite(self.minimum):
            raise GalmorphError(f"stretch_min must be a finite number, got {self.minimum}")
        return self


def lupton(planes: np.ndarray, stretch: Stretch) -> np.ndarray:
    """float planes (B, H, W) -> float (B, H, W) in [0, 1] by the module's formula."""
    x = planes.astype(np.float64) - stretch.minimum
    intensity = x.mean(axis=0)
    f = np.arcsinh(stretch.alpha * stretch.q * intensity) / stretch.q
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(intensity > 0, x * (f / intensity), 0.0)
    peak = c.max(axis=0)
    c = np.where(peak > 1, c / np.where(peak > 1, peak, 1), c)
    return np.clip(c, 0.0, 1.0)


def to_uint8(planes: np.ndarray, stretch: Stretch) -> np.ndarray:
    """float planes (B, H, W), bluest first -> uint8 (H, W, 3) composite (module docstring)."""
    c = np.rint(lupton(planes, stretch) * 255).astype(np.uint8)
    if len(c) == 1:
        return np.repeat(c[0][:, :, None], 3, axis=2)
    return np.ascontiguousarray(c[::-1].transpose(1, 2, 0))  # bluest plane -> blue channel 2


def read_planes(path: Path) -> np.ndarray:
    """The first HDU with data of a FITS file as float (B, H, W), B = 1 or 3. ValueError with a
    one-line reason for anything else (no data, other dimensions, NaN or infinite pixels)."""
    import warnings

    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's verification warnings: the error line says enough
            with fits.open(path, memmap=False) as hdul:
                data = next((h.data for h in hdul if getattr(h, "data", None) is not None and h.data.size), None)
                data = None if data is None else np.array(data, dtype=np.float64)
    except Exception as exc:  # astropy raises OSError, TypeError, ... for broken files
        raise ValueError(" ".join(f"not a readable FITS file ({type(exc).__name__}: {exc})".split())[:300]) from None
    if data is None:
        raise ValueError("FITS file without image data")
    if data.ndim == 2:
        data = data[None]
    elif not (data.ndim == 3 and data.shape[0] == 3):
        raise ValueError(f"FITS data has {data.ndim} axes, shape {data.shape}; expected a 2-D image or a 3-plane cube (3, H, W)")
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise ValueError(f"FITS image has {bad} NaN or infinite pixels; fill or mask them before predicting")
    return data


def reader(stretch: Stretch, n_bands: int):
    """read(path, geometry) -> uint8 (side, side, 3) for a model that reads `n_bands` bands."""
    from PIL import Image

    from galmorph.inference.inputs import to_side

    def read(path: Path, geometry) -> np.ndarray:
        planes = read_planes(path)
        if len(planes) == 1 and n_bands > 1:
            raise ValueError(f"single-band FITS image, but the model reads {n_bands} bands; give a 3-plane cube")
        return to_side(Image.fromarray(to_uint8(planes, stretch), "RGB"), geometry)

    return read
