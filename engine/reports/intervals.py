"""Confidence intervals of proportions for the playbook report (docs/REPORTS.md, "Playbooks").

Wilson's score interval for one group's conversion rate, and Newcombe's hybrid score interval
(Newcombe 1998, method 10) for the difference of two: unlike Wald's they stay inside [0, 1] and
keep close to 95% coverage for rates near 0 or 1 and for the small, unequal groups a 5-10%
holdout makes.
"""

from __future__ import annotations

import math
from statistics import NormalDist

CONFIDENCE = 0.95
Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.959963984540054
METHOD = "Newcombe hybrid score interval (from Wilson score intervals)"


def wilson(successes: int, trials: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion (fractions): unlike Wald it never leaves [0, 1]
    and does not collapse to a point at 0 or all successes."""
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = Z) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p2 (fractions), from each side's Wilson
    interval; see the module docstring for why this and not Wald."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    difference = p1 - p2
    return (difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
