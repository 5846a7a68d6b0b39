"""Attention masks for the T5-family networks: {0,1} arrays of shape [batch, 1, q_len, kv_len]."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
DType = Any


# ----------------------------------------------------------------------------
# Masks. All masks are {0,1} arrays of shape [batch, 1, q_len, kv_len].
# ----------------------------------------------------------------------------


def make_attention_mask(
    query_input: Array,
    key_input: Array,
    pairwise_fn: Callable[[Array, Array], Array] = jnp.multiply,
    extra_batch_dims: int = 0,
    dtype: DType = jnp.float32,
) -> Array:
    """mask[b, 0, i, j] = pairwise_fn(query_input[b, i], key_input[b, j]).

    query_input [batch, q_len], key_input [batch, kv_len] -> [batch, 1, q_len, kv_len]
    (with `extra_batch_dims` leading singleton axes added).
    """
    mask = pairwise_fn(jnp.expand_dims(query_input, -1), jnp.expand_dims(key_input, -2))
    mask = jnp.expand_dims(mask, -3)
    mask = jnp.expand_dims(mask, tuple(range(extra_batch_dims)))
    return mask.astype(dtype)


def make_causal_mask(x: Array, extra_batch_dims: int = 0, dtype: DType = jnp.float32) -> Array:
    """Causal mask from the shape of x [batch, len]: [batch, 1, len, len], 1 where key <= query."""
    idx = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
    return make_attention_mask(idx, idx, jnp.greater_equal, extra_batch_dims, dtype)


def make_segment_mask(
    query_segment_ids: Array, key_segment_ids: Array, dtype: DType = jnp.float32
) -> Array:
    """Packing mask: 1 where query and key belong to the same segment."""
    return make_attention_mask(query_segment_ids, key_segment_ids, jnp.equal, dtype=dtype)


def combine_masks(*masks: Array | None, dtype: DType = jnp.float32) -> Array | None:
    """Logical AND of the given masks (None entries ignored; None if all are None)."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    if any(m.ndim != masks[0].ndim for m in masks):
        raise ValueError(f"Masks must have the same rank, got {[m.ndim for m in masks]}.")
    out = masks[0]
    for m in masks[1:]:
        out = jnp.logical_and(out, m)
    return out.astype(dtype)


def combine_biases(*biases: Array | None) -> Array | None:
    """Sum of the given attention biases (None entries ignored)."""
    biases = [b for b in biases if b is not None]
    if not biases:
        return None
    return functools.reduce(operator.add, biases)


def make_decoder_mask(
    decoder_target_tokens: Array,
    dtype: DType = jnp.float32,
    decoder_causal_attention: Array | None = None,
    decoder_segment_ids: Array | None = None,
) -> Array:
    """Decoder self-attention mask [batch, 1, len, len] (T5X semantics).

    Causal mask AND padding mask (target tokens > 0) AND, if given, the packing
    mask. `decoder_causal_attention` [batch, len] marks prefix-LM input
    positions (1) that attend bidirectionally among themselves.
    """
    causal = make_causal_mask(decoder_target_tokens, dtype=dtype)
    if decoder_causal_attention is not None:
        prefix = make_attention_mask(
            decoder_causal_attention, decoder_causal_attention, jnp.logical_and, dtype=dtype
        )
        causal = jnp.logical_or(causal, prefix).astype(dtype)
    padding = make_attention_mask(decoder_target_tokens > 0, decoder_target_tokens > 0, dtype=dtype)
    segment = None
    if decoder_segment_ids is not None:
        segment = make_segment_mask(decoder_segment_ids, decoder_segment_ids, dtype=dtype)
    return combine_masks(causal, padding, segment, dtype=dtype)
