"""Pure GAIL pieces on logits (no Flax, no I/O): token-level discriminator, rewards, returns, A2C, KL, schedule.

Shapes: logits [batch, length, vocab] (any float dtype; reduced in float32); tokens, weights [batch, length];
scalars float32. "Tokens" below are the weighted positions (weight > 0); every mean is over them.

Interpretation of the paper's Appendix A.1.3 (see README "Online IQLearn and GAIL"):
  D(s_t, a_t)   the discriminator LM's logit of token a_t at position t (a token-level classifier read from the
                LM head, no new parameters); σ(D) = P(expert).
  V(s_t)        the value LM's logit of a fixed token id (`value_token_id`, default 0 = PAD, never a target) at t.
  r_t           log(1 + exp(D(s_t, a_t))) = softplus(D): positive, larger where the token looks like the expert's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _f32(x: Array) -> Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _mean(values: Array, weights: Array) -> Array:
    w = (weights > 0).astype(jnp.float32)
    total = jnp.sum(w)
    return jnp.where(total > 0, jnp.sum(values * w) / jnp.where(total > 0, total, 1.0), 0.0)


def token_logit(logits: Array, ids: Array) -> Array:
    """logits[b, t, ids[b, t]] as float32 [b, l]."""
    return jnp.take_along_axis(_f32(logits), ids[..., None].astype(jnp.int32), axis=-1)[..., 0]


def discriminator_loss(
    d_expert: Array, expert_weights: Array, d_policy: Array, policy_weights: Array
) -> tuple[Array, dict[str, Array]]:
    """Binary cross-entropy, expert tokens labelled 1 and policy tokens 0, each batch averaged over its tokens.

    loss = mean_expert softplus(−D) + mean_policy softplus(D). Accuracy: D > 0 on expert, D < 0 on policy tokens.
    """
    loss_e = _mean(jax.nn.softplus(-d_expert), expert_weights)
    loss_p = _mean(jax.nn.softplus(d_policy), policy_weights)
    acc_e = _mean((d_expert > 0).astype(jnp.float32), expert_weights)
    acc_p = _mean((d_policy < 0).astype(jnp.float32), policy_weights)
    metrics = {
        "discriminator_loss": loss_e + loss_p,
        "discriminator_accuracy": 0.5 * (acc_e + acc_p),
        "discriminator_accuracy_expert": acc_e,
        "discriminator_accuracy_policy": acc_p,
    }
    return loss_e + loss_p, metrics


def gail_rewards(d_policy: Array, weights: Array) -> Array:
    """r_t = log(1 + exp(D(s_t, a_t))) on weighted positions, 0 elsewhere; no gradient."""
    return jax.lax.stop_gradient(jax.nn.softplus(d_policy) * (weights > 0))


def discounted_returns(rewards: Array, weights: Array, gamma: float) -> Array:
    """G_t = Σ_{k ≥ t} γ^{k−t} r_k over the weighted positions of each row (the sample); 0 where weight is 0.

    A sample cut at the length limit is not bootstrapped (its tail return is taken as 0).
    """
    mask = (weights > 0).astype(jnp.float32)

    def body(carry, x):
        r, m = x
        g = (r + gamma * carry) * m
        return g, g

    _, returns = jax.lax.scan(
        body, jnp.zeros(rewards.shape[0], jnp.float32), (rewards.T, mask.T), reverse=True
    )
    return returns.T


def normalized_advantages(
    returns: Array, values: Array, weights: Array, eps: float = 1e-6
) -> Array:
    """A_t = G_t − V(s_t) (V without gradient), standardised over the batch's tokens (mean 0, std 1)."""
    adv = returns - jax.lax.stop_gradient(values)
    mean = _mean(adv, weights)
    std = jnp.sqrt(_mean(jnp.square(adv - mean), weights))
    return jax.lax.stop_gradient((adv - mean) / (std + eps)) * (weights > 0)


def log_probs(logits: Array) -> Array:
    """log-softmax in float32 [b, l, v]."""
    return jax.nn.log_softmax(_f32(logits), axis=-1)


def kl_to_reference(policy_logits: Array, reference_logits: Array, weights: Array) -> Array:
    """Mean over tokens of KL(π(·|s_t) ‖ π_ref(·|s_t)) (full distributions, nats); no gradient to the reference."""
    logp = log_probs(policy_logits)
    logq = jax.lax.stop_gradient(log_probs(reference_logits))
    kl = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
    return _mean(kl, weights)


def policy_gradient_term(
    policy_logits: Array, tokens: Array, advantages: Array, weights: Array
) -> tuple[Array, Array]:
    """(−mean_t A_t log π(a_t|s_t), mean log π(a_t|s_t)) over the policy sample's tokens."""
    logp = jnp.take_along_axis(log_probs(policy_logits), tokens[..., None].astype(jnp.int32), -1)[
        ..., 0
    ]
    return -_mean(advantages * logp, weights), _mean(logp, weights)


def value_loss(values: Array, returns: Array, weights: Array) -> Array:
    """Mean over tokens of (V(s_t) − G_t)²."""
    return _mean(jnp.square(values - jax.lax.stop_gradient(returns)), weights)


def mle_term(logits: Array, targets: Array, weights: Array) -> Array:
    """Mean over the expert's tokens of −log π(a_t|s_t)."""
    logp = jnp.take_along_axis(log_probs(logits), targets[..., None].astype(jnp.int32), -1)[..., 0]
    return -_mean(logp, weights)


def annealed_weight(step: Array | int, initial: float, final: float, anneal_steps: int) -> Array:
    """Linear from `initial` at step 0 to `final` at `anneal_steps`, constant after (the paper's KL weight)."""
    if anneal_steps <= 0:
        return jnp.float32(final)
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / anneal_steps, 0.0, 1.0)
    return jnp.float32(initial) + (jnp.float32(final) - jnp.float32(initial)) * frac
