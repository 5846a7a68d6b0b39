"""Shared Flax linen layers for the T5-family networks.

Every parameter is declared with `flax.linen.partitioning.param_with_axes`, so
`init` also returns a `params_axes` collection with the logical axis names of
each parameter (T5X convention). Parameter names and shapes follow T5X's
`examples/t5/layers.py`, so T5X checkpoints load without renaming:

- `DenseGeneral/kernel`: 2-D, `(prod(input dims), prod(output features))`.
- `LayerNorm/scale`: `(features,)`, axis `embed` (RMS norm, no bias/centering).
- `Embed/embedding`: `(vocab, embed)`.
- `RelativePositionBiases/rel_embedding`: `(heads, relpos_buckets)`.

Activations are constrained by logical names with
`flax.linen.partitioning.with_sharding_constraint` (a no-op without axis rules).

Attention does NOT scale logits by 1/sqrt(head_dim): as in T5 (Mesh TF, T5X,
Hugging Face) that factor is folded into the query initialiser.

Decoding cache (flax collection "cache"), as in T5X:
- self-attention: `cached_key`/`cached_value` of shape `[batch, heads, head_dim,
  max_length]` and a scalar int32 `cache_index`;
- cross-attention (`MultiHeadDotProductAttention(..., cache_cross_kv=True)`):
  the projected encoder keys/values `cached_key`/`cached_value` of shape
  `[batch, kv_length, heads, head_dim]`, computed at the step where
  `cache_index == 0` (inside `lax.cond`, so only that step pays for the
  projection) and reused afterwards.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning
from jax import lax

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]

# Value added to masked-out attention logits (T5X uses the same constant).
MASK_VALUE = -1e10

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
default_embed_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


def _as_tuple(x: int | Iterable[int]) -> tuple[int, ...]:
    return tuple(x) if isinstance(x, Iterable) else (x,)


def get_activation(fn_or_name: str | Callable) -> Callable[[Array], Array]:
    """Maps an activation name to a function: 'linear' is identity, other names
    are looked up in `flax.linen` ('gelu' is the tanh approximation, as T5/HF
    'gelu_new'; 'relu', 'silu', ...)."""
    if callable(fn_or_name):
        return fn_or_name
    if fn_or_name == "linear":
        return lambda x: x
    fn = getattr(nn, fn_or_name, None)
    if not callable(fn):
        raise ValueError(
            f"Unknown activation {fn_or_name!r}: expected 'linear' or a function name in flax.linen "
            "(e.g. 'relu', 'gelu', 'silu')."
        )
    return fn


class DenseGeneral(nn.Module):
    """Bias-free linear map contracting `axis` of the input onto `features`.

    The kernel is stored 2-D as `(prod(contracted input dims), prod(features))`
    in float32 (T5X layout) and reshaped at call time.

    Attributes:
      features: output feature dims, e.g. `emb_dim` or `(heads, head_dim)`.
      axis: input axes to contract (default: last).
      dtype: computation dtype (inputs and kernel are cast to it).
      kernel_init: initialiser of the 2-D kernel.
      kernel_axes: logical axis names of the 2-D kernel, e.g. ('embed', 'mlp').
    """

    features: int | Sequence[int]
    axis: int | Sequence[int] = -1
    dtype: DType = jnp.float32
    kernel_init: Initializer = default_kernel_init
    kernel_axes: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """[..., *in_dims] -> [..., *features]."""
        features = _as_tuple(self.features)
        inputs = jnp.asarray(inputs, self.dtype)
        axis = tuple(a % inputs.ndim for a in _as_tuple(self.axis))
        in_dims = tuple(inputs.shape[a] for a in axis)
        kernel = param_with_axes(
            "kernel",
            self.kernel_init,
            (int(np.prod(in_dims)), int(np.prod(features))),
            jnp.float32,
            axes=self.kernel_axes,
        )
        kernel = jnp.reshape(jnp.asarray(kernel, self.dtype), in_dims + features)
        contract = (axis, tuple(range(len(axis))))
        return lax.dot_general(inputs, kernel, (contract, ((), ())))


class LayerNorm(nn.Module):
    """T5 RMS layer norm: x / sqrt(mean(x^2) + eps) * scale (no mean, no bias).

    Statistics are computed in float32; the result is cast to `dtype`.
    """

    epsilon: float = 1e-6
    dtype: DType = jnp.float32
    scale_init: Initializer = nn.initializers.ones

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[..., features] -> [..., features]."""
        x = jnp.asarray(x, jnp.float32)
        mean2 = jnp.mean(lax.square(x), axis=-1, keepdims=True)
        y = jnp.asarray(x * lax.rsqrt(mean2 + self.epsilon), self.dtype)
        scale = param_with_axes(
            "scale", self.scale_init, (x.shape[-1],), jnp.float32, axes=("embed",)
        )
        return y * jnp.asarray(scale, self.dtype)


