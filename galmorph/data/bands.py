"""SDSS band selection.

SDSS colour composites put i, r, g into red, green, blue (Lupton et al. 2004), so in an
RGB array the g band is channel 2, r is channel 1 and i is channel 0. The paper used the
g band (the default here). The PHYS449 notebooks took the RED channel, i.e. `band=i`,
although they called it g.
"""

from __future__ import annotations

from galmorph.core.errors import GalmorphError

CHANNEL = {"i": 0, "r": 1, "g": 2}
BANDS = ("g", "r", "i", "gri")


def channels(band: str) -> tuple[int, ...]:
    """Channel indices, in output order, of `band` ('g', 'r', 'i' or 'gri')."""
    if band not in BANDS:
        raise GalmorphError(f"unknown band {band!r}; choose one of {', '.join(BANDS)}")
    return tuple(CHANNEL[b] for b in band)
