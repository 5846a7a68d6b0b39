"""Online IQLearn (paper Appendix A.1.2, Eqs. 15–17): offline IQLearn on the expert batch plus the χ² TD
regulariser on the policy's own samples, drawn inside the train step.

    loss = IQLearn(expert batch)                                   # exactly the offline objective, same dropout key
         + [sampling step] · λ(step) · α/(1 − α) · Σ_t w_t m_t r_t² / Z   on the policy batch

(derivation in `losses.online_iqlearn_loss`; λ(step) includes the offline λ warm-up). The policy batch comes from
`sampling.sample_policy_batch` on the current parameters with its own RNG stream; the expert forward pass is the
offline one (a separate forward for the policy batch, never a concatenated batch), and the policy term enters
through `jnp.where`, so at α = 0 the loss and every update are bit for bit those of offline IQLearn whatever the
sampler drew. The policy term goes through the model's `loss_fn` with the registered "iqlearn_td" objective, so
every loss path of the model (e.g. vocabulary chunking) applies to it too.

Params keep the offline layout (one plain model params tree): checkpoints, evaluation and initial-checkpoint import
are those of offline runs.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax

from iqlearn_jax import loss_checks, losses
from iqlearn_jax.algorithms.base import (
    POLICY_DROPOUT_STREAM,
    SAMPLING_STREAM,
    Algorithm,
    register_algorithm,
)
from iqlearn_jax.algorithms.sampling import Sampler, sample_policy_batch
from iqlearn_jax.objectives import Objective, register_objective


@register_objective("iqlearn_td")
def _iqlearn_td(objective: Objective, logits, targets, weights, segment_ids, step):
    """λ(step)·χ² TD term only (losses.td_regularizer_loss): online IQLearn's term on policy samples."""
    lam = objective.lam_at(step)
    return losses.td_regularizer_loss(
        logits,
        targets,
        weights,
        lam=lam,
        gamma=objective.gamma,
        eos_id=objective.eos_id,
        segment_ids=segment_ids,
        valid_vocab_size=objective.valid_vocab_size,
        loss_normalizing_factor=objective.loss_normalizing_factor,
    )


def with_objective(model: Any, objective: Objective) -> Any:
    """A shallow copy of `model` whose loss_fn applies `objective` (same network, vocabularies, decoding)."""
    clone = copy.copy(model)
    clone.objective = objective
    return clone


def apply_gradients(
    optimizer: optax.GradientTransformation, params: Any, opt_state: Any, grads: Any
) -> tuple[Any, Any, jax.Array]:
    """(new params, new optimizer state, float32 global gradient norm)."""
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    return (
        optax.apply_updates(params, updates),
        new_opt_state,
        optax.global_norm(grads).astype(jnp.float32),
    )


def _f32(metrics: Mapping[str, Any]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v, jnp.float32) for k, v in dict(metrics).items()}


def sample_stats(prefix: str, lengths: jax.Array, ended: jax.Array) -> dict[str, jax.Array]:
    """Mean sample length (tokens, EOS included) and fraction ending in EOS, as `<prefix>sample_length` etc."""
    return {
        f"{prefix}sample_length": jnp.mean(lengths.astype(jnp.float32)),
        f"{prefix}eos_fraction": jnp.mean(ended.astype(jnp.float32)),
    }


