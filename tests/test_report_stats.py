"""The paired difference from the base model with its 95% interval (report/tables.py), the Δ of
every report: checked against a hand computation and scipy's paired t-test, and shown to be paired."""

from __future__ import annotations

import math
import random

import pytest

from critkit.report.tables import paired_difference


def test_paired_difference_by_hand():
    model = {"q1": 1.0, "q2": 1.0, "q3": 1.0, "q4": 0.0, "only-model": 1.0}
    base = {"q1": 0.0, "q2": 1.0, "q3": 0.0, "q4": 0.0, "only-base": 0.0}
    mean, half_width, n = paired_difference(model, base)
    # Differences 1, 0, 1, 0 over the 4 shared questions: mean 0.5, sample variance 1/3.
    assert n == 4 and mean == pytest.approx(0.5)
    assert half_width == pytest.approx(1.96 * math.sqrt((1 / 3) / 4))
    assert paired_difference({"q1": 1.0}, {"q1": 0.0})[2] == 1 and math.isnan(paired_difference({"q1": 1.0}, {"q1": 0.0})[1])


def test_paired_difference_equals_scipys_paired_t_statistic():
    from scipy.stats import ttest_rel

    rng = random.Random(3)
    ids = [f"q{i}" for i in range(96)]
    base = {i: float(rng.random() < 0.25) for i in ids}
    model = {i: float(rng.random() < 0.7) for i in ids}
    mean, half_width, n = paired_difference(model, base)
    test = ttest_rel([model[i] for i in ids], [base[i] for i in ids])
    standard_error = mean / test.statistic  # t = mean difference / its standard error
    assert n == 96 and mean == pytest.approx(sum(model.values()) / 96 - sum(base.values()) / 96)
    assert half_width == pytest.approx(1.96 * standard_error)


def test_the_interval_is_paired_by_question():
    """A model that is the base model plus 10 questions turned right: 10 points better on every
    draw of questions. The paired interval sees that (it excludes 0); an interval for two
    independent accuracies, which ignores that both answered the same questions, would not."""
    rng = random.Random(0)
    ids = [f"q{i}" for i in range(100)]
    base = {i: float(rng.random() < 0.5) for i in ids}
    wrong = [i for i in ids if not base[i]]
    model = {**base, **{i: 1.0 for i in wrong[:10]}}
    mean, half_width, _ = paired_difference(model, base)
    assert mean == pytest.approx(0.10) and mean - half_width > 0
    p, q = sum(model.values()) / 100, sum(base.values()) / 100
    unpaired = 1.96 * math.sqrt(p * (1 - p) / 100 + q * (1 - q) / 100)
    assert mean - unpaired < 0  # the control: unpaired, the same data would not be "better than base"
