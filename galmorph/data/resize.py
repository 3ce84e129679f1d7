"""Downsampling images on load by area averaging (`--image-size`).

Each output pixel is the mean of the input area it covers, partial pixels weighted by
their overlap, so 256 -> 64 averages 4x4 blocks and 256 -> 100 (a non-integer factor)
averages 2.56 x 2.56 areas. That is what a detector with larger pixels would record; a
point-sampling resize would alias the noise and the fine structure instead.
"""

from __future__ import annotations

import numpy as np

from galmorph.core.errors import GalmorphError

CHUNK = 64  # images per step: bounds the float32 scratch memory (64 x 256 x 256 x 3 x 4 B = 50 MB)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix whose row i averages the input pixels under output pixel i."""
    edges = np.arange(n_out + 1) * (n_in / n_out)  # output pixel i covers [edges[i], edges[i+1]) of the input
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def check_size(native: int, size: int, what: str) -> None:
    """A one-line error unless `size` is 0 (native) or between 1 and `native`."""
    if size < 0:
        raise GalmorphError(f"image_size must be 0 (native) or more, got {size}")
    if size > native:
        raise GalmorphError(f"image_size {size} is larger than the {native}x{native} images of {what}; "
                            "images are only downsampled: give at most the native size, or 0")


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, H, C) images area-averaged to (N, size, size, C), rounded to uint8."""
    n, h = images.shape[0], images.shape[1]
    if size == h:
        return images
    out = np.empty((n, size, size) + images.shape[3:], np.uint8)
    w = area_weights(h, size)
    for start in range(0, n, CHUNK):
        x = images[start : start + CHUNK].astype(np.float32)
        x = np.einsum("ih,nhwc->niwc", w, x, optimize=True)
        x = np.einsum("jw,niwc->nijc", w, x, optimize=True)
        out[start : start + CHUNK] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out
