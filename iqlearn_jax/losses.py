"""Pure objectives on a language model's logits: MLE, entropy-regularised MLE and IQLearn.

IQLearn (Garg et al., 2021) as reformulated by Wulfmeier et al. (NeurIPS 2024, arXiv 2409.01369) treats the
logits ℓ_t of target position t as a soft Q-function, Q(s_t, ·) = ℓ_t, with value V(s_t) = logsumexp(ℓ_t). The
offline objective is maximum likelihood plus a temporal-difference regulariser on the implicit reward
r_t = Q(s_t, a_t) − γ·V(s_{t+1}):

    loss = Σ_t w_t · (−log π(a_t|s_t) + λ · m_t · r_t²) / Z

Next-state values (DESIGN.md §1):
  * V(s_{t+1}) = logsumexp(ℓ_{t+1}) when position t+1 holds a weighted target of the same segment;
  * V(s_{t+1}) = 0 when a_t is EOS (terminal state), whatever follows;
  * otherwise the sequence was truncated, the next value is unknown and the TD mask m_t is 0 (the MLE term stays).

Every function here is pure and jit/grad/vmap compatible; nothing here knows about Flax, batches or I/O.
Only `token_terms` reads the vocabulary axis; every objective is built from its per-position terms, so passing a
`chunked_loss.ChunkedLogits` (hidden states + output projection, reduced over vocabulary chunks) instead of a
logits array gives the same losses and metrics without materialising [batch, length, vocab].

Shapes: logits [batch, length, vocab] in any floating dtype (all reductions run in float32, or in float64 for
float64 logits); targets, weights and segment_ids [batch, length]. Losses are float32 scalars; metrics are dicts of float32 scalars.

`loss_normalizing_factor` follows T5X: None → the plain sum over positions; a number → the sum divided by it;
"NUM_REAL_TARGET_TOKENS" → divided by Σ weights; "NUM_TOTAL_TARGET_TOKENS" → divided by batch·length;
"AVERAGE_PER_SEQUENCE" → each sequence (each packed segment) first averaged over its own weighted tokens, then
summed and divided by the number of non-empty sequences.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from iqlearn_jax.loss_checks import check_inputs as _check_inputs
from iqlearn_jax.loss_checks import check_normalizing_factor as _check_normalizing_factor
from iqlearn_jax.loss_checks import check_range as _check_range

Array = jax.Array
Metrics = dict[str, Array]

# Finite stand-in for −∞ on padded vocabulary rows: keeps 0·(masked logit) = 0 in the entropy.
_MASKED_LOGIT = -1e30


# --------------------------------------------------------------------------------------------------------------------
# Per-token building blocks.
# --------------------------------------------------------------------------------------------------------------------


def _upcast(logits: Array) -> Array:
    """Logits in at least float32 (bfloat16/float16 are upcast; float64 stays float64 for gradient checks)."""
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def _mask_padded_vocab(logits: Array, valid_vocab_size: int | None) -> Array:
    """Upcast logits with the rows ≥ valid_vocab_size (T5's padded embedding rows) pushed to −∞."""
    logits = _upcast(logits)
    if valid_vocab_size is None:
        return logits
    vocab = logits.shape[-1]
    if not isinstance(valid_vocab_size, int | np.integer) or not 0 < valid_vocab_size <= vocab:
        raise ValueError(
            f"valid_vocab_size must be an integer in [1, {vocab}] (the logits' vocab size), "
            f"got {valid_vocab_size!r}"
        )
    if valid_vocab_size == vocab:
        return logits
    is_valid = jnp.arange(vocab) < valid_vocab_size
    return jnp.where(is_valid, logits, _MASKED_LOGIT)


def token_terms(
    logits: Any, targets: Array, valid_vocab_size: int | None = None
) -> dict[str, Array]:
    """The per-position reductions over the vocabulary that every objective is built from; each [b, l]:

    value V(s) = logsumexp ℓ, q = ℓ[a], log_prob = q − V, entropy H, correct = [argmax ℓ = a], logit_sum = Σ_a ℓ_a
    (all over the rows < valid_vocab_size when it is set). This is the only place that reads the vocabulary
    axis: `logits` is an array [b, l, v], or a `chunked_loss.ChunkedLogits` (anything with `token_terms`), which
    computes the same quantities chunk by chunk without materialising [b, l, v].
    """
    if hasattr(logits, "token_terms"):
        return logits.token_terms(targets, valid_vocab_size)
    logits32 = _mask_padded_vocab(logits, valid_vocab_size)
    log_z = jax.nn.logsumexp(logits32, axis=-1)
    chosen = jnp.take_along_axis(logits32, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    log_softmax = logits32 - log_z[..., None]
    probs = jnp.exp(log_softmax)
    entropy = -jnp.sum(probs * log_softmax, axis=-1)
    correct = (jnp.argmax(logits32, axis=-1) == targets).astype(jnp.float32)
    vocab = logits32.shape[-1]
    valid_logits = logits32
    if valid_vocab_size is not None and valid_vocab_size < vocab:
        valid_logits = jnp.where(jnp.arange(vocab) < valid_vocab_size, logits32, 0.0)
    return {
        "value": log_z,
        "q": chosen,
        "log_prob": chosen - log_z,
        "entropy": entropy,
        "correct": correct,
        "logit_sum": jnp.sum(valid_logits, axis=-1),
    }


def _next_state_value(
    value: Array,
    targets: Array,
    weights: Array,
    segment_ids: Array | None,
    eos_id: int,
) -> tuple[Array, Array]:
    """V(s_{t+1}) per position and the TD mask m_t, both [b, l] (see module docstring)."""
    pad_col = jnp.zeros_like(value[:, :1])
    shifted_value = jnp.concatenate([value[:, 1:], pad_col], axis=1)
    next_weighted = jnp.concatenate([weights[:, 1:] > 0, jnp.zeros_like(weights[:, :1], bool)], 1)
    if segment_ids is None:
        same_segment = jnp.ones_like(next_weighted)
    else:
        same_segment = jnp.concatenate(
            [segment_ids[:, 1:] == segment_ids[:, :-1], jnp.zeros_like(segment_ids[:, :1], bool)],
            axis=1,
        )
    has_next = next_weighted & same_segment
    is_terminal = targets == eos_id
    next_value = jnp.where(is_terminal | ~has_next, 0.0, shifted_value)
    td_mask = ((is_terminal | has_next) & (weights > 0)).astype(jnp.float32)
    return next_value, td_mask


def _normalized_weights(
    weights: Array,
    segment_ids: Array | None,
    loss_normalizing_factor: Any,
) -> tuple[Array, Array]:
    """(per-token weights, Z) such that loss = Σ weights·per_token_loss / Z, as T5X defines Z."""
    weights = weights.astype(jnp.float32)
    if loss_normalizing_factor is None:
        return weights, jnp.float32(1.0)
    if isinstance(loss_normalizing_factor, str):
        if loss_normalizing_factor == "NUM_REAL_TARGET_TOKENS":
            return weights, jnp.sum(weights)
        if loss_normalizing_factor == "NUM_TOTAL_TARGET_TOKENS":
            return weights, jnp.float32(np.prod(weights.shape))
        # AVERAGE_PER_SEQUENCE: each (row, segment) rescaled to sum to 1, Z = number of non-empty sequences.
        batch, length = weights.shape
        segments = jnp.zeros_like(weights, jnp.int32) if segment_ids is None else segment_ids
        flat_ids = (jnp.arange(batch)[:, None] * (length + 1) + segments.astype(jnp.int32)).ravel()
        num_ids = batch * (length + 1)
        per_sequence = jax.ops.segment_sum(weights.ravel(), flat_ids, num_segments=num_ids)
        denominator = per_sequence[flat_ids].reshape(weights.shape)
        scaled = jnp.where(
            denominator > 0, weights / jnp.where(denominator > 0, denominator, 1.0), 0.0
        )
        return scaled, jnp.sum(scaled)
    return weights, jnp.asarray(loss_normalizing_factor, jnp.float32)


def _safe_divide(numerator: Array, denominator: Array) -> Array:
    return jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1.0), 0.0)


