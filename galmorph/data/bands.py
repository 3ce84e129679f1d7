"""Band selection: which channel of a colour composite holds which band, per survey.

A dataset record (galmorph.data.registry) names the `BandMap` of its images, so `--band` is
checked against that dataset's bands and picks the right channel:

- SDSS composites put i, r, g into red, green, blue (Lupton et al. 2004), so in an RGB
  array g is channel 2, r channel 1 and i channel 0. The paper used the g band (the
  default). The PHYS449 notebooks took the RED channel, i.e. `band=i`, although they
  called it g.
- Legacy Surveys composites (Galaxy10 DECaLS) put z, r, g into red, green, blue: the
  Galaxy10 DECaLS images are the viewer's `jpeg-cutout?bands=grz` JPEGs (henrysky/Galaxy10,
  downloader_gzdes_*.py), and legacypipe's colour mapping puts g in plane 2, r in plane 1
  and z in plane 0 (its `rgbscales` g=(2, ..), r=(1, ..), z=(0, ..)). Its README says only
  "g, r and z band", not their order; the order here rests on the cutout code above.
"""

from __future__ import annotations

from dataclasses import dataclass

from galmorph.core.errors import GalmorphError


@dataclass(frozen=True)
class BandMap:
    """The band in RGB channel 0, 1 and 2 of a survey's colour composites."""

    survey: str
    rgb: tuple[str, str, str]
    colour: str  # every band, bluest first: the multi-band choice (gri, grz)

    @property
    def choices(self) -> tuple[str, ...]:
        """The values `--band` takes for these images: each band, then all of them."""
        return tuple(self.colour) + (self.colour,)

    def channels(self, band: str) -> tuple[int, ...]:
        """Channel indices, in output order, of `band` (one of `choices`)."""
        if band not in self.choices:
            raise GalmorphError(f"unknown band {band!r} for {self.survey} images; choose one of {', '.join(self.choices)}")
        return tuple(self.rgb.index(b) for b in band)


SDSS = BandMap("SDSS", ("i", "r", "g"), "gri")
LEGACY = BandMap("Legacy Surveys (DECaLS)", ("z", "r", "g"), "grz")
SURVEYS = (SDSS, LEGACY)

CHANNEL = {b: SDSS.rgb.index(b) for b in SDSS.rgb}
BANDS = SDSS.choices
ALL_BANDS = tuple(dict.fromkeys(b for s in SURVEYS for b in s.choices))  # every survey's, for the CLI


def channels(band: str, bandmap: BandMap = SDSS) -> tuple[int, ...]:
    """Channel indices, in output order, of `band` in `bandmap`'s composites (SDSS by default)."""
    return bandmap.channels(band)
