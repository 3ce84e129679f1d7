"""Argument checks shared by `generate` and `load_or_generate`: one-line GalmorphErrors that say what to do."""

from __future__ import annotations

import math

import numpy as np

from galmorph.core.errors import GalmorphError
from galmorph.data.synthetic.params import CLASS_NAMES


def _check_int(name, value, minimum):
    """int(value) if it is an integer (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GalmorphError(f"synthetic {name} must be an integer, got {value!r}; pass a whole number >= {minimum}")
    if value < minimum:
        hint = {"size": "; cutouts smaller than 16 px cannot hold a resolved galaxy"}.get(name, "")
        raise GalmorphError(f"synthetic {name} must be >= {minimum}, got {value}{hint}; pass a larger value")
    return int(value)


def _check_noise(noise):
    """float(noise) if it is finite and >= 0."""
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
    """float64 (4,) class fractions summing to 1; None means equal classes."""
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