def _weighted_mean(values: Array, weights: Array) -> Array:
    return _safe_divide(jnp.sum(values * weights), jnp.sum(weights))


def _common_metrics(terms: dict[str, Array], weights: Array) -> Metrics:
    weights = weights.astype(jnp.float32)
    return {
        "mean_value": _weighted_mean(terms["value"], weights),
        "accuracy": _weighted_mean(terms["correct"], weights),
        "entropy": _weighted_mean(terms["entropy"], weights),
        "num_tokens": jnp.sum((weights > 0).astype(jnp.float32)),
        "nll_per_token": _weighted_mean(-terms["log_prob"], weights),
    }


# --------------------------------------------------------------------------------------------------------------------
# Public objectives.
# --------------------------------------------------------------------------------------------------------------------


def mle_loss(
    logits: Array,
    targets: Array,
    weights: Array,
    *,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    loss_normalizing_factor: Any = None,
) -> tuple[Array, Metrics]:
    """Cross-entropy with T5X's optional label smoothing and z-loss.

    Per token: −Σ_a q_a log π(a|s) − c + z_loss·V(s)², where q puts 1 − label_smoothing on the target and spreads
    label_smoothing evenly over the other vocab − 1 entries, and c is q's entropy (so a perfect fit costs 0).

    Args:
      logits: [batch, length, vocab] floating.
      targets: [batch, length] int token ids.
      weights: [batch, length] loss weights (0 on padding).
      label_smoothing: in [0, 1).
      z_loss: ≥ 0, coefficient of V² (PaLM / T5X's z-loss).
      loss_normalizing_factor: see module docstring.

    Returns:
      (loss, metrics): float32 scalar loss; metrics with loss, mle_term, z_loss_term and the common ones.
    """
    _check_inputs(logits, targets, weights, None)
    _check_range("label_smoothing", label_smoothing, 0.0, 1.0, high_inclusive=False)
    _check_range("z_loss", z_loss, 0.0, float("inf"))
    _check_normalizing_factor(loss_normalizing_factor)

    terms = token_terms(logits, targets)
    vocab = logits.shape[-1]
    if label_smoothing:
        on_value = 1.0 - label_smoothing
        off_value = label_smoothing / (vocab - 1)
        sum_log_probs = terms["logit_sum"] - vocab * terms["value"]  # Σ_a log π(a|s)
        cross_entropy = -(
            on_value * terms["log_prob"] + off_value * (sum_log_probs - terms["log_prob"])
        )
        target_entropy = -(
            on_value * np.log(on_value) + label_smoothing * np.log(off_value + 1e-20)
        )
        cross_entropy = cross_entropy - target_entropy
    else:
        cross_entropy = -terms["log_prob"]
    z_term = z_loss * jnp.square(terms["value"])

    token_weights, normalizer = _normalized_weights(weights, None, loss_normalizing_factor)
    mle_term = _safe_divide(jnp.sum(token_weights * cross_entropy), normalizer)
    z_loss_term = _safe_divide(jnp.sum(token_weights * z_term), normalizer)
    loss = mle_term + z_loss_term
    metrics = {"loss": loss, "mle_term": mle_term, "z_loss_term": z_loss_term}
    metrics.update(_common_metrics(terms, weights))
    return loss, metrics


