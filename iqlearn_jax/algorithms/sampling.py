"""Policy samples inside the train step: decode completions of the batch's prompts and lay them out as a batch.

`sample_policy_batch` runs the model's KV-cache temperature sampler (decoding.temperature_sample) on the *current*
parameters (gradients stopped) and returns a batch with the same features as the expert batch, ready for
`model.loss_fn` / the objective:

  encoder-decoder  encoder_input_tokens = the expert batch's; decoder_target_tokens = the sample;
                   decoder_input_tokens = the sample shifted right (BOS 0); decoder_loss_weights = 1 on sampled
                   tokens up to and including the first EOS.
  decoder-only     decoder_target_tokens = the prompt (the prefix-LM "inputs" region of the expert batch, loss
                   weight 0) followed by the sample (loss weight 1 up to and including EOS);
                   decoder_causal_attention = the expert batch's (same prompt region).

A sample that ends in EOS is complete (the losses treat EOS as terminal: V(s') = 0). A sample that reaches the
length limit without EOS is truncated: its last token is followed by a weight-0 position, so the losses mask its
TD term (V(s') unknown), exactly as for a truncated expert target. For networks that read id 0 as padding (T5, T5X
decoder-only: `ZERO_IS_PADDING`, the default) a sampled 0 ends the sample *before* it and counts as truncated; for the
Llama family id 0 is a real token (SmolLM2's `<|endoftext|>`, Llama 3's "!") and is kept. Positions after the end are
padding (token 0, weight 0); when the expert batch marks padding by `decoder_segment_ids` (HF vocabularies), the
policy batch gets segment ids 1 on prompt and sample, 0 after, and positions 0, 1, … on them.

Shapes: all [batch, length] with the expert batch's batch size and length; lengths/ended: [batch].
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import gin
import jax
import jax.numpy as jnp

from iqlearn_jax import decoding
from iqlearn_jax.gin_utils import ConfigError

Array = jax.Array


@gin.configurable(module="iqlearn_jax.algorithms")
@dataclasses.dataclass(frozen=True)
class Sampler:
    """How policy samples are drawn inside the train step.

    Attributes:
      temperature: sampling temperature ≥ 0 (0 = greedy; the paper samples at 1.0).
      topk: keep the k most likely tokens (0 = off).
      topp: nucleus mass in (0, 1) (0 = off).
      max_length: most tokens per sample; None = the task's target length (decoder-only: the targets length too,
        and no more than the room left after the longest prompt of the batch).
      every_k_steps: sample on train steps whose index is a multiple of k (k = 1: every step). On the other steps
        the policy term is off (no sample is reused).
    """

    temperature: float = 1.0
    topk: int = 0
    topp: float = 0.0
    max_length: int | None = None
    every_k_steps: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, int | float) or not self.temperature >= 0:
            raise ConfigError(
                f"Sampler.temperature must be a number >= 0, got {self.temperature!r}"
            )
        if not isinstance(self.topk, int) or self.topk < 0:
            raise ConfigError(f"Sampler.topk must be an integer >= 0 (0 = off), got {self.topk!r}")
        if not isinstance(self.topp, int | float) or not 0.0 <= self.topp < 1.0:
            raise ConfigError(f"Sampler.topp must be in [0, 1) (0 = off), got {self.topp!r}")
        if self.max_length is not None and (
            not isinstance(self.max_length, int) or self.max_length < 1
        ):
            raise ConfigError(
                f"Sampler.max_length must be a positive integer (tokens per sample) or None, "
                f"got {self.max_length!r}"
            )
        if not isinstance(self.every_k_steps, int) or self.every_k_steps < 1:
            raise ConfigError(
                f"Sampler.every_k_steps must be an integer >= 1, got {self.every_k_steps!r}"
            )

    def resolve(self, task_feature_lengths: Mapping[str, int]) -> Sampler:
        """This sampler with max_length set (default: the task's target length); checks it fits."""
        targets = int(task_feature_lengths["targets"])
        if self.max_length is None:
            return dataclasses.replace(self, max_length=targets)
        if self.max_length > targets:
            raise ConfigError(
                f"Sampler.max_length={self.max_length} exceeds the task's target length {targets}"
            )
        return self


def _is_decoder_only(model: Any) -> bool:
    return "encoder_input_tokens" not in getattr(model, "_REQUIRED", ())


def _zero_is_padding(model: Any) -> bool:
    """Whether the model's network reads token id 0 as padding (module attribute ZERO_IS_PADDING, default True)."""
    return bool(getattr(getattr(model, "module", None), "ZERO_IS_PADDING", True))


def _sample_mask(
    sample: Array, eos_id: int, zero_is_padding: bool = True
) -> tuple[Array, Array, Array]:
    """(valid [b, l] bool, lengths [b] int32, ended [b] bool) of left-aligned samples 0-padded after their end."""
    is_eos = sample == eos_id
    eos_before = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
    valid = ~eos_before
    if zero_is_padding:
        valid &= ~(jnp.cumsum(sample == 0, axis=1) > 0)
    lengths = jnp.sum(valid, axis=1).astype(jnp.int32)
    ended = jnp.any(is_eos & valid, axis=1)
    return valid, lengths, ended


def _shift_right(targets: Array) -> Array:
    return jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def sample_policy_batch(
    model: Any, params: Any, batch: Mapping[str, Array], rng: Array, sampler: Sampler
) -> tuple[dict[str, Array], dict[str, Array]]:
    """Samples one completion per example of `batch` from `model` with `params` (no gradient).

    Returns (policy_batch, info): policy_batch as described in the module docstring; info holds `lengths` [b]
    (sampled tokens, EOS included) and `ended` [b] (the sample ended in EOS).
    """
    if sampler.max_length is None:
        raise ValueError("Sampler.max_length must be resolved (Sampler.resolve) before sampling")
    params = jax.lax.stop_gradient(params)
    decode_fn = functools.partial(
        decoding.temperature_sample,
        temperature=sampler.temperature,
        topk=sampler.topk,
        topp=sampler.topp,
        max_decode_steps=sampler.max_length,
    )
    sampling_model = model.with_decode_fn(decode_fn)
    eos_id = model.eos_id
    zero_is_padding = _zero_is_padding(model)
    if not _is_decoder_only(model):
        features = {k: batch[k] for k in ("encoder_input_tokens", "decoder_input_tokens")}
        sample, _ = sampling_model.predict_batch_with_aux(params, features, rng=rng)
        sample = jax.lax.stop_gradient(sample.astype(jnp.int32))
        valid, lengths, ended = _sample_mask(sample, eos_id, zero_is_padding)
        targets = jnp.where(valid, sample, 0)
        policy = {
            "encoder_input_tokens": batch["encoder_input_tokens"],
            "decoder_input_tokens": _shift_right(targets),
            "decoder_target_tokens": targets,
            "decoder_loss_weights": valid.astype(jnp.float32),
        }
        return policy, {"lengths": lengths, "ended": ended}

    keys = ["decoder_input_tokens"]
    if "decoder_causal_attention" in batch:
        keys.append("decoder_causal_attention")
    features = {k: batch[k] for k in keys}
    continuation, _ = sampling_model.predict_batch_with_aux(params, features, rng=rng)
    continuation = jax.lax.stop_gradient(continuation.astype(jnp.int32))
    valid, _, _ = _sample_mask(continuation, eos_id, zero_is_padding)
    continuation = jnp.where(valid, continuation, 0)
    length = continuation.shape[1]
    prompt_len = model._prompt_lengths(batch)  # [b]: prompt tokens at target positions 0 .. P-1
    positions = jnp.arange(length)[None, :]
    src = positions - prompt_len[:, None]
    in_sample = (src >= 0) & jnp.take_along_axis(valid, jnp.clip(src, 0, length - 1), axis=1)
    sampled = jnp.take_along_axis(continuation, jnp.clip(src, 0, length - 1), axis=1)
    in_prompt = positions < prompt_len[:, None]
    targets = jnp.where(
        in_prompt, batch["decoder_target_tokens"], jnp.where(in_sample, sampled, 0)
    ).astype(jnp.int32)
    policy = {
        "decoder_input_tokens": _shift_right(targets),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": in_sample.astype(jnp.float32),
    }
    if "decoder_causal_attention" in batch:
        policy["decoder_causal_attention"] = batch["decoder_causal_attention"]
    if "decoder_segment_ids" in batch:
        real = (in_prompt | in_sample).astype(jnp.int32)
        policy["decoder_segment_ids"] = real
        policy["decoder_positions"] = (positions * real).astype(jnp.int32)
    lengths = jnp.sum(in_sample, axis=1).astype(jnp.int32)
    ended = jnp.any(in_sample & (targets == eos_id), axis=1)
    return policy, {"lengths": lengths, "ended": ended}
