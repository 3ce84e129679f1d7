"""Random streams: the shuffled labels and each galaxy's own fixed-length draws.

Labels come from SeedSequence(seed, spawn_key=(1,)); galaxy i from SeedSequence(seed,
spawn_key=(0, i)), so image i does not depend on `chunk` or on `n`. Each galaxy draws a fixed
_N_U uniforms and _N_Z normals whatever its class, so adding a parameter never shifts the
others' streams as long as the columns suffice.
"""

from __future__ import annotations

import math

import numpy as np

_N_U, _N_Z = 160, 128  # uniforms and normals drawn per galaxy (fixed, so streams never shift)


def _labels(n, seed, fractions):
    """uint8 (n,) labels: exactly n * fractions of each class (largest remainder), shuffled with the seed."""
    raw = fractions * n
    counts = np.floor(raw).astype(int)
    short = n - counts.sum()
    counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    labels = np.repeat(np.arange(4, dtype=np.uint8), counts)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return labels[rng.permutation(n)]


def _galaxy_draws(index, seed, noise, size):
    """Draws of galaxies `index` (b,): uniforms u (b, _N_U) and normals z (b, _N_Z), float64,
    and unit pixel noise eps float32 (b, 3, size, size), left unset when `noise` is 0."""
    b = len(index)
    u = np.empty((b, _N_U))
    z = np.empty((b, _N_Z))
    eps = np.empty((b, 3, size, size), dtype=np.float32)
    for j, i in enumerate(index):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, int(i))))
        u[j] = rng.random(_N_U)
        z[j] = rng.standard_normal(_N_Z)
        if noise > 0:
            rng.standard_normal(out=eps[j], dtype=np.float32)
    return u, z, eps


class _Draws:
    """Hands out columns of the per-galaxy uniform (u) and normal (z) draws in a fixed order."""

    def __init__(self, u, z):
        self.u, self.z, self.iu, self.iz = u, z, 0, 0

    def uniform(self, lo=0.0, hi=1.0, cols=None):
        k = 1 if cols is None else cols
        out = self.u[:, self.iu:self.iu + k]
        self.iu += k
        if self.iu > self.u.shape[1]:
            raise RuntimeError("synthetic: raise _N_U")
        out = lo + (hi - lo) * out
        return out[:, 0] if cols is None else out

    def loguniform(self, lo, hi, cols=None):
        return np.exp(self.uniform(math.log(lo), math.log(hi), cols))

    def normal(self, cols=None):
        k = 1 if cols is None else cols
        out = self.z[:, self.iz:self.iz + k]
        self.iz += k
        if self.iz > self.z.shape[1]:
            raise RuntimeError("synthetic: raise _N_Z")
        return out[:, 0] if cols is None else out