def entropy_regularized_loss(
    logits: Array,
    targets: Array,
    weights: Array,
    *,
    beta: float,
    loss_normalizing_factor: Any = None,
) -> tuple[Array, Metrics]:
    """MLE with an entropy bonus, the paper's "ent-reg" baseline: per token −log π(a|s) − β·H(π(·|s)).

    Args:
      logits, targets, weights: as `mle_loss`.
      beta: ≥ 0, entropy coefficient (nats).
      loss_normalizing_factor: see module docstring.

    Returns:
      (loss, metrics) with loss, mle_term, entropy_term (= −β·ΣwH/Z) and the common metrics.
    """
    _check_inputs(logits, targets, weights, None)
    _check_range("beta", beta, 0.0, float("inf"))
    _check_normalizing_factor(loss_normalizing_factor)

    terms = token_terms(logits, targets)
    token_weights, normalizer = _normalized_weights(weights, None, loss_normalizing_factor)
    mle_term = _safe_divide(jnp.sum(token_weights * -terms["log_prob"]), normalizer)
    entropy_term = -beta * _safe_divide(jnp.sum(token_weights * terms["entropy"]), normalizer)
    loss = mle_term + entropy_term
    metrics = {"loss": loss, "mle_term": mle_term, "entropy_term": entropy_term}
    metrics.update(_common_metrics(terms, weights))
    return loss, metrics


