"""Spearman rank correlation against scipy.stats.spearmanr, with and without ties."""

import numpy as np
import pytest
from scipy import stats

from iqlearn_jax.metrics import correlation


@pytest.mark.parametrize("seed", range(5))
def test_spearman_equals_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    x_tied = np.round(x, 0)  # many ties
    y_binary = (y > 0).astype(float) * 100.0  # like GSM8k correctness 0/100
    for a, b in [(x, y), (x_tied, y), (x, y_binary), (x_tied, y_binary)]:
        assert correlation.spearman(a, b) == pytest.approx(
            stats.spearmanr(a, b).statistic, abs=1e-12
        )


def test_average_ranks_equals_scipy():
    v = [3.0, 1.0, 3.0, 2.0, 3.0, -1.0, 2.0]
    np.testing.assert_array_equal(correlation.average_ranks(v), stats.rankdata(v, method="average"))


def test_degenerate_and_bad_input():
    assert np.isnan(correlation.spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
    assert np.isnan(correlation.spearman([1.0], [2.0]))
    assert correlation.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same length"):
        correlation.spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        correlation.spearman([1, np.nan], [1, 2])


def test_reward_metric_correlations():
    rewards = [0.1, -2.0, 3.0, 0.5]
    out = correlation.reward_metric_correlations(
        rewards, {"rouge1": [10, 0, 30, 20], "acc": [0, 0, 100, 100]}
    )
    assert out["spearman_reward_vs_rouge1"] == pytest.approx(
        stats.spearmanr(rewards, [10, 0, 30, 20]).statistic
    )
    assert out["spearman_reward_vs_acc"] == pytest.approx(
        stats.spearmanr(rewards, [0, 0, 100, 100]).statistic
    )
    with pytest.raises(ValueError, match="rouge1"):
        correlation.reward_metric_correlations(rewards, {"rouge1": [1, 2]})