class Embed(nn.Module):
    """Token embedding table `embedding` of shape (vocab, embed), float32.

    Attributes:
      num_embeddings: vocabulary size (rows).
      features: embedding size.
      dtype: dtype of looked-up embeddings.
      attend_dtype: dtype of `attend` (tied logits); default `dtype`.
      embedding_init: initialiser.
      one_hot: look up with a one-hot matmul (SPMD friendly on TPU) instead of a gather.
    """

    num_embeddings: int
    features: int
    dtype: DType = jnp.float32
    attend_dtype: DType | None = None
    embedding_init: Initializer = default_embed_init
    one_hot: bool = False

    def setup(self):
        self.embedding = param_with_axes(
            "embedding",
            self.embedding_init,
            (self.num_embeddings, self.features),
            jnp.float32,
            axes=("vocab", "embed"),
        )

    def __call__(self, inputs: Array) -> Array:
        """Integer ids [...] -> embeddings [..., features]."""
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"Embed expects integer token ids, got dtype {inputs.dtype}.")
        table = jnp.asarray(self.embedding, self.dtype)
        if self.one_hot:
            one_hot = jax.nn.one_hot(inputs, self.num_embeddings, dtype=self.dtype)
            out = jnp.dot(one_hot, table)
        else:
            out = jnp.take(table, inputs, axis=0)
        if out.ndim == 3:
            out = with_sharding_constraint(out, ("batch", "length", "embed"))
        return out

    def attend(self, query: Array) -> Array:
        """Tied output projection: [..., features] -> [..., num_embeddings]."""
        dtype = self.attend_dtype if self.attend_dtype is not None else self.dtype
        return jnp.dot(jnp.asarray(query, dtype), jnp.asarray(self.embedding, dtype).T)


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
        rel = np.arange(klen)[None, :] - np.arange(qlen)[:, None]
        buckets = relative_position_bucket(
            rel, bidirectional, num_buckets=self.num_buckets, max_distance=self.max_distance
        )
        table = param_with_axes(
            "rel_embedding",
            self.embedding_init,
            (self.num_heads, self.num_buckets),
            jnp.float32,
            axes=("heads", "relpos_buckets"),
        )
        table = jnp.asarray(table, self.dtype)
        # Gather via a one-hot contraction (fast on TPU): [h, B] x [B, q, k] -> [h, q, k].
        one_hot = jnp.asarray(
            buckets[None] == np.arange(self.num_buckets)[:, None, None], self.dtype
        )
        values = jnp.einsum("hb,bqk->hqk", table, one_hot)
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


class MlpBlock(nn.Module):
    """T5 feed-forward block.

    One input projection per activation: a single activation gives `wi` (T5.1.0,
    ('relu',)); several give `wi_0`, `wi_1`, ... whose activated outputs are
    multiplied (T5.1.1 gated GELU: ('gelu', 'linear')). Then dropout and `wo`.
    Kernels: wi* (embed, mlp), wo (mlp, embed).
    """

    intermediate_dim: int = 2048
    activations: Sequence[str | Callable] = ("relu",)
    kernel_init: Initializer = default_kernel_init
    intermediate_dropout_rate: float = 0.1
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
        """[batch, length, embed] -> [batch, length, embed]."""
        hidden = []
        for i, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            h = DenseGeneral(
                self.intermediate_dim,
                dtype=self.dtype,
                kernel_init=self.kernel_init,
                kernel_axes=("embed", "mlp"),
                name=name,
            )(inputs)
            hidden.append(get_activation(act)(h))
        x = functools.reduce(operator.mul, hidden)
        x = nn.Dropout(rate=self.intermediate_dropout_rate, broadcast_dims=(-2,))(
            x, deterministic=deterministic
        )
        x = with_sharding_constraint(x, ("batch", "length", "mlp"))
        return DenseGeneral(
            inputs.shape[-1],
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            kernel_axes=("mlp", "embed"),
            name="wo",
        )(x)


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
