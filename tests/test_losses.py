"""iqlearn_jax.losses against the independent per-token NumPy loop in tests/loss_reference.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from loss_reference import iqlearn_reference, mle_reference

from iqlearn_jax import losses

EOS = 1
FACTORS = [None, "NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE", 7.5]


def make_batch(seed: int = 0, vocab: int = 11, scale: float = 3.0):
    """Five rows covering the design's edge cases; returns logits [5, 12, vocab], targets, weights, segment_ids.

    row 0: one sequence ending in EOS, then padding.
    row 1: truncated: every position weighted, no EOS.
    row 2: three packed segments: [.. EOS], [.. EOS], [..] truncated by padding; distinct segment ids.
    row 3: decoder-only style: prompt positions with weight 0, then a response ending in EOS.
    row 4: two packed segments where the first is truncated right at the boundary (no EOS).
    """
    rng = np.random.default_rng(seed)
    length = 12
    targets = rng.integers(2, vocab, size=(5, length))
    weights = np.zeros((5, length), np.float32)
    segments = np.zeros((5, length), np.int32)

    targets[0, 5] = EOS
    targets[0, 6:] = 0
    weights[0, :6] = 1
    segments[0, :6] = 1

    weights[1, :] = 1
    segments[1, :] = 1

    targets[2, 2] = EOS
    targets[2, 6] = EOS
    targets[2, 9:] = 0
    weights[2, :9] = 1
    segments[2, :3], segments[2, 3:7], segments[2, 7:9] = 1, 2, 3

    targets[3, 9] = EOS
    targets[3, 10:] = 0
    weights[3, 3:10] = 1
    segments[3, :10] = 1

    targets[4, 10:] = 0
    weights[4, :10] = 1
    segments[4, :4], segments[4, 4:10] = 1, 2
    targets[4, 9] = EOS

    logits = rng.normal(size=(5, length, vocab)) * scale
    return logits.astype(np.float32), targets.astype(np.int32), weights, segments


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("use_segments", [False, True])
def test_iqlearn_matches_numpy_loop(factor, use_segments):
    logits, targets, weights, segments = make_batch(seed=1)
    segment_ids = segments if use_segments else None
    worst = 0.0
    for lam in (0.0, 0.3, 2.0):
        for gamma in (1.0, 0.9, 0.0):
            loss, metrics = losses.iqlearn_loss(
                jnp.asarray(logits),
                jnp.asarray(targets),
                jnp.asarray(weights),
                lam=lam,
                gamma=gamma,
                eos_id=EOS,
                segment_ids=None if segment_ids is None else jnp.asarray(segment_ids),
                loss_normalizing_factor=factor,
            )
            ref = iqlearn_reference(
                logits,
                targets,
                weights,
                lam=lam,
                gamma=gamma,
                segment_ids=segment_ids,
                factor=factor,
            )
            for name in ("mle_term", "td_term", "mean_reward", "mean_value", "accuracy", "entropy"):
                np.testing.assert_allclose(
                    metrics[name], ref[name], rtol=2e-5, atol=2e-5, err_msg=name
                )
            np.testing.assert_allclose(loss, ref["loss"], rtol=2e-5, atol=2e-5)
            assert metrics["num_tokens"] == ref["num_tokens"]
            worst = max(worst, abs(float(loss) - ref["loss"]) / max(1.0, abs(ref["loss"])))
    print(f"largest relative loss difference vs NumPy loop: {worst:.2e}")


def test_segment_ids_change_the_td_targets():
    """Without segment ids the packed row 4 would take its next value across the segment boundary."""
    logits, targets, weights, segments = make_batch(seed=2)
    _, with_segments = losses.implicit_rewards(
        jnp.asarray(logits),
        jnp.asarray(targets),
        jnp.asarray(weights),
        segment_ids=jnp.asarray(segments),
    )
    _, without_segments = losses.implicit_rewards(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)
    )
    assert with_segments[4, 3] == 0.0 and without_segments[4, 3] == 1.0


def test_implicit_rewards_match_numpy_loop():
    logits, targets, weights, segments = make_batch(seed=3)
    for gamma in (1.0, 0.5):
        rewards, td_mask = losses.implicit_rewards(
            jnp.asarray(logits),
            jnp.asarray(targets),
            jnp.asarray(weights),
            gamma=gamma,
            eos_id=EOS,
            segment_ids=jnp.asarray(segments),
        )
        ref = iqlearn_reference(
            logits, targets, weights, lam=1.0, gamma=gamma, segment_ids=segments
        )
        np.testing.assert_allclose(rewards, ref["rewards"], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(td_mask, ref["td_mask"])
    # The edge cases by hand: EOS positions are terminal, truncated ends masked, padding masked.
    assert td_mask[0, 5] == 1 and td_mask[0, 6] == 0
    assert td_mask[1, 11] == 0 and td_mask[1, 10] == 1
    assert td_mask[2, 8] == 0 and td_mask[2, 2] == 1 and td_mask[2, 6] == 1
    assert td_mask[3, 2] == 0 and td_mask[3, 9] == 1


def test_telescoping_sum_of_rewards_at_gamma_one():
    """DESIGN §1: with γ = 1 the rewards of a complete sequence sum to log π(y|x) + V(s_0)."""
    logits, targets, weights, segments = make_batch(seed=4)
    rewards, _ = losses.implicit_rewards(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)
    )
    row = np.asarray(logits[0, :6], np.float64)
    values = np.log(np.exp(row).sum(-1))
    log_likelihood = sum(row[t, targets[0, t]] - values[t] for t in range(6))
    np.testing.assert_allclose(float(jnp.sum(rewards[0])), log_likelihood + values[0], rtol=1e-5)


@pytest.mark.parametrize("factor", ["NUM_REAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE", None])
def test_lambda_zero_equals_mle_in_value_and_gradient(factor):
    logits, targets, weights, segments = make_batch(seed=5)
    targets, weights = jnp.asarray(targets), jnp.asarray(weights)

    def iq(x):
        return losses.iqlearn_loss(
            x, targets, weights, lam=0.0, segment_ids=None, loss_normalizing_factor=factor
        )[0]

    def mle(x):
        return losses.mle_loss(x, targets, weights, loss_normalizing_factor=factor)[0]

    x = jnp.asarray(logits)
    np.testing.assert_allclose(iq(x), mle(x), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(iq)(x), jax.grad(mle)(x), rtol=1e-6, atol=1e-8)


def test_gradient_matches_central_finite_differences_in_float64():
    jax.config.update("jax_enable_x64", True)
    try:
        logits, targets, weights, segments = make_batch(seed=6, vocab=5, scale=1.0)
        logits = jnp.asarray(logits[:, :8], jnp.float64)
        args = dict(
            lam=0.7,
            gamma=0.9,
            segment_ids=jnp.asarray(segments[:, :8]),
            loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
        )
        targets8, weights8 = jnp.asarray(targets[:, :8]), jnp.asarray(weights[:, :8], jnp.float64)

        def f(x):
            return losses.iqlearn_loss(x, targets8, weights8, **args)[0]

        analytic = np.asarray(jax.grad(f)(logits))
        rng = np.random.default_rng(0)
        eps = 1e-6
        worst = 0.0
        flat = np.asarray(logits).ravel()
        for index in rng.choice(flat.size, size=60, replace=False):
            step = np.zeros_like(flat)
            step[index] = eps
            plus = f(jnp.asarray((flat + step).reshape(logits.shape)))
            minus = f(jnp.asarray((flat - step).reshape(logits.shape)))
            numeric = (float(plus) - float(minus)) / (2 * eps)
            worst = max(worst, abs(numeric - analytic.ravel()[index]))
        assert worst < 1e-7, worst
        # The gradient reaches the next position's logits through V(s_{t+1}).
        assert np.abs(analytic[1, 1:]).sum() > 0
    finally:
        jax.config.update("jax_enable_x64", False)


def test_extreme_and_bfloat16_logits_are_finite():
    logits, targets, weights, segments = make_batch(seed=7)
    signs = np.where(np.random.default_rng(0).random(logits.shape) < 0.5, -1.0, 1.0)
    extreme = jnp.asarray(signs * 1e4, jnp.float32)
    for x in (extreme, jnp.asarray(logits, jnp.bfloat16), extreme.astype(jnp.bfloat16)):
        loss, metrics = losses.iqlearn_loss(
            x,
            jnp.asarray(targets),
            jnp.asarray(weights),
            lam=0.5,
            segment_ids=jnp.asarray(segments),
        )
        grad = jax.grad(
            lambda y: losses.iqlearn_loss(y, jnp.asarray(targets), jnp.asarray(weights), lam=0.5)[0]
        )(x)
        assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in metrics.values())
        assert np.all(np.isfinite(np.asarray(grad, np.float32)))
    # bfloat16 logits are reduced in float32: same result as the float32 copy of the same values.
    rounded = jnp.asarray(logits, jnp.bfloat16)
    a = losses.iqlearn_loss(rounded, jnp.asarray(targets), jnp.asarray(weights), lam=0.5)[0]
    b = losses.iqlearn_loss(
        rounded.astype(jnp.float32), jnp.asarray(targets), jnp.asarray(weights), lam=0.5
    )[0]
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_valid_vocab_size_masks_padded_rows_out_of_the_value():
    logits, targets, weights, segments = make_batch(seed=8, vocab=11)
    targets = np.minimum(targets, 7)
    padded = logits.copy()
    padded[..., 8:] = 50.0  # padded rows that would dominate V if not masked
    kwargs = dict(
        lam=0.4, segment_ids=jnp.asarray(segments), loss_normalizing_factor="NUM_REAL_TARGET_TOKENS"
    )
    masked, metrics = losses.iqlearn_loss(
        jnp.asarray(padded),
        jnp.asarray(targets),
        jnp.asarray(weights),
        valid_vocab_size=8,
        **kwargs,
    )
    ref = iqlearn_reference(
        padded,
        targets,
        weights,
        lam=0.4,
        segment_ids=segments,
        factor="NUM_REAL_TARGET_TOKENS",
        valid_vocab_size=8,
    )
    np.testing.assert_allclose(masked, ref["loss"], rtol=2e-5)
    np.testing.assert_allclose(metrics["mean_value"], ref["mean_value"], rtol=2e-5)
    grad = jax.grad(
        lambda x: losses.iqlearn_loss(
            x, jnp.asarray(targets), jnp.asarray(weights), valid_vocab_size=8, **kwargs
        )[0]
    )(jnp.asarray(padded))
    assert float(jnp.abs(grad[..., 8:]).max()) == 0.0


@pytest.mark.parametrize("factor", FACTORS[:4])
def test_mle_and_entropy_losses_match_numpy(factor):
    logits, targets, weights, _ = make_batch(seed=9)
    x, y, w = jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)
    for smoothing, z in ((0.0, 0.0), (0.1, 0.0), (0.0, 1e-3), (0.2, 1e-2)):
        loss, _ = losses.mle_loss(
            x, y, w, label_smoothing=smoothing, z_loss=z, loss_normalizing_factor=factor
        )
        ref = mle_reference(
            logits, targets, weights, label_smoothing=smoothing, z_loss=z, factor=factor
        )
        np.testing.assert_allclose(loss, ref, rtol=2e-5)
    for beta in (0.0, 0.05, 1.0):
        loss, metrics = losses.entropy_regularized_loss(
            x, y, w, beta=beta, loss_normalizing_factor=factor
        )
        np.testing.assert_allclose(
            loss, mle_reference(logits, targets, weights, beta=beta, factor=factor), rtol=2e-5
        )


def test_online_loss_reduces_to_offline_at_alpha_zero_and_matches_reference():
    expert = make_batch(seed=10)
    policy = make_batch(seed=11)
    e_logits, e_targets, e_weights, e_segments = (jnp.asarray(a) for a in expert)
    p_logits, p_targets, p_weights, p_segments = (jnp.asarray(a) for a in policy)
    common = dict(lam=0.6, gamma=0.95, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
    offline, _ = losses.iqlearn_loss(
        e_logits, e_targets, e_weights, segment_ids=e_segments, **common
    )
    online0, _ = losses.online_iqlearn_loss(
        e_logits,
        e_targets,
        e_weights,
        p_logits,
        p_targets,
        p_weights,
        alpha=0.0,
        expert_segment_ids=e_segments,
        policy_segment_ids=p_segments,
        **common,
    )
    assert float(online0) == float(offline)
    grads = [
        jax.grad(
            lambda x, a=alpha: losses.online_iqlearn_loss(
                e_logits, e_targets, e_weights, x, p_targets, p_weights, alpha=a, **common
            )[0]
        )(p_logits)
        for alpha in (0.0, 0.5)
    ]
    assert float(jnp.abs(grads[0]).max()) == 0.0 and float(jnp.abs(grads[1]).max()) > 0.0
    alpha = 0.25
    online, metrics = losses.online_iqlearn_loss(
        e_logits,
        e_targets,
        e_weights,
        p_logits,
        p_targets,
        p_weights,
        alpha=alpha,
        expert_segment_ids=e_segments,
        policy_segment_ids=p_segments,
        **common,
    )
    e_ref = iqlearn_reference(
        *expert[:3], lam=0.6, gamma=0.95, segment_ids=expert[3], factor="NUM_REAL_TARGET_TOKENS"
    )
    p_ref = iqlearn_reference(
        *policy[:3], lam=0.6, gamma=0.95, segment_ids=policy[3], factor="NUM_REAL_TARGET_TOKENS"
    )
    expected = e_ref["mle_term"] + 0.6 / (1 - alpha) * (
        (1 - alpha) * e_ref["policy_chi2"] + alpha * p_ref["policy_chi2"]
    )
    np.testing.assert_allclose(online, expected, rtol=2e-5)
    np.testing.assert_allclose(metrics["policy_mean_reward"], p_ref["mean_reward"], rtol=2e-5)


def test_jit_and_vmap_compatible():
    logits, targets, weights, segments = make_batch(seed=12)
    args = (jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    seg = jnp.asarray(segments)

    def f(x, y, w, s):
        return losses.iqlearn_loss(
            x, y, w, lam=0.3, segment_ids=s, loss_normalizing_factor="AVERAGE_PER_SEQUENCE"
        )

    eager, _ = f(*args, seg)
    jitted, _ = jax.jit(f)(*args, seg)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)
    # vmap over a leading axis of two independent batches.
    stacked = [jnp.stack([a, a[::-1]]) for a in (*args, seg)]
    per_batch, _ = jax.vmap(f)(*stacked)
    np.testing.assert_allclose(per_batch[0], eager, rtol=1e-6)
    # A traced λ (the warm-up schedule) works under jit.
    traced = jax.jit(lambda lam: losses.iqlearn_loss(*args, lam=lam)[0])(jnp.float32(0.3))
    np.testing.assert_allclose(traced, losses.iqlearn_loss(*args, lam=0.3)[0], rtol=1e-6)


def test_bad_arguments_raise_value_errors_naming_them():
    logits, targets, weights, segments = make_batch(seed=13)
    x, y, w = jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)
    cases = [
        (lambda: losses.iqlearn_loss(x, y, w, lam=-0.1), "lam"),
        (lambda: losses.iqlearn_loss(x, y, w, lam=0.1, gamma=1.5), "gamma"),
        (lambda: losses.iqlearn_loss(x, y, w, lam=0.1, gamma=-0.1), "gamma"),
        (lambda: losses.online_iqlearn_loss(x, y, w, x, y, w, lam=0.1, alpha=1.0), "alpha"),
        (lambda: losses.online_iqlearn_loss(x, y, w, x, y, w, lam=0.1, alpha=-0.2), "alpha"),
        (lambda: losses.entropy_regularized_loss(x, y, w, beta=-1.0), "beta"),
        (
            lambda: losses.mle_loss(x, y, w, loss_normalizing_factor="NUM_TOKENS"),
            "loss_normalizing_factor",
        ),
        (
            lambda: losses.iqlearn_loss(x, y, w, lam=0.1, loss_normalizing_factor="per_token"),
            "loss_normalizing_factor",
        ),
        (lambda: losses.iqlearn_loss(x, y[:, :5], w, lam=0.1), "targets"),
        (lambda: losses.iqlearn_loss(x, y, w[:3], lam=0.1), "weights"),
        (lambda: losses.iqlearn_loss(x, y, w, lam=0.1, segment_ids=y[:, :3]), "segment_ids"),
        (lambda: losses.mle_loss(y[..., None], y, w), "logits"),
        (lambda: losses.iqlearn_loss(x.astype(jnp.int32), y, w, lam=0.1), "floating"),
        (lambda: losses.iqlearn_loss(x, y, w, lam=0.1, valid_vocab_size=99), "valid_vocab_size"),
        (lambda: losses.mle_loss(x, y, w, label_smoothing=1.0), "label_smoothing"),
        (lambda: losses.mle_loss(x, y, w, z_loss=-1.0), "z_loss"),
        (lambda: losses.implicit_rewards(x, y, w, gamma=2.0), "gamma"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()
