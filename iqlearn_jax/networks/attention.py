"""Attention for the T5-family networks: relative position biases and multi-head attention with a KV cache.

Attention does NOT scale logits by 1/sqrt(head_dim): as in T5 (Mesh TF, T5X, Hugging Face) that factor is folded into
the query initialiser.

Decoding cache (flax collection "cache"), as in T5X:
- self-attention: `cached_key`/`cached_value` of shape `[batch, heads, head_dim, max_length]` and a scalar int32
  `cache_index`;
- cross-attention (`MultiHeadDotProductAttention(..., cache_cross_kv=True)`): the projected encoder keys/values
  `cached_key`/`cached_value` of shape `[batch, kv_length, heads, head_dim]`, computed at the step where
  `cache_index == 0` (inside `lax.cond`, so only that step pays for the projection) and reused afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from iqlearn_jax.networks.layers import (
    MASK_VALUE,
    DenseGeneral,
    param_with_axes,
    with_sharding_constraint,
)
from iqlearn_jax.networks.masks import combine_masks

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]


def relative_position_bucket(
    relative_position: np.ndarray,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> np.ndarray:
    """T5 bucketing of `relative_position = key_pos - query_pos` (NumPy, static).

    Exact buckets for small distances, logarithmic ones up to `max_distance`,
    then one bucket for everything further. With `bidirectional`, half of the
    buckets are for keys after the query. Computed in float32 as Mesh TF and
    Hugging Face do (no epsilon), so bucket ids match Hugging Face exactly.

    Returns int32 bucket ids in [0, num_buckets), same shape as the input.
    """
    n = -np.asarray(relative_position, dtype=np.int64)
    ret = np.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(np.int64) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    with np.errstate(divide="ignore"):
        scaled = np.log(n.astype(np.float32) / np.float32(max_exact)) / np.float32(
            np.log(max_distance / max_exact)
        )
    scaled = (scaled * np.float32(num_buckets - max_exact)).astype(np.float32)
    val_if_large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    val_if_large = np.minimum(val_if_large, num_buckets - 1)
    ret += np.where(is_small, n, val_if_large)
    return ret.astype(np.int32)


class RelativePositionBiases(nn.Module):
    """T5 relative position biases, one table `rel_embedding` (heads, relpos_buckets).

    Shared by all layers of a stack (T5X places it at `encoder/relpos_bias` and
    `decoder/relpos_bias`).
    """

    num_buckets: int
    max_distance: int
    num_heads: int
    dtype: DType = jnp.float32
    embedding_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

    @nn.compact
    def __call__(self, qlen: int, klen: int, bidirectional: bool = True) -> Array:
        """Returns the attention bias [1, heads, qlen, klen] for positions
        0..qlen-1 attending to 0..klen-1."""
        # Buckets depend only on key_pos − query_pos, so only the qlen + klen − 1 distinct offsets are bucketed
        # on the host; the [qlen, klen] index is built in the graph (no [buckets, qlen, klen] constant).
        offsets = np.arange(-(qlen - 1), klen)
        offset_buckets = relative_position_bucket(
            offsets, bidirectional, num_buckets=self.num_buckets, max_distance=self.max_distance
        )
        table = param_with_axes(
            "rel_embedding",
            self.embedding_init,
            (self.num_heads, self.num_buckets),
            jnp.float32,
            axes=("heads", "relpos_buckets"),
        )
        per_offset = jnp.take(jnp.asarray(table, self.dtype), jnp.asarray(offset_buckets), axis=1)
        index = (
            jnp.arange(klen, dtype=jnp.int32)[None, :]
            - jnp.arange(qlen, dtype=jnp.int32)[:, None]
            + (qlen - 1)
        )
        values = jnp.take(per_offset, index, axis=1)  # [heads, qlen, klen]
        return values[None]


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    dtype: DType = jnp.float32,
    float32_logits: bool = False,
) -> Array:
    """Unscaled dot-product attention (T5 convention).

    Args:
      query: [batch, q_len, heads, head_dim].
      key, value: [batch, kv_len, heads, head_dim].
      bias: additive logits bias broadcastable to [batch, heads, q_len, kv_len].
      dropout_rng, dropout_rate, deterministic: attention-weight dropout,
        broadcast over the query axis as T5X does.
      dtype: dtype of the attention weights and output.
      float32_logits: compute logits and softmax inputs in float32.

    Returns:
      [batch, q_len, heads, head_dim].
    """
    if float32_logits:
        query = query.astype(jnp.float32)
        key = key.astype(jnp.float32)
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)
    if bias is not None:
        logits = logits + bias.astype(logits.dtype)
    weights = jax.nn.softmax(logits).astype(dtype)
    if not deterministic and dropout_rate > 0.0:
        keep_prob = 1.0 - dropout_rate
        shape = list(weights.shape)
        shape[-2] = 1
        keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
        weights = weights * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype))
    return jnp.einsum("bhqk,bkhd->bqhd", weights, value.astype(dtype))


class MultiHeadDotProductAttention(nn.Module):
    """Multi-head attention with T5X parameter names `query`, `key`, `value`,
    `out` (kernels (embed, joined_kv) and (joined_kv, embed)) and a KV cache.

    Attributes:
      num_heads, head_dim: head layout; joined_kv = num_heads * head_dim.
      dtype: activation dtype.
      dropout_rate: attention-weight dropout.
      kernel_init: kernel initialiser (the query's is divided by sqrt(head_dim)).
      float32_logits: compute attention logits in float32.
      cache_cross_kv: for cross-attention in decode mode: project the (fixed)
        `inputs_kv` once, at the first decoding step, and reuse the cached
        projections afterwards. Leave False for self-attention.
    """

    num_heads: int
    head_dim: int
    dtype: DType = jnp.float32
    dropout_rate: float = 0.0
    kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    float32_logits: bool = False
    cache_cross_kv: bool = False

    def _projection(self, name: str, init: Initializer) -> DenseGeneral:
        return DenseGeneral(
            features=(self.num_heads, self.head_dim),
            axis=-1,
            kernel_axes=("embed", "joined_kv"),
            kernel_init=init,
            dtype=self.dtype,
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        mask: Array | None = None,
        bias: Array | None = None,
        *,
        decode: bool = False,
        deterministic: bool = True,
    ) -> Array:
        """Attends `inputs_q` [batch, q_len, embed] to `inputs_kv` [batch, kv_len, embed].

        Args:
          mask: {0,1} mask broadcastable to [batch, heads, q_len, kv_len].
          bias: additive bias [1 or batch, heads, q_len, kv_len] (relative
            positions). In single-step self-attention decoding it must be the
            full [.., max_length, max_length] bias; the row of the current
            position is taken from it.
          decode: use/fill the "cache" collection. The first call (no cache
            yet) creates zero caches sized from the inputs ([batch, max_length]);
            later calls take one position at a time (q_len == 1).
          deterministic: disable dropout.

        Returns:
          [batch, q_len, embed].
        """
        depth_scaling = jnp.sqrt(self.head_dim).astype(jnp.float32)

        def query_init(*args):
            return self.kernel_init(*args) / depth_scaling

        query_proj = self._projection("query", query_init)
        key_proj = self._projection("key", self.kernel_init)
        value_proj = self._projection("value", self.kernel_init)

        query = with_sharding_constraint(query_proj(inputs_q), ("batch", "length", "heads", "kv"))

        if decode and self.cache_cross_kv:
            key, value = self._cross_kv_from_cache(key_proj, value_proj, inputs_kv)
        else:
            key = key_proj(inputs_kv)
            value = value_proj(inputs_kv)
            if decode:
                key, value, mask, bias = self._update_self_cache(query, key, value, mask, bias)
        key = with_sharding_constraint(key, ("batch", "length", "heads", "kv"))
        value = with_sharding_constraint(value, ("batch", "length", "heads", "kv"))

        attention_bias = None
        if mask is not None:
            attention_bias = jnp.where(mask > 0, 0.0, MASK_VALUE).astype(self.dtype)
        if bias is not None:
            bias = bias.astype(self.dtype)
            attention_bias = bias if attention_bias is None else attention_bias + bias

        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        x = dot_product_attention(
            query,
            key,
            value,
            bias=attention_bias,
            dropout_rng=dropout_rng,
            dropout_rate=self.dropout_rate,
            deterministic=deterministic,
            dtype=self.dtype,
            float32_logits=self.float32_logits,
        )
        out = DenseGeneral(
            features=inputs_q.shape[-1],
            axis=(-2, -1),
            kernel_init=self.kernel_init,
            kernel_axes=("joined_kv", "embed"),
            dtype=self.dtype,
            name="out",
        )(x)
        return out

    def _cross_kv_from_cache(self, key_proj, value_proj, inputs_kv):
        """Cross-attention K/V: projected once (at cache_index 0), then cached."""
        initialized = self.has_variable("cache", "cached_key")
        batch, kv_len = inputs_kv.shape[:2]
        shape = (batch, kv_len, self.num_heads, self.head_dim)
        cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, self.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, self.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialized:
            # Cache creation pass: inputs may be placeholders; compute directly.
            return key_proj(inputs_kv), value_proj(inputs_kv)
        if cached_key.value.shape != shape:
            raise ValueError(
                f"Cross-attention cache holds keys of shape {cached_key.value.shape} but the "
                f"encoded inputs give {shape}; re-initialise the cache for this batch."
            )

        # Kernels are read directly so that lax.cond can skip the projection
        # on every step but the first (the submodules hold the same params).
        params = self.variables["params"]
        kernels = tuple(
            jnp.reshape(
                jnp.asarray(params[n]["kernel"], self.dtype),
                (inputs_kv.shape[-1], self.num_heads, self.head_dim),
            )
            for n in ("key", "value")
        )

        def project(operands):
            x, _, _ = operands
            x = jnp.asarray(x, self.dtype)
            return tuple(jnp.einsum("ble,ehd->blhd", x, k) for k in kernels)

        def reuse(operands):
            _, k, v = operands
            return k, v

        key, value = lax.cond(
            cache_index.value == 0,
            project,
            reuse,
            (inputs_kv, cached_key.value, cached_value.value),
        )
        cached_key.value = key
        cached_value.value = value
        cache_index.value = cache_index.value + 1
        return key, value

    def _update_self_cache(self, query, key, value, mask, bias):
        """Self-attention cache: writes this step's K/V at `cache_index`."""
        initialized = self.has_variable("cache", "cached_key")

        def swap(s):  # [b, len, h, d] -> [b, h, d, len]
            return s[:-3] + (s[-2], s[-1], s[-3])

        cached_key = self.variable("cache", "cached_key", jnp.zeros, swap(key.shape), key.dtype)
        cached_value = self.variable(
            "cache", "cached_value", jnp.zeros, swap(value.shape), value.dtype
        )
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialized:
            return key, value, mask, bias

        batch, num_heads, head_dim, length = cached_key.value.shape
        if query.shape != (batch, 1, num_heads, head_dim):
            raise ValueError(
                "Autoregressive cache step expects one position per call: query shape "
                f"{(batch, 1, num_heads, head_dim)}, got {query.shape}."
            )
        cur = cache_index.value
        one_hot = jax.nn.one_hot(cur, length, dtype=key.dtype)
        # One-hot broadcast-add instead of a scatter (fast on TPU, as T5X does).
        k_all = cached_key.value + jnp.moveaxis(key, -3, -1) * one_hot
        v_all = cached_value.value + jnp.moveaxis(value, -3, -1) * one_hot
        cached_key.value = k_all
        cached_value.value = v_all
        cache_index.value = cur + 1
        key = jnp.moveaxis(k_all, -1, -3)
        value = jnp.moveaxis(v_all, -1, -3)
        step_mask = jnp.broadcast_to(jnp.arange(length) <= cur, (batch, 1, 1, length))
        mask = combine_masks(mask, step_mask)
        if bias is not None:
            if bias.shape[-2] != length or bias.shape[-1] != length:
                raise ValueError(
                    f"Decoding with a cache of length {length} needs the full relative-position "
                    f"bias [.., {length}, {length}], got {bias.shape}: pass "
                    "max_decode_length equal to the cache length."
                )
            bias = lax.dynamic_slice_in_dim(bias, cur, 1, axis=-2)
        return key, value, mask, bias
