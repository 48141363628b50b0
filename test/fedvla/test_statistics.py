"""fedvla.statistics against independent computations: scipy's Wilson interval, McNemar's exact
test as a binomial test on the discordant pairs, and the Cochran–Mantel–Haenszel statistic from its
textbook formula."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fedvla.statistics import (agree_within_noise, cochran_mantel_haenszel, mcnemar, seed_summary,
                               wilson_interval)

stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("successes,trials", [(0, 20), (1, 20), (10, 20), (19, 20), (20, 20), (7, 43)])
def test_wilson_interval_matches_scipy(successes, trials):
    expected = stats.binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    np.testing.assert_allclose(wilson_interval(successes, trials), (expected.low, expected.high), atol=1e-9)


def test_wilson_interval_by_hand():
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(1.959964 ** 2 / (20 + 1.959964 ** 2), rel=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_agreement_is_a_two_proportion_test_at_five_percent():
    assert agree_within_noise(10, 20, 12, 20)
    assert agree_within_noise(0, 20, 0, 20) and agree_within_noise(20, 20, 20, 20)
    assert not agree_within_noise(2, 20, 18, 20)
    # |z| = 1.96 is the boundary: 6/20 vs 13/20 gives z = 2.21, 7/20 vs 13/20 gives z = 1.90
    assert not agree_within_noise(6, 20, 13, 20) and agree_within_noise(7, 20, 13, 20)


def test_mcnemar_is_an_exact_binomial_test_on_the_discordant_trials():
    rng = np.random.default_rng(0)
    a = rng.random(60) < 0.7
    b = rng.random(60) < 0.45
    test = mcnemar(a.tolist(), b.tolist())
    assert (test.both, test.only_a, test.only_b, test.neither) == (
        int(np.sum(a & b)), int(np.sum(a & ~b)), int(np.sum(~a & b)), int(np.sum(~a & ~b)))
    expected = stats.binomtest(test.only_a, test.only_a + test.only_b, 0.5).pvalue
    assert test.p_value == pytest.approx(expected, rel=1e-9) and test.trials == 60
    # the concordant trials carry no evidence: adding some changes nothing
    more = mcnemar(a.tolist() + [True] * 30, b.tolist() + [True] * 30)
    assert more.p_value == pytest.approx(test.p_value, rel=1e-12)
    assert mcnemar([True, False], [True, False]).p_value == 1.0
    with pytest.raises(ValueError, match="the same trials"):
        mcnemar([True], [True, False])


def test_cochran_mantel_haenszel_matches_the_textbook_statistic():
    outcomes = {"drawer": ([True] * 12 + [False] * 3, [True] * 8 + [False] * 7),
                "sweep": ([True] * 5 + [False] * 10, [True] * 2 + [False] * 13),
                "window": ([True] * 9 + [False] * 6, [True] * 9 + [False] * 6),
                "trivial": ([True] * 15, [True] * 15)}  # no information: left out
    test = cochran_mantel_haenszel(outcomes)
    numerator, variance, r, s = 0.0, 0.0, 0.0, 0.0
    for name, (a, b) in outcomes.items():
        if name == "trivial":
            continue
        x11, x12, x21, x22 = sum(a), len(a) - sum(a), sum(b), len(b) - sum(b)
        n = x11 + x12 + x21 + x22
        row, col = x11 + x12, x11 + x21
        numerator += x11 - row * col / n
        variance += row * (n - row) * col * (n - col) / (n * n * (n - 1))
        r += x11 * x22 / n
        s += x12 * x21 / n
    statistic = (abs(numerator) - 0.5) ** 2 / variance
    assert test.strata == 3
    assert test.statistic == pytest.approx(statistic, rel=1e-9)
    assert test.p_value == pytest.approx(stats.chi2.sf(statistic, 1), rel=1e-9)
    assert test.pooled_odds_ratio == pytest.approx(r / s, rel=1e-9)
    nothing = cochran_mantel_haenszel({"trivial": ([True] * 5, [True] * 5)})
    assert nothing.strata == 0 and nothing.p_value == 1.0 and math.isnan(nothing.pooled_odds_ratio)


def test_seed_summary_is_mean_and_sample_deviation():
    summary = seed_summary([0.5, 0.6, 0.7])
    assert summary.mean == pytest.approx(0.6) and summary.std == pytest.approx(0.1) and summary.seeds == 3
    assert str(summary) == "0.6 ± 0.1 (3 seeds)"
    assert math.isnan(seed_summary([0.4]).std) and str(seed_summary([0.4])) == "0.4 (1 seed)"
