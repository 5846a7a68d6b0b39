"""GAIL for language models as the paper's Appendix A.1.3 describes, in ONE jitted step with four networks.

Networks (each the run's model architecture, all initialised from the initial checkpoint):
  policy         trained by advantage actor-critic (A2C) on its own samples, with normalised advantages, a KL
                 penalty to the reference whose weight is annealed linearly from `kl_initial_weight` to
                 `kl_weight` over `kl_anneal_steps`, and optionally `mle_weight` × MLE on the expert batch;
  value          V(s_t) = its logit of `value_token_id` at t, regressed on the discounted returns;
  discriminator  D(s_t, a_t) = its logit of a_t at t, cross-entropy expert tokens (1) vs policy tokens (0);
  reference      the initial policy, frozen (in `params`, no optimizer state), for the KL.

One step: sample the batch's prompts from the current policy (own RNG stream) → rewards r_t = softplus(D) from
the current discriminator → returns, advantages (value without gradient) → update policy and value → update the
discriminator on the same expert batch and samples ("after every step of policy optimisation"). Each trainable
network has its own optimizer state; by default all use the run's optimizer (gail.gin: Adam, constant learning
rate with linear warm-up, Table 4). The pure math is in `gail_losses.py`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax

from iqlearn_jax.algorithms import gail_losses as gl
from iqlearn_jax.algorithms.base import (
    DISCRIMINATOR_DROPOUT_STREAM,
    POLICY_DROPOUT_STREAM,
    SAMPLING_STREAM,
    VALUE_DROPOUT_STREAM,
    Algorithm,
    register_algorithm,
)
from iqlearn_jax.algorithms.online_iqlearn import (
    apply_gradients,
    check_online_run,
    losses_range_check,
    maybe_sample,
    sample_stats,
)
from iqlearn_jax.algorithms.sampling import Sampler
from iqlearn_jax.gin_utils import ConfigError


@gin.configurable(module="iqlearn_jax.algorithms")
@register_algorithm("gail")
class GAIL(Algorithm):
    """GAIL (paper Appendix A.1.3). Args (all checked, ConfigError naming the value):

    kl_weight: final KL-to-reference weight ≥ 0 (paper: 1e-3).
    kl_initial_weight: KL weight at step 0 ≥ 0, annealed linearly to `kl_weight` (interpretation; default 1.0).
    kl_anneal_steps: steps of the annealing ≥ 0 (paper: 10,000).
    mle_weight: weight ≥ 0 of MLE on the expert batch in the policy loss (paper: needed on XSUM; 0 = off).
    gamma: discount in [0, 1] of the returns.
    value_token_id: vocabulary id whose logit is the value head (default 0, PAD).
    sampler: `Sampler` (temperature, top-k/p, max length, every k steps).
    require_initial_checkpoint: refuse to start without `train.initial_checkpoint_path` (the paper starts
      from an MLE checkpoint; False: all networks start from the same random init).
    """

    networks = ("policy", "value", "discriminator", "reference")
    trainable = ("policy", "value", "discriminator")

    def __init__(
        self,
        kl_weight: float = 1e-3,
        kl_initial_weight: float = 1.0,
        kl_anneal_steps: int = 10_000,
        mle_weight: float = 0.0,
        gamma: float = 1.0,
        value_token_id: int = 0,
        sampler: Sampler | None = None,
        require_initial_checkpoint: bool = True,
    ):
        inf = float("inf")
        losses_range_check("GAIL.kl_weight", kl_weight, 0.0, inf)
        losses_range_check("GAIL.kl_initial_weight", kl_initial_weight, 0.0, inf)
        losses_range_check("GAIL.mle_weight", mle_weight, 0.0, inf)
        losses_range_check("GAIL.gamma", gamma, 0.0, 1.0)
        for name, value in (
            ("kl_anneal_steps", kl_anneal_steps),
            ("value_token_id", value_token_id),
        ):
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"GAIL.{name} must be a non-negative integer, got {value!r}")
        self.kl_weight = float(kl_weight)
        self.kl_initial_weight = float(kl_initial_weight)
        self.kl_anneal_steps = int(kl_anneal_steps)
        self.mle_weight = float(mle_weight)
        self.gamma = float(gamma)
        self.value_token_id = int(value_token_id)
        self.sampler = sampler if sampler is not None else Sampler()
        self.requires_initial_checkpoint = bool(require_initial_checkpoint)

    def bind(self, model, task_feature_lengths, *, num_microbatches=1, pack=False):
        check_online_run("GAIL", num_microbatches, pack)
        vocab = getattr(getattr(model, "output_vocabulary", None), "vocab_size", None)
        if vocab is not None and self.value_token_id >= vocab:
            raise ConfigError(
                f"GAIL.value_token_id={self.value_token_id} is outside the vocabulary (size {vocab})"
            )
        bound = copy.copy(self)
        bound.sampler = self.sampler.resolve(task_feature_lengths)
        return bound

    def kl_weight_at(self, step: Any) -> jax.Array:
        return gl.annealed_weight(
            step, self.kl_initial_weight, self.kl_weight, self.kl_anneal_steps
        )

    def make_step(
        self,
        model: Any,
        optimizer: optax.GradientTransformation,
        num_microbatches: int = 1,
        learning_rate_fn: Callable[[Any], Any] | None = None,
        microbatch_sharding: Any = None,
    ) -> Callable:
        del microbatch_sharding
        check_online_run("GAIL", num_microbatches, False)
        if self.sampler.max_length is None:
            raise ValueError("GAIL.make_step needs a bound algorithm (call .bind first)")
        sampler, gamma, vid, mle_weight = (
            self.sampler,
            self.gamma,
            self.value_token_id,
            self.mle_weight,
        )
        logits_of = model._compute_logits

        def expert_weights(batch):
            if "decoder_loss_weights" in batch:
                return batch["decoder_loss_weights"]
            return (batch["decoder_target_tokens"] > 0).astype(jnp.float32)

        def policy_loss_fn(params, policy_batch, batch, advantages, ref_logits, kl_w, rng):
            tokens, w = policy_batch["decoder_target_tokens"], policy_batch["decoder_loss_weights"]
            logits = logits_of(params, policy_batch, jax.random.fold_in(rng, 0))
            pg, mean_logp = gl.policy_gradient_term(logits, tokens, advantages, w)
            kl = gl.kl_to_reference(logits, ref_logits, w)
            loss = pg + kl_w * kl
            metrics = {"pg_term": pg, "kl": kl, "policy_log_prob": mean_logp}
            if mle_weight > 0:
                expert_logits = logits_of(params, batch, jax.random.fold_in(rng, 1))
                mle = gl.mle_term(
                    expert_logits, batch["decoder_target_tokens"], expert_weights(batch)
                )
                loss = loss + mle_weight * mle
                metrics["mle_term"] = mle
            return loss, metrics

        def value_loss_fn(params, policy_batch, returns, rng):
            values = gl.token_logit(
                logits_of(params, policy_batch, rng),
                jnp.full_like(policy_batch["decoder_target_tokens"], vid),
            )
            w = policy_batch["decoder_loss_weights"]
            return gl.value_loss(values, returns, w), values

        def discriminator_loss_fn(params, policy_batch, batch, rng):
            d_expert = gl.token_logit(
                logits_of(params, batch, jax.random.fold_in(rng, 0)), batch["decoder_target_tokens"]
            )
            d_policy = gl.token_logit(
                logits_of(params, policy_batch, jax.random.fold_in(rng, 1)),
                policy_batch["decoder_target_tokens"],
            )
            loss, metrics = gl.discriminator_loss(
                d_expert, expert_weights(batch), d_policy, policy_batch["decoder_loss_weights"]
            )
            metrics["expert_mean_reward"] = gl._mean(
                jax.nn.softplus(d_expert), expert_weights(batch)
            )
            return loss, metrics

        def update(state, batch, policy_batch, info, do_sample):
            """The update alone, on a given policy batch (bench/algorithm_time.py times it separately)."""
            batch = dict(batch)
            params = state.params
            step_rng = jax.random.fold_in(state.rng, state.step)
            w = policy_batch["decoder_loss_weights"]
            frozen = jax.lax.stop_gradient
            d_policy = gl.token_logit(
                logits_of(frozen(params["discriminator"]), policy_batch, None),
                policy_batch["decoder_target_tokens"],
            )
            rewards = gl.gail_rewards(d_policy, w)
            returns = gl.discounted_returns(rewards, w, gamma)
            value_rng = jax.random.fold_in(step_rng, VALUE_DROPOUT_STREAM)
            (v_loss, values), v_grads = jax.value_and_grad(value_loss_fn, has_aux=True)(
                params["value"], policy_batch, returns, value_rng
            )
            advantages = gl.normalized_advantages(returns, values, w)
            ref_logits = frozen(logits_of(frozen(params["reference"]), policy_batch, None))
            kl_w = self.kl_weight_at(state.step)
            (p_loss, p_metrics), p_grads = jax.value_and_grad(policy_loss_fn, has_aux=True)(
                params["policy"], policy_batch, batch, advantages, ref_logits, kl_w,
                jax.random.fold_in(step_rng, POLICY_DROPOUT_STREAM),
            )  # fmt: skip
            (d_loss, d_metrics), d_grads = jax.value_and_grad(discriminator_loss_fn, has_aux=True)(
                params["discriminator"], policy_batch, batch,
                jax.random.fold_in(step_rng, DISCRIMINATOR_DROPOUT_STREAM),
            )  # fmt: skip
            active = (
                do_sample  # on non-sampling steps nothing is learned from the empty policy batch
            )
            grads = {"policy": p_grads, "value": v_grads, "discriminator": d_grads}
            new_params, new_opt, metrics = dict(params), dict(state.opt_state), {}
            for name, g in grads.items():
                g = jax.tree.map(lambda x: jnp.where(active, x, jnp.zeros_like(x)), g)
                opt = self.optimizer_for(optimizer, name)
                p_new, o_new, norm = apply_gradients(opt, params[name], state.opt_state[name], g)
                new_params[name] = jax.tree.map(
                    lambda a, b: jnp.where(active, a, b), p_new, params[name]
                )
                new_opt[name] = jax.tree.map(
                    lambda a, b: jnp.where(active, a, b), o_new, state.opt_state[name]
                )
                metrics[f"{name}_grad_norm"] = norm
                grads[name] = g
            metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in p_metrics.items()})
            metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in d_metrics.items()})
            metrics["policy_loss"] = jnp.asarray(p_loss, jnp.float32)
            metrics["value_loss"] = jnp.asarray(v_loss, jnp.float32)
            metrics["loss"] = (
                metrics["policy_loss"] + metrics["value_loss"] + metrics["discriminator_loss"]
            )
            metrics["grad_norm"] = optax.global_norm(grads).astype(jnp.float32)
            metrics["kl_weight"] = jnp.asarray(kl_w, jnp.float32)
            metrics["mean_reward"] = gl._mean(rewards, w)
            metrics["mean_return"] = gl._mean(returns, w)
            metrics["mean_value"] = gl._mean(values, w)
            metrics["sampled"] = jnp.asarray(do_sample, jnp.float32)
            metrics.update(sample_stats("policy_", info["lengths"], info["ended"]))
            ew = expert_weights(batch)
            metrics["expert_sample_length"] = jnp.mean(jnp.sum(ew > 0, axis=1).astype(jnp.float32))
            if learning_rate_fn is not None:
                metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
            new_state = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt)
            return new_state, metrics

        def step_fn(state, batch):
            step_rng = jax.random.fold_in(state.rng, state.step)
            do_sample = (state.step % sampler.every_k_steps) == 0
            policy_batch, info = maybe_sample(
                model, state.params["policy"], batch, jax.random.fold_in(step_rng, SAMPLING_STREAM),
                sampler, do_sample,
            )  # fmt: skip
            return update(state, batch, policy_batch, info, do_sample)

        step_fn.update = update
        return step_fn