def _td_pieces(
    logits: Array,
    targets: Array,
    weights: Array,
    *,
    gamma: float,
    eos_id: int,
    segment_ids: Array | None,
    valid_vocab_size: int | None,
) -> tuple[dict[str, Array], Array, Array]:
    """(per-token terms, implicit rewards r [b, l], TD mask m [b, l])."""
    terms = token_terms(logits, targets, valid_vocab_size)
    rewards, td_mask = rewards_from_terms(
        terms, targets, weights, gamma=gamma, eos_id=eos_id, segment_ids=segment_ids
    )
    return terms, rewards, td_mask


def _chi2_statistics(
    rewards: Array, td_mask: Array, weights: Array, token_weights: Array, normalizer: Array
) -> tuple[Array, Metrics]:
    """(Σ_t w_t·m_t·r_t² / Z, metrics: td_error_sq, mean_reward, td_fraction, num_tokens) of one batch."""
    chi2 = _safe_divide(jnp.sum(token_weights * td_mask * jnp.square(rewards)), normalizer)
    td_weights = weights.astype(jnp.float32) * td_mask
    real = (weights > 0).astype(jnp.float32)
    return chi2, {
        "td_error_sq": _weighted_mean(jnp.square(rewards), td_weights),
        "mean_reward": _weighted_mean(rewards, td_weights),
        "td_fraction": _safe_divide(jnp.sum(td_mask), jnp.sum(real)),
        "num_tokens": jnp.sum(real),
    }


