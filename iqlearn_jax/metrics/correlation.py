"""Rank correlation between extracted rewards and task metrics (the paper's reward analysis, Table 2).

Spearman's ρ is Pearson's correlation of the ranks, with tied values given the average of the ranks they span
(the "fractional ranking" scipy.stats.spearmanr uses). Implemented here with NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` [n]; ties get the mean of the ranks they occupy. Returns float64 [n]."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    n = len(x)
    while start < n:
        end = start + 1
        while end < n and sorted_x[end] == sorted_x[start]:
            end += 1
        # positions start..end-1 hold ranks start+1..end; their mean is (start+1+end)/2
        ranks[order[start:end]] = (start + 1 + end) / 2.0
        start = end
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of two equally long 1-D samples, in [-1, 1].

    Returns NaN when fewer than 2 pairs or when either sample is constant (the correlation is undefined),
    as scipy does. Raises ValueError on different lengths or non-finite values.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"spearman needs two 1-D arrays of the same length, got {x.shape} and {y.shape}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("spearman got NaN or Inf values; expected finite numbers")
    if len(x) < 2:
        return float("nan")
    rx = average_ranks(x) - (len(x) + 1) / 2.0
    ry = average_ranks(y) - (len(y) + 1) / 2.0
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    if denom == 0:
        return float("nan")
    return float(np.clip((rx * ry).sum() / denom, -1.0, 1.0))


def reward_metric_correlations(
    rewards: Sequence[float], per_sample_metrics: dict[str, Sequence[float]]
) -> dict[str, float]:
    """Spearman ρ of each sample's summed implicit reward against each per-sample task metric.

    Args:
      rewards: [num_samples] summed implicit rewards Σ_t r_t of each generated sample.
      per_sample_metrics: metric name -> [num_samples] values (e.g. rouge1, bleu, gsm8k correctness 0/100).

    Returns:
      {"spearman_reward_vs_<name>": ρ} (NaN where undefined, e.g. a constant metric).
    """
    out = {}
    for name, values in per_sample_metrics.items():
        if len(values) != len(rewards):
            raise ValueError(
                f"per-sample metric {name!r} has {len(values)} values, expected {len(rewards)} (one per reward)"
            )
        out[f"spearman_reward_vs_{name}"] = spearman(rewards, values)
    return out
