"""`generate`: validated settings -> labels and images, rendered chunk by chunk."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from galmorph.data.synthetic.checks import _check_fractions, _check_int, _check_noise
from galmorph.data.synthetic.instrument import _Geometry
from galmorph.data.synthetic.render import _render_chunk
from galmorph.data.synthetic.streams import _labels

GENERATOR_VERSION = 2  # bump whenever the output for given settings changes (invalidates caches)


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
