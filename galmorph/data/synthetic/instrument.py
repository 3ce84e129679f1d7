"""The simulated camera: pixel scale, PSF shape, sky and read noise, and the render frame.

Display units: 1.0 is a surface brightness that the asinh stretch (`render._Q`) maps to the
linear/log knee. Noise levels are given per 1.188 arcsec pixel and rescaled to other sizes.
"""

from __future__ import annotations

import math

import numpy as np

_SKY_SIGMA = np.array([0.028, 0.024, 0.022])  # sky noise per 1.188" pixel, (i, r, g), display units
_SKY_LEVEL = 2.0  # sky per pixel in display units: sets the source/sky Poisson variance ratio
_READ_FRAC = 0.3  # read noise relative to sky noise
_PEDESTAL = np.array([1.0, 1.0, 0.85])  # sky-subtraction offset in sky sigmas (Galaxy10 corners ~ (8, 7, 5))
_REF_SCALE = 1.188  # arcsec/px at 69 px
_PSF_WING_FRAC, _PSF_WING_SCALE = 0.1, 2.0
_PSF_BAND_WIDTH = np.array([1.0, 1.03, 1.08])  # seeing is worse in bluer bands
_STAMP_HALF, _STAMP_OVERSAMPLE = 4, 5  # core stamp: 9x9 native pixels, 5x5 subpixels each


def pixel_scale(size: int) -> float:
    """Arcsec per pixel for `size`-pixel cutouts: a power law through 69 -> 1.188 and 110 -> 0.7."""
    slope = math.log(0.7 / 1.188) / math.log(110 / 69)
    return 1.188 * (size / 69) ** slope


class _Geometry:
    """Sizes and grids for one cutout size: the output S x S and a padded P x P render frame.

    The pad holds the widest PSF wing (4 sigma of the g band at the worst seeing), so light
    from just outside the cutout is blurred into it as in a real image.
    """

    def __init__(self, size):
        self.size = size
        self.scale = pixel_scale(size)
        worst_wing = _PSF_WING_SCALE * 1.9 * _PSF_BAND_WIDTH[-1] / 2.3548 / self.scale
        self.pad = max(4, math.ceil(4 * worst_wing))
        self.frame = size + 2 * self.pad
        self.pix = np.arange(self.frame, dtype=np.float32)
        self.edges = np.arange(size + 1, dtype=np.float64) - 0.5  # output pixel edges
        self.centre = self.pad + (size - 1) / 2.0  # galaxy centre before offsets, frame pixels
        self.noise_scale = _REF_SCALE / self.scale  # per-pixel noise grows as pixels shrink
        sub = (np.arange(_STAMP_OVERSAMPLE) + 0.5) / _STAMP_OVERSAMPLE - 0.5
        stamp = np.arange(-_STAMP_HALF, _STAMP_HALF + 1)
        self.stamp_offsets = stamp
        self.stamp_sub = (stamp[:, None] + sub[None, :]).ravel().astype(np.float32)
