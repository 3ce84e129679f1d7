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

Modules, each importing only those listed after it: `cache` (the HDF5 cache), `simulate`
(`generate`), `checks` (argument checks), `render` (pixels from parameters), `params` (the
per-class parameter draws), `streams` (the random streams), `instrument` (pixel scale, PSF,
sky and the render frame).
"""

from galmorph.data.synthetic.cache import cached_path, load_or_generate
from galmorph.data.synthetic.instrument import pixel_scale
from galmorph.data.synthetic.params import CLASS_NAMES
from galmorph.data.synthetic.render import _Q as _Q  # the stretch's softening; tests invert the stretch with it
from galmorph.data.synthetic.simulate import GENERATOR_VERSION, generate

__all__ = ["CLASS_NAMES", "GENERATOR_VERSION", "cached_path", "generate", "load_or_generate", "pixel_scale"]
