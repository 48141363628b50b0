"""Statistics of closed-loop success, shared by the twin's evaluation and the studies' reports.

* :func:`wilson_interval`: a success rate's 95 % score interval (with 20 trials a measured 50 %
  is 30-70 %: small samples need the interval, not the bare rate);
* :func:`agree_within_noise`: whether two independent success rates are consistent with one
  (two-proportion z-test);
* :func:`mcnemar`: two methods on the same layouts, trial by trial (paired): only the layouts where
  exactly one succeeded carry evidence; exact binomial test on them (statsmodels);
* :func:`cochran_mantel_haenszel`: two methods across several tasks, each task a stratum with its
  own base rate (statsmodels' stratified 2x2 tables): whether one method's odds of success are
  higher over all tasks, without pooling tasks of different difficulty into one table;
* :func:`seed_summary`: mean and sample standard deviation over training seeds.
"""
from __future__ import annotations

import dataclasses
import math
import statistics as _statistics
from collections.abc import Mapping, Sequence

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
ALPHA = 0.05  # the level at which the reports call a difference significant


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` without trials)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def agree_within_noise(successes_a: int, trials_a: int, successes_b: int, trials_b: int, z: float = Z95) -> bool:
    """Whether two success rates are consistent with one binomial rate (two-proportion z-test at
    the level of ``z``, pooled variance). Identical rates always agree; so do 0/n and 0/m."""
    if trials_a <= 0 or trials_b <= 0:
        return True
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b))
    difference = abs(successes_a / trials_a - successes_b / trials_b)
    return difference == 0 or (spread > 0 and difference <= z * spread)


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """McNemar's test of two methods on the same trials."""

    both: int
    only_a: int  # trials a succeeded and b failed
    only_b: int
    neither: int
    p_value: float  # two-sided, exact binomial on the discordant trials

    @property
    def trials(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> PairedTest:
    """``a[i]`` and ``b[i]``: the two methods' outcomes on trial (layout) i."""
    from statsmodels.stats.contingency_tables import mcnemar as statsmodels_mcnemar

    if len(a) != len(b):
        raise ValueError(f"paired outcomes of different lengths ({len(a)} and {len(b)}): the same trials are needed")
    both = sum(1 for x, y in zip(a, b) if x and y)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    neither = len(a) - both - only_a - only_b
    p_value = 1.0 if only_a + only_b == 0 else float(
        statsmodels_mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue)
    return PairedTest(both=both, only_a=only_a, only_b=only_b, neither=neither, p_value=p_value)


@dataclasses.dataclass(frozen=True)
class StratifiedTest:
    """Cochran–Mantel–Haenszel test over strata (tasks)."""

    strata: int  # tasks that carried information (both outcomes seen)
    pooled_odds_ratio: float  # Mantel–Haenszel estimate, a's odds of success over b's (nan: undefined)
    statistic: float
    p_value: float  # two-sided, with continuity correction


def cochran_mantel_haenszel(outcomes: Mapping[str, tuple[Sequence[bool], Sequence[bool]]]) -> StratifiedTest:
    """``outcomes[task] = (a's outcomes, b's outcomes)`` on that task's trials. A task where every
    trial of both methods ended the same way carries no information and is left out (its table
    has a zero margin)."""
    import numpy as np
    from statsmodels.stats.contingency_tables import StratifiedTable

    tables = []
    for a, b in outcomes.values():
        table = [[sum(a), len(a) - sum(a)], [sum(b), len(b) - sum(b)]]
        successes, failures = table[0][0] + table[1][0], table[0][1] + table[1][1]
        if successes and failures:
            tables.append(table)
    if not tables:
        return StratifiedTest(strata=0, pooled_odds_ratio=math.nan, statistic=0.0, p_value=1.0)
    stratified = StratifiedTable(np.asarray(tables, dtype=float).transpose(1, 2, 0))
    test = stratified.test_null_odds(correction=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = float(stratified.oddsratio_pooled)
    return StratifiedTest(strata=len(tables), pooled_odds_ratio=odds, statistic=float(test.statistic),
                          p_value=float(test.pvalue))


@dataclasses.dataclass(frozen=True)
class SeedSummary:
    mean: float
    std: float  # sample standard deviation (nan for one seed)
    seeds: int

    def __str__(self) -> str:
        if self.seeds == 1:
            return f"{self.mean:.3g} (1 seed)"
        return f"{self.mean:.3g} ± {self.std:.2g} ({self.seeds} seeds)"


def seed_summary(values: Sequence[float]) -> SeedSummary:
    """Mean ± sample standard deviation of one figure over training seeds."""
    if not values:
        raise ValueError("no seeds to summarise")
    std = _statistics.stdev(values) if len(values) > 1 else math.nan
    return SeedSummary(mean=_statistics.fmean(values), std=std, seeds=len(values))