def rewards_from_terms(
    terms: dict[str, Array],
    targets: Array,
    weights: Array,
    *,
    gamma: float,
    eos_id: int,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """(r [b, l], TD mask m [b, l]) from `token_terms`: r_t = q_t − γ·V(s_{t+1}) (unmasked; see module docstring)."""
    next_value, td_mask = _next_state_value(terms["value"], targets, weights, segment_ids, eos_id)
    return terms["q"] - gamma * next_value, td_mask


def implicit_rewards(
    logits: Array,
    targets: Array,
    weights: Array,
    *,
    gamma: float = 1.0,
    eos_id: int = 1,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """The IQLearn implicit reward r_t = Q(s_t, a_t) − γ·V(s_{t+1}) of every target token.

    Returns:
      (rewards, td_mask), both float32 [batch, length]. td_mask is 1 where the reward is defined (weighted position
      whose next value is known: EOS or a weighted next target of the same segment) and rewards are 0 elsewhere.
      With γ = 1 the sum over a complete sequence telescopes to log π(y|x) + V(s_0).
    """
    _check_inputs(logits, targets, weights, segment_ids)
    _check_range("gamma", gamma, 0.0, 1.0)
    _, rewards, td_mask = _td_pieces(
        logits,
        targets,
        weights,
        gamma=gamma,
        eos_id=eos_id,
        segment_ids=segment_ids,
        valid_vocab_size=None,
    )
    return rewards * td_mask, td_mask


def iqlearn_loss(
    logits: Array,
    targets: Array,
    weights: Array,
    *,
    lam: float,
    gamma: float = 1.0,
    eos_id: int = 1,
    segment_ids: Array | None = None,
    valid_vocab_size: int | None = None,
    loss_normalizing_factor: Any = None,
) -> tuple[Array, Metrics]:
    """Offline IQLearn as TD-regularised MLE (Eq. 14 of the paper).

    loss = Σ_t w_t·(−log π(a_t|s_t) + λ·m_t·r_t²) / Z, with r_t and m_t as in the module docstring. Gradients flow
    through both Q(s_t, a_t) and V(s_{t+1}). λ = 0 is exactly MLE; the χ²-regularised IQ-Learn of Garg et al. is
    λ = 1/(4α_IQ).

    Args:
      logits: [batch, length, vocab] floating (the Q-function).
      targets: [batch, length] int, the expert tokens a_t.
      weights: [batch, length] loss weights (0 on padding and prompt positions).
      lam: ≥ 0, TD-regulariser weight λ.
      gamma: discount in [0, 1].
      eos_id: token id that ends an episode (terminal: V(s') = 0).
      segment_ids: [batch, length] packing segment ids (0 = padding) or None.
      valid_vocab_size: if set, logits rows ≥ this index (padded vocabulary) are excluded from V, π and H.
      loss_normalizing_factor: see module docstring.

    Returns:
      (loss, metrics): metrics hold loss, mle_term, td_term (= λ·Σ w m r² / Z, so loss = mle_term + td_term),
      td_error_sq (mean r² on TD-masked tokens), mean_reward (mean r on weighted TD-masked tokens), td_fraction,
      and the common metrics (mean_value, accuracy, entropy, num_tokens, nll_per_token).
    """
    _check_inputs(logits, targets, weights, segment_ids)
    _check_range("lam", lam, 0.0, float("inf"))
    _check_range("gamma", gamma, 0.0, 1.0)
    _check_normalizing_factor(loss_normalizing_factor)

    terms, rewards, td_mask = _td_pieces(
        logits,
        targets,
        weights,
        gamma=gamma,
        eos_id=eos_id,
        segment_ids=segment_ids,
        valid_vocab_size=valid_vocab_size,
    )
    token_weights, normalizer = _normalized_weights(weights, segment_ids, loss_normalizing_factor)
    chi2, td_metrics = _chi2_statistics(rewards, td_mask, weights, token_weights, normalizer)
    mle_term = _safe_divide(jnp.sum(token_weights * -terms["log_prob"]), normalizer)
    td_term = lam * chi2
    loss = mle_term + td_term
    metrics = {"loss": loss, "mle_term": mle_term, "td_term": td_term, **td_metrics}
    metrics.update(_common_metrics(terms, weights))
    return loss, metrics


def td_regularizer_loss(
    logits: Array,
    targets: Array,
    weights: Array,
    *,
    lam: float,
    gamma: float = 1.0,
    eos_id: int = 1,
    segment_ids: Array | None = None,
    valid_vocab_size: int | None = None,
    loss_normalizing_factor: Any = None,
) -> tuple[Array, Metrics]:
    """The TD regulariser alone, λ·Σ_t w_t·m_t·r_t² / Z: online IQLearn's χ² term on policy samples.

    Same r_t, m_t (terminal / truncation / segment rules) and Z as `iqlearn_loss`; no MLE term.

    Returns:
      (loss, metrics): loss, td_error_sq (mean r² on TD-masked tokens), mean_reward, td_fraction, num_tokens,
      mean_value.
    """
    _check_inputs(logits, targets, weights, segment_ids)
    _check_range("lam", lam, 0.0, float("inf"))
    _check_range("gamma", gamma, 0.0, 1.0)
    _check_normalizing_factor(loss_normalizing_factor)
    terms, rewards, td_mask = _td_pieces(
        logits,
        targets,
        weights,
        gamma=gamma,
        eos_id=eos_id,
        segment_ids=segment_ids,
        valid_vocab_size=valid_vocab_size,
    )
    token_weights, normalizer = _normalized_weights(weights, segment_ids, loss_normalizing_factor)
    chi2, td_metrics = _chi2_statistics(rewards, td_mask, weights, token_weights, normalizer)
    loss = lam * chi2
    metrics = {
        "loss": loss,
        **td_metrics,
        "mean_value": _weighted_mean(terms["value"], weights.astype(jnp.float32)),
    }
    return loss, metrics


def online_iqlearn_loss(
    expert_logits: Array,
    expert_targets: Array,
    expert_weights: Array,
    policy_logits: Array,
    policy_targets: Array,
    policy_weights: Array,
    *,
    lam: float,
    alpha: float,
    gamma: float = 1.0,
    eos_id: int = 1,
    expert_segment_ids: Array | None = None,
    policy_segment_ids: Array | None = None,
    loss_normalizing_factor: Any = None,
) -> tuple[Array, Metrics]:
    """Online IQLearn: the offline objective with the χ² regulariser taken on expert *and* policy samples.

    Derivation (paper Eqs. 15–17, Appendix A.1.2). IQ-Learn maximises over Q
        J(Q) = E_{ρ_E}[r] − (1 − γ)·E_{s_0}[V(s_0)] − ψ(r),     r = Q(s, a) − γ·V(s'),
    and the initial-state term telescopes, for the occupancy ρ of *any* policy started from the same prompts, into
    E_ρ[V(s) − γV(s')]. Taking ρ = ρ_E turns the first two terms into E_{ρ_E}[log π(a|s)], because
    log π(a|s) = Q(s, a) − V(s) = r − (V(s) − γV(s')). The χ² regulariser ψ(r) = c·r² is estimated on the mixture
    ρ_mix = (1 − α)·ρ_E + α·ρ_π of expert and policy (online) samples; estimated on the expert data alone the
    online method diverges. With the expert part weighted as in the offline loss (λ per unit of expert mass, i.e.
    c = λ/(1 − α)), the loss to minimise is

        L = E_{ρ_E}[−log π(a|s)] + λ/(1 − α) · ( (1 − α)·E_{ρ_E}[m·r²] + α·E_{ρ_π}[m·r²] )
          = offline IQLearn(expert) + λ·α/(1 − α) · E_{ρ_π}[m·r²],

    which equals `iqlearn_loss` on the expert batch exactly at α = 0. Each expectation is the weighted sum over its
    own batch divided by its own normalising factor (`loss_normalizing_factor` applied to each batch separately).
    r and the TD mask m on policy samples follow the same terminal/truncation/segment rules as on expert samples.

    Args:
      expert_logits, expert_targets, expert_weights: the demonstration batch ([b, l, v], [b, l], [b, l]).
      policy_logits, policy_targets, policy_weights: the model's own samples ([b', l', v], [b', l'], [b', l']).
      lam: ≥ 0; alpha: policy mix-in in [0, 1); gamma in [0, 1]; eos_id; *_segment_ids: optional packing ids.

    Returns:
      (loss, metrics): metrics of the expert batch as `iqlearn_loss` (prefixed by nothing) plus
      policy_td_term, policy_td_error_sq, policy_mean_reward, policy_num_tokens and loss.
    """
    _check_range("alpha", alpha, 0.0, 1.0, high_inclusive=False)
    _check_range("lam", lam, 0.0, float("inf"))
    _check_range("gamma", gamma, 0.0, 1.0)
    _check_inputs(policy_logits, policy_targets, policy_weights, policy_segment_ids, "policy_")
    if policy_logits.shape[-1] != expert_logits.shape[-1]:
        raise ValueError(
            f"policy_logits vocab size {policy_logits.shape[-1]} must equal expert_logits vocab size "
            f"{expert_logits.shape[-1]}"
        )
    expert_loss, metrics = iqlearn_loss(
        expert_logits,
        expert_targets,
        expert_weights,
        lam=lam,
        gamma=gamma,
        eos_id=eos_id,
        segment_ids=expert_segment_ids,
        loss_normalizing_factor=loss_normalizing_factor,
    )
    _, rewards, td_mask = _td_pieces(
        policy_logits,
        policy_targets,
        policy_weights,
        gamma=gamma,
        eos_id=eos_id,
        segment_ids=policy_segment_ids,
        valid_vocab_size=None,
    )
    token_weights, normalizer = _normalized_weights(
        policy_weights, policy_segment_ids, loss_normalizing_factor
    )
    policy_chi2, policy = _chi2_statistics(
        rewards, td_mask, policy_weights, token_weights, normalizer
    )
    policy_td_term = (lam * alpha / (1.0 - alpha)) * policy_chi2
    loss = expert_loss + policy_td_term
    metrics = dict(metrics)
    metrics.update(
        {
            "loss": loss,
            "policy_td_term": policy_td_term,
            **{f"policy_{k}": policy[k] for k in ("td_error_sq", "mean_reward", "num_tokens")},
        }
    )
    return loss, metrics
