"""An independent, deliberately naive per-token NumPy reference of the objectives in DESIGN.md §1.

Written from the design's definitions, in float64, one position at a time; it shares no code with
iqlearn_jax.losses.
"""

from __future__ import annotations

import math

import numpy as np


def logsumexp(row: np.ndarray) -> float:
    top = float(np.max(row))
    return top + math.log(float(np.sum(np.exp(row - top))))


def next_value_and_mask(logits, targets, weights, segment_ids, b, t, eos_id):
    """(V(s_{t+1}), m_t) for position (b, t) by the design's three rules."""
    if targets[b, t] == eos_id:
        return 0.0, 1.0
    length = targets.shape[1]
    if t + 1 < length and weights[b, t + 1] > 0:
        if segment_ids is None or segment_ids[b, t + 1] == segment_ids[b, t]:
            return logsumexp(logits[b, t + 1]), 1.0
    return 0.0, 0.0


def normalized_weights(weights, segment_ids, factor):
    """(per-token weights, Z) following T5X's loss_normalizing_factor semantics."""
    weights = np.asarray(weights, np.float64)
    if factor is None:
        return weights, 1.0
    if factor == "NUM_REAL_TARGET_TOKENS":
        return weights, float(weights.sum())
    if factor == "NUM_TOTAL_TARGET_TOKENS":
        return weights, float(weights.size)
    if factor == "AVERAGE_PER_SEQUENCE":
        totals: dict[tuple[int, int], float] = {}
        for b in range(weights.shape[0]):
            for t in range(weights.shape[1]):
                key = (b, 0 if segment_ids is None else int(segment_ids[b, t]))
                totals[key] = totals.get(key, 0.0) + weights[b, t]
        scaled = np.zeros_like(weights)
        for b in range(weights.shape[0]):
            for t in range(weights.shape[1]):
                key = (b, 0 if segment_ids is None else int(segment_ids[b, t]))
                if totals[key] > 0:
                    scaled[b, t] = weights[b, t] / totals[key]
        return scaled, float(scaled.sum())
    return weights, float(factor)


def iqlearn_reference(
    logits,
    targets,
    weights,
    *,
    lam,
    gamma=1.0,
    eos_id=1,
    segment_ids=None,
    factor=None,
    valid_vocab_size=None,
):
    """Returns dict(loss, mle_term, td_term, rewards, td_mask, mean_reward, mean_value, accuracy, entropy, ...)."""
    logits = np.asarray(logits, np.float64)
    if valid_vocab_size is not None:
        logits = logits[..., :valid_vocab_size]
    targets = np.asarray(targets)
    raw_weights = np.asarray(weights, np.float64)
    token_weights, normalizer = normalized_weights(raw_weights, segment_ids, factor)
    batch, length, _ = logits.shape
    rewards = np.zeros((batch, length))
    td_mask = np.zeros((batch, length))
    mle_sum = td_sum = 0.0
    stats = {
        "value": 0.0,
        "correct": 0.0,
        "entropy": 0.0,
        "weight": 0.0,
        "reward": 0.0,
        "td_w": 0.0,
    }
    for b in range(batch):
        for t in range(length):
            if raw_weights[b, t] <= 0:
                continue
            row = logits[b, t]
            value = logsumexp(row)
            q = row[targets[b, t]]
            log_prob = q - value
            next_value, mask = next_value_and_mask(
                logits, targets, raw_weights, segment_ids, b, t, eos_id
            )
            reward = q - gamma * next_value
            rewards[b, t] = reward * mask
            td_mask[b, t] = mask
            mle_sum += token_weights[b, t] * -log_prob
            td_sum += token_weights[b, t] * mask * reward**2
            probs = np.exp(row - value)
            w = raw_weights[b, t]
            stats["value"] += w * value
            stats["correct"] += w * float(np.argmax(row) == targets[b, t])
            stats["entropy"] += w * float(-np.sum(probs * (row - value)))
            stats["weight"] += w
            stats["reward"] += w * mask * reward
            stats["td_w"] += w * mask
    mle_term = mle_sum / normalizer
    td_term = lam * td_sum / normalizer
    return {
        "loss": mle_term + td_term,
        "mle_term": mle_term,
        "td_term": td_term,
        "rewards": rewards,
        "td_mask": td_mask,
        "mean_reward": stats["reward"] / stats["td_w"],
        "mean_value": stats["value"] / stats["weight"],
        "accuracy": stats["correct"] / stats["weight"],
        "entropy": stats["entropy"] / stats["weight"],
        "num_tokens": float(np.sum(raw_weights > 0)),
        "policy_chi2": td_sum / normalizer,
    }


def mle_reference(
    logits, targets, weights, *, label_smoothing=0.0, z_loss=0.0, beta=0.0, factor=None
):
    """Label-smoothed cross-entropy minus the soft target's entropy, plus z-loss, minus β·entropy; per token."""
    logits = np.asarray(logits, np.float64)
    token_weights, normalizer = normalized_weights(weights, None, factor)
    batch, length, vocab = logits.shape
    total = 0.0
    for b in range(batch):
        for t in range(length):
            row = logits[b, t]
            value = logsumexp(row)
            log_probs = row - value
            soft = np.full(vocab, label_smoothing / (vocab - 1))
            soft[targets[b, t]] = 1.0 - label_smoothing
            cross_entropy = -float(np.sum(soft * log_probs))
            soft_entropy = -float(np.sum(soft * np.log(soft + 1e-300)))
            entropy = -float(np.sum(np.exp(log_probs) * log_probs))
            per_token = cross_entropy - soft_entropy + z_loss * value**2 - beta * entropy
            total += token_weights[b, t] * per_token
    return total / normalizer
