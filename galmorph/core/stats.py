"""Summary statistics over seeds: mean and sample std, and the paired gain of one recipe over
another (the runs of one seed share the split, the augmentation order and the initial
weights, so the per-seed differences are paired)."""

from __future__ import annotations

import math
from dataclasses import dataclass


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


@dataclass(frozen=True)
class Gain:
    mean: float  # mean of the per-seed differences (unpaired: difference of the means)
    se: float  # its standard error (0 for one seed)
    n: int  # number of seeds both sides have (unpaired: the smaller side's)
    paired: bool = True

    @property
    def holds(self) -> bool:
        """More than two standard errors above zero, over at least 3 seeds (issue 14's rule)."""
        return self.n >= 3 and self.mean > 2 * self.se

    def text(self, scale: float = 100.0) -> str:
        """'+1.5 +- 0.4 (holds)' in points (scale 100), or '+1.5' for a single seed."""
        note = "" if self.paired else " (unpaired)"
        if self.n < 2:
            return f"{self.mean * scale:+.1f}{note}"
        return f"{self.mean * scale:+.1f} +- {self.se * scale:.1f}" + (" (holds)" if self.holds else "") + note


def paired_gain(reference: dict, other: dict) -> Gain | None:
    """The gain of `other` over `reference`, both {seed: value}, over the seeds both have;
    None when they share none."""
    seeds = [s for s in other if s in reference]
    if not seeds:
        return None
    mean, std = mean_std([other[s] - reference[s] for s in seeds])
    return Gain(mean, std / math.sqrt(len(seeds)) if len(seeds) > 1 else 0.0, len(seeds))


def unpaired_gain(reference: list[float], other: list[float]) -> Gain | None:
    """The difference of the means of `other` and `reference`, with the standard error of
    independent samples, for runs that do not share their test galaxies seed by seed."""
    if not reference or not other:
        return None
    (ma, sa), (mb, sb) = mean_std(reference), mean_std(other)
    se = math.sqrt(sa ** 2 / len(reference) + sb ** 2 / len(other))
    return Gain(mb - ma, se, min(len(reference), len(other)), paired=False)