def maybe_sample(
    model: Any,
    params: Any,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    sampler: Sampler,
    do_sample: jax.Array | bool,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """`sample_policy_batch` on sampling steps; on the others an all-padding batch of the same shapes (lax.cond)."""

    def draw(_):
        return sample_policy_batch(model, params, batch, rng, sampler)

    if sampler.every_k_steps == 1:
        return draw(None)
    shapes = jax.eval_shape(draw, None)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.lax.cond(do_sample, draw, lambda _: zeros, None)


@gin.configurable(module="iqlearn_jax.algorithms")
@register_algorithm("online_iqlearn")
class OnlineIQLearn(Algorithm):
    """Online IQLearn: the model's offline "iqlearn" objective on the data plus α-weighted χ² on policy samples.

    Args:
      alpha: policy mix-in α in [0, 1) (paper: 0.1 for the reward-correlation study); 0 = offline IQLearn exactly.
      sampler: how samples are drawn (temperature, top-k/p, max length, every k steps); default `Sampler()`.
    """

    def __init__(self, alpha: float = 0.1, sampler: Sampler | None = None):
        losses_range_check("OnlineIQLearn.alpha", alpha, 0.0, 1.0, high_inclusive=False)
        self.alpha = float(alpha)
        self.sampler = sampler if sampler is not None else Sampler()

    def bind(self, model, task_feature_lengths, *, num_microbatches=1, pack=False):
        objective = model.objective
        if objective.name != "iqlearn":
            raise ValueError(
                f"OnlineIQLearn needs the model objective name='iqlearn' (λ, γ and warm-up of the expert "
                f"term), got name={objective.name!r}"
            )
        check_online_run(type(self).__name__, num_microbatches, pack)
        bound = copy.copy(self)
        bound.sampler = self.sampler.resolve(task_feature_lengths)
        return bound

    def policy_objective(self, model: Any) -> Objective:
        objective = model.objective
        return dataclasses.replace(objective, name="iqlearn_td")

    def make_step(
        self,
        model: Any,
        optimizer: optax.GradientTransformation,
        num_microbatches: int = 1,
        learning_rate_fn: Callable[[Any], Any] | None = None,
        microbatch_sharding: Any = None,
    ) -> Callable:
        del microbatch_sharding
        check_online_run(type(self).__name__, num_microbatches, False)
        sampler = self.sampler
        if sampler.max_length is None:
            raise ValueError("OnlineIQLearn.make_step needs a bound algorithm (call .bind first)")
        policy_model = with_objective(model, self.policy_objective(model))
        scale = self.alpha / (1.0 - self.alpha)
        alpha_on = self.alpha > 0.0

        def loss_fn(params, batch, policy_batch, active, step_rng, step):
            loss, metrics = model.loss_fn(params, batch, step_rng, step=step)
            policy_rng = jax.random.fold_in(step_rng, POLICY_DROPOUT_STREAM)
            p_loss, p_metrics = policy_model.loss_fn(params, policy_batch, policy_rng, step=step)
            p_term = jnp.where(active, scale * p_loss, jnp.zeros_like(p_loss))
            total = loss + p_term
            out = _f32(metrics)
            out.update({f"policy_{k}": v for k, v in _f32(p_metrics).items() if k != "loss"})
            out["policy_td_term"] = jnp.asarray(p_term, jnp.float32)
            out["expert_loss"] = jnp.asarray(loss, jnp.float32)
            return total, out

        def update(state, batch, policy_batch, info, do_sample):
            """The update alone, on a given policy batch (bench/algorithm_time.py times it separately)."""
            batch = dict(batch)
            step_rng = jax.random.fold_in(state.rng, state.step)  # = the offline dropout key
            active = do_sample & alpha_on
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, batch, policy_batch, active, step_rng, state.step
            )
            new_params, new_opt_state, grad_norm = apply_gradients(
                optimizer, state.params, state.opt_state, grads
            )
            metrics["loss"] = jnp.asarray(loss, jnp.float32)
            metrics["grad_norm"] = grad_norm
            metrics["sampled"] = jnp.asarray(do_sample, jnp.float32)
            metrics.update(sample_stats("policy_", info["lengths"], info["ended"]))
            weights = batch.get("decoder_loss_weights", batch["decoder_target_tokens"] > 0)
            metrics["expert_sample_length"] = jnp.mean(
                jnp.sum(weights > 0, axis=1).astype(jnp.float32)
            )
            metrics["expert_mean_reward"] = metrics["mean_reward"]
            metrics["expert_td_error_sq"] = metrics["td_error_sq"]
            if learning_rate_fn is not None:
                metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
            new_state = state.replace(
                step=state.step + 1, params=new_params, opt_state=new_opt_state
            )
            return new_state, metrics

        def step_fn(state, batch):
            step_rng = jax.random.fold_in(state.rng, state.step)
            do_sample = (state.step % sampler.every_k_steps) == 0
            policy_batch, info = maybe_sample(
                model, state.params, batch, jax.random.fold_in(step_rng, SAMPLING_STREAM), sampler,
                do_sample,
            )  # fmt: skip
            return update(state, batch, policy_batch, info, do_sample)

        step_fn.update = update
        return step_fn


def losses_range_check(
    name: str, value: Any, low: float, high: float, *, high_inclusive: bool = True
) -> None:
    """ConfigError naming `name` unless low <= value <= high (or < high)."""
    from iqlearn_jax.gin_utils import ConfigError

    try:
        loss_checks.check_range(name, value, low, high, high_inclusive=high_inclusive)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def check_online_run(algorithm: str, num_microbatches: int, pack: bool) -> None:
    """Online algorithms sample one completion per example of the whole batch: no microbatches, no packing."""
    if num_microbatches != 1:
        raise ValueError(
            f"{algorithm} does not support num_microbatches={num_microbatches} (use 1: policy samples are "
            "drawn for the whole batch)"
        )
    if pack:
        raise ValueError(f"{algorithm} does not support pack=True (samples are per example)")
