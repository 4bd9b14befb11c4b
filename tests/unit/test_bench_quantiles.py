"""The confidence interval bench/alerts.py gives each p99 (:func:`bench.alerts.quantile_ci`)."""

from __future__ import annotations

import math
import random

from bench.alerts import quantile_ci


def test_the_interval_is_the_ranks_of_the_binomial_bounds():
    # The textbook case: the median of 100 samples lies between the 40th and the 61st at 95 %.
    assert quantile_ci(list(range(1, 101)), 0.5) == (40, 61)
    # A p99 of 1,000 samples: between the 983rd and the 997th.
    assert quantile_ci(list(range(1, 1001)), 0.99) == (983, 997)


def test_too_few_samples_leave_the_upper_bound_open():
    # All of n samples fall below the p99 with probability 0.99 ** n: over 2.5 % until n = 368.
    assert quantile_ci(list(range(1, 301)), 0.99) == (293, None)
    assert quantile_ci(list(range(1, 368)), 0.99)[1] is None
    assert quantile_ci(list(range(1, 369)), 0.99) == (360, 368)
    assert quantile_ci([], 0.99) == (None, None)


def test_the_interval_holds_the_true_p99_about_95_times_in_100():
    seed = 20261206
    print(f"seed {seed}")
    rnd = random.Random(seed)
    truth = -math.log(0.01)  # the p99 of an exponential distribution of mean 1
    runs, held = 400, 0
    for _ in range(runs):
        low, high = quantile_ci(sorted(rnd.expovariate(1.0) for _ in range(1000)), 0.99)
        held += low <= truth <= high
    # 97.6 % for 1,000 samples (at least 95 % by construction; the ranks are discrete), and 400
    # runs put the share observed within about 1.5 points of it (2 standard deviations). An
    # interval too narrow holds it less often, one too wide every time.
    assert 0.945 <= held / runs <= 0.995, held
