"""Paired bootstrap over prompts, shared by the report scripts.

mean_ci(diffs, seed) -> (mean, lo, hi): the mean of per-prompt differences and its 95% interval
from 2,000 resamples of the prompts (a fixed seed, so a report recomputes to the same digits).
"""
import random

RESAMPLES = 2000


def mean_ci(diffs, seed, resamples=RESAMPLES):
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in diffs) / n for _ in range(resamples))
    return sum(diffs) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
