"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2): RoPE, GQA, SwiGLU, RMSNorm.

Same conventions as decoder.py: parameters declared with `param_with_axes` (float32), activations in
`config.dtype`, constrained by logical names, the same call signature and cache protocol (so
`models.DecoderOnlyModel`, `decoding.py` and `decoder.prefill_cache` work unchanged). Parameters:

    decoder/token_embedder/embedding                            (vocab, embed)
    decoder/layers_{i}/pre_self_attention_layer_norm/scale      (embed,)
    decoder/layers_{i}/self_attention/query/kernel              (embed, joined_kv)          [+ bias (joined_kv,)]
    decoder/layers_{i}/self_attention/{key,value}/kernel        (embed, kv_heads_joined)    [+ bias]
    decoder/layers_{i}/self_attention/out/kernel                (joined_kv, embed)          [+ bias (embed,)]
    decoder/layers_{i}/pre_mlp_layer_norm/scale                 (embed,)
    decoder/layers_{i}/mlp/{wi_0 (gate), wi_1 (up)}/kernel      (embed, mlp), mlp/wo/kernel (mlp, embed)
    decoder/decoder_norm/scale                                  (embed,)
    decoder/logits_dense/kernel                                 (embed, vocab)   unless logits_via_embedding (tied)

Joined head axes are head-major (h * head_dim + d), as Hugging Face's q/k/v/o_proj rows.

Token id 0 is an ordinary token for these vocabularies, so padding is never inferred from `token == 0`: the
attention mask is causal, AND the packing mask when `decoder_segment_ids` is given (0 = padding), AND the prefix-LM
region. Right padding never influences real positions of a causal LM; loss masks come from
`decoder_loss_weights` (see tasks/hf_vocab.py `HFDecoderFeatureConverter`).

Positions (RoPE): `decoder_positions` when given (packing), else 0..length-1; in decoding, the cache slot
(`cache_index`). RoPE scores depend only on position differences, so right-aligned prefill (prefill_cache) gives
the same logits as an unshifted forward pass.

Decoding cache: each attention keeps `cached_key`/`cached_value` [batch, kv_heads, head_dim, cache_length] (kv
heads, not repeated copies; keys stored after RoPE) and `cache_index`; `decoder/cache_key_mask` as decoder.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from iqlearn_jax.networks import blocks, decoder, layers, masks
from iqlearn_jax.networks.layers import MASK_VALUE, param_with_axes, with_sharding_constraint
from iqlearn_jax.networks.t5 import resolve_dtype

Array = jax.Array

ARCHITECTURES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama-family decoder (Hugging Face LlamaConfig / Qwen2Config / MistralConfig fields).

    Attributes:
      vocab_size, emb_dim (hidden_size), num_heads, num_kv_heads (≤ num_heads, divides it), num_layers,
        head_dim, mlp_dim (intermediate_size): sizes.
      rope_theta: RoPE base θ. rope_type: 'default', 'linear' or 'llama3' (with `rope_scaling` parameters).
      rope_scaling: tuple of (name, value) pairs for 'linear' (factor) / 'llama3' (factor, low_freq_factor,
        high_freq_factor, original_max_position_embeddings).
      layer_norm_epsilon: RMSNorm ε (rms_norm_eps).
      logits_via_embedding: tied output embedding (tie_word_embeddings; not scaled).
      qkv_bias: biases on q/k/v projections (Qwen2; Llama's attention_bias). out_bias: bias on o_proj.
      mlp_activations: ('silu', 'linear') = SwiGLU (gate, up).
      dropout_rate: dropout on residual branches / MLP hidden / attention weights (0 for fine-tuning by default).
      dtype: activation dtype ('float32', 'bfloat16', 'auto'); parameters stay float32.
      float32_attention_logits: attention logits and softmax in float32.
      architecture: 'llama', 'mistral' or 'qwen2' (Hugging Face class on export).
      max_position_embeddings: written on export.
      sliding_window: Mistral's local attention (a query sees keys at most sliding_window - 1 positions back);
        None = full causal attention.
      bos_id, eos_id, pad_id: token ids of the tokenizer (written on export; None if unknown).
    """

    vocab_size: int = 32000
    emb_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 8
    num_layers: int = 6
    head_dim: int = 64
    mlp_dim: int = 1376
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_scaling: tuple = ()
    layer_norm_epsilon: float = 1e-5
    logits_via_embedding: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_activations: Sequence[str] = ("silu", "linear")
    dropout_rate: float = 0.0
    dtype: str = "float32"
    float32_attention_logits: bool = True
    architecture: str = "llama"
    max_position_embeddings: int = 2048
    sliding_window: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        scaling = self.rope_scaling
        if isinstance(scaling, Mapping):
            scaling = tuple(sorted(scaling.items()))
        object.__setattr__(self, "rope_scaling", tuple(tuple(kv) for kv in scaling))
        for name in (
            "vocab_size",
            "emb_dim",
            "num_heads",
            "num_kv_heads",
            "num_layers",
            "head_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {value!r}.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig.num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} "
                "(grouped-query attention)."
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.head_dim}.")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"LlamaConfig.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}."
            )
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"LlamaConfig.rope_type must be one of {ROPE_TYPES}, got {self.rope_type!r}."
            )
        if self.sliding_window is not None and (
            not isinstance(self.sliding_window, int) or self.sliding_window <= 0
        ):
            raise ValueError(
                f"LlamaConfig.sliding_window must be None or a positive int, got {self.sliding_window!r}."
            )
        if not self.rope_theta > 0:
            raise ValueError(f"LlamaConfig.rope_theta must be > 0, got {self.rope_theta}.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(
                f"LlamaConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}."
            )
        for act in self.mlp_activations:
            layers.get_activation(act)
        resolve_dtype(self.dtype)

    @property
    def activation_dtype(self) -> jnp.dtype:
        return resolve_dtype(self.dtype)

    @property
    def scale_tied_logits(self) -> bool:
        """Tied logits are NOT scaled by 1/√d (unlike T5.1.0); read by blocks.output_logits."""
        return False

    def num_params(self) -> int:
        d, h, k, hd, m = (
            self.emb_dim,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.mlp_dim,
        )
        attn = 2 * d * h * hd + 2 * d * k * hd
        attn += (h + 2 * k) * hd * self.qkv_bias + d * self.out_bias
        layer = attn + len(self.mlp_activations) * d * m + m * d + 2 * d
        total = self.vocab_size * d + d + self.num_layers * layer
        return total + (0 if self.logits_via_embedding else d * self.vocab_size)


# ---------------------------------------------------------------------------------------------------------------
# Rotary position embeddings (Hugging Face rotate-half layout).


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """Inverse frequencies [head_dim // 2] float32, as Hugging Face's rope init functions."""
    dim = config.head_dim
    inv = 1.0 / (
        config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim)
    )
    inv = inv.astype(np.float32)
    params = dict(config.rope_scaling)
    if config.rope_type == "linear":
        inv = inv / np.float32(params["factor"])
    elif config.rope_type == "llama3":
        factor = params["factor"]
        low, high = params["low_freq_factor"], params["high_freq_factor"]
        old_len = params["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_cos_sin(config: LlamaConfig, positions: Array) -> tuple[Array, Array]:
    """positions [batch, length] -> cos, sin [batch, length, head_dim] float32 (frequencies repeated twice)."""
    inv = jnp.asarray(rope_inv_freq(config))
    freqs = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x [batch, length, heads, head_dim] rotated: x·cos + rotate_half(x)·sin (computed in float32)."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Attention.


def constrain_dividing(x: Array, axes: tuple[str | None, ...]) -> Array:
    """Logical sharding constraint, dropping any axis whose mesh axis does not divide its dimension.

    GQA head counts (SmolLM2: 9 heads, 3 kv heads) need not divide the model axis; such a dimension is left to
    the compiler (replicated) instead of failing, as Partitioner.logical_to_spec does for parameters.
    """
    try:
        mesh = jax.sharding.get_abstract_mesh()
        sizes = dict(mesh.shape) if mesh is not None and not mesh.empty else {}
        spec = nn.logical_to_mesh_axes(axes)
    except Exception:  # no mesh / rules in scope: the constraint is a no-op anyway
        return with_sharding_constraint(x, axes)
    if spec is not None and sizes:
        axes = tuple(
            name
            if mesh_axis is None
            or x.shape[i] % int(np.prod([sizes.get(a, 1) for a in np.atleast_1d(mesh_axis)])) == 0
            else None
            for i, (name, mesh_axis) in enumerate(zip(axes, tuple(spec), strict=True))
        )
    return with_sharding_constraint(x, axes)


class HeadProjection(nn.Module):
    """x [batch, length, embed] -> [batch, length, heads, head_dim], optionally with bias and RoPE.

    Its `__call__` output is what `decoder.prefill_cache` captures for the modules named `key`/`value`, so keys
    are rotated here (the cache holds rotated keys).
    """

    num_heads: int
    head_dim: int
    kernel_axes: tuple[str, str]
    use_bias: bool = False
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.variance_scaling(1.0, "fan_in", "normal")

    @nn.compact
    def __call__(self, x: Array, rope: tuple[Array, Array] | None = None) -> Array:
        features = self.num_heads * self.head_dim
        kernel = param_with_axes(
            "kernel", self.kernel_init, (x.shape[-1], features), jnp.float32, axes=self.kernel_axes
        )
        y = jnp.dot(x.astype(self.dtype), jnp.asarray(kernel, self.dtype))
        if self.use_bias:
            bias = param_with_axes(
                "bias", nn.initializers.zeros, (features,), jnp.float32, axes=self.kernel_axes[1:]
            )
            y = y + jnp.asarray(bias, self.dtype)
        y = y.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
        if rope is not None:
            y = apply_rope(y, *rope)
        return y


class GroupedQueryAttention(nn.Module):
    """Self-attention with RoPE and grouped-query heads (num_kv_heads ≤ num_heads), scaled by 1/√head_dim."""

    config: LlamaConfig

    def _rope(self, positions: Array) -> tuple[Array, Array]:
        return rope_cos_sin(self.config, positions)

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None,
        positions: Array,
        *,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """x [batch, length, embed], mask {0,1} [batch, 1, q, k], positions [batch, length] -> [batch, length, embed]."""
        cfg = self.config
        dtype = cfg.activation_dtype
        batch, length = x.shape[:2]
        cache_ready = decode and self.has_variable("cache", "cached_key")
        if cache_ready:
            index = self.get_variable("cache", "cache_index")
            positions = jnp.broadcast_to(index, (batch, length)).astype(jnp.int32)
        rope = self._rope(positions)

        def proj(name, heads, axes, bias, use_rope):
            module = HeadProjection(heads, cfg.head_dim, axes, bias, dtype, name=name)
            return module(x, rope if use_rope else None)

        query = proj("query", cfg.num_heads, ("embed", "joined_kv"), cfg.qkv_bias, True)
        key = proj("key", cfg.num_kv_heads, ("embed", "kv_heads_joined"), cfg.qkv_bias, True)
        value = proj("value", cfg.num_kv_heads, ("embed", "kv_heads_joined"), cfg.qkv_bias, False)
        query = constrain_dividing(query, ("batch", "length", "heads", "kv"))
        key = constrain_dividing(key, ("batch", "length", "kv_heads", "kv"))
        value = constrain_dividing(value, ("batch", "length", "kv_heads", "kv"))
        if decode:
            key, value, mask = self._update_cache(key, value, mask, cache_ready)

        out = self._attend(query, key, value, mask, deterministic)
        out = out.reshape(batch, length, cfg.num_heads * cfg.head_dim)
        y = layers.DenseGeneral(
            x.shape[-1], dtype=dtype, kernel_axes=("joined_kv", "embed"), name="out"
        )(out)
        if cfg.out_bias:
            bias = param_with_axes(
                "out_bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32, axes=("embed",)
            )
            y = y + jnp.asarray(bias, dtype)
        return y

    def _attend(self, query, key, value, mask, deterministic):
        """query [b, q, H, d], key/value [b, k, K, d] -> [b, q, H, d]."""
        cfg = self.config
        dtype = cfg.activation_dtype
        b, q, h, d = query.shape
        groups = h // cfg.num_kv_heads
        query = query.reshape(b, q, cfg.num_kv_heads, groups, d)
        logit_dtype = jnp.float32 if cfg.float32_attention_logits else dtype
        logits = jnp.einsum(
            "bqkgd,bskd->bkgqs", query.astype(logit_dtype), key.astype(logit_dtype)
        ) * jnp.asarray(1.0 / math.sqrt(d), logit_dtype)
        if mask is not None:
            bias = jnp.where(mask > 0, 0.0, MASK_VALUE).astype(logit_dtype)  # [b, 1, q, k]
            logits = logits + bias[:, :, None]
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
        if not deterministic and cfg.dropout_rate > 0.0:
            keep = jax.random.bernoulli(
                self.make_rng("dropout"), 1.0 - cfg.dropout_rate, weights.shape
            )
            weights = weights * (keep.astype(dtype) / jnp.asarray(1.0 - cfg.dropout_rate, dtype))
        out = jnp.einsum("bkgqs,bskd->bqkgd", weights, value.astype(dtype))
        return out.reshape(b, q, h, d)

    def _update_cache(self, key, value, mask, cache_ready):
        """Writes this step's (rotated) K/V at `cache_index`; returns all cached K/V and the step mask."""

        def swap(s):  # [b, len, K, d] -> [b, K, d, len]
            return (s[0], s[2], s[3], s[1])

        cached_key = self.variable("cache", "cached_key", jnp.zeros, swap(key.shape), key.dtype)
        cached_value = self.variable(
            "cache", "cached_value", jnp.zeros, swap(value.shape), value.dtype
        )
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not cache_ready:
            return key, value, mask
        batch, kv_heads, head_dim, length = cached_key.value.shape
        if key.shape != (batch, 1, kv_heads, head_dim):
            raise ValueError(
                "Autoregressive cache step expects one position per call: key shape "
                f"{(batch, 1, kv_heads, head_dim)}, got {key.shape}."
            )
        cur = cache_index.value
        one_hot = jax.nn.one_hot(cur, length, dtype=key.dtype)
        k_all = cached_key.value + jnp.moveaxis(key, 1, -1) * one_hot
        v_all = cached_value.value + jnp.moveaxis(value, 1, -1) * one_hot
        cached_key.value, cached_value.value = k_all, v_all
        cache_index.value = cur + 1
        slots = jnp.arange(length)
        visible = slots <= cur
        if self.config.sliding_window is not None:
            visible &= slots > cur - self.config.sliding_window
        step_mask = jnp.broadcast_to(visible, (batch, 1, 1, length))
        mask = masks.combine_masks(mask, step_mask)
        return jnp.moveaxis(k_all, -1, 1), jnp.moveaxis(v_all, -1, 1), mask


# ---------------------------------------------------------------------------------------------------------------
# Layers and the decoder.


class LlamaLayer(nn.Module):
    """Pre-RMSNorm GQA self-attention and SwiGLU MLP blocks with residuals."""

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        mask: Array | None,
        positions: Array,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """inputs [batch, length, embed] -> [batch, length, embed]."""
        cfg = self.config
        x = layers.LayerNorm(
            cfg.layer_norm_epsilon, cfg.activation_dtype, name="pre_self_attention_layer_norm"
        )(inputs)
        x = GroupedQueryAttention(cfg, name="self_attention")(
            x, mask, positions, deterministic=deterministic, decode=decode
        )
        x = blocks.constrain_embed(blocks.dropout(cfg, x, deterministic) + inputs)
        return blocks.mlp_sublayer(cfg, x, deterministic=deterministic)


def attention_mask(
    length: int,
    batch: int,
    dtype: Any,
    decoder_segment_ids: Array | None,
    decoder_causal_attention: Array | None,
    sliding_window: int | None = None,
) -> Array:
    """[batch, 1, length, length]: (causal [∧ q − k < sliding_window] ∨ prefix-LM block) ∧ same segment (if
    given; 0 = padding). Never derived from token values (id 0 is a real token).
    """
    idx = jnp.zeros((batch, length), jnp.int32)
    causal = masks.make_causal_mask(idx, dtype=dtype)
    if sliding_window is not None:
        pos = jnp.arange(length)
        near = (pos[:, None] - pos[None, :]) < sliding_window
        causal = jnp.logical_and(causal, near[None, None]).astype(dtype)
    if decoder_causal_attention is not None:
        prefix = masks.make_attention_mask(
            decoder_causal_attention, decoder_causal_attention, jnp.logical_and, dtype=dtype
        )
        causal = jnp.logical_or(causal, prefix).astype(dtype)
    if decoder_segment_ids is None:
        return causal
    valid = decoder_segment_ids > 0
    real = masks.make_attention_mask(valid, valid, dtype=dtype)
    same = masks.make_segment_mask(decoder_segment_ids, decoder_segment_ids, dtype=dtype)
    return masks.combine_masks(causal, same, real, dtype=dtype)


class LlamaDecoder(nn.Module):
    """Embedding, layers, final RMSNorm and logits (the `decoder/` scope)."""

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array | None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        decoder_causal_attention: Array | None = None,
        *,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
        prefill: bool = False,
        prefill_lengths: Array | None = None,
        return_hidden: bool = False,
    ) -> Array:
        del decoder_target_tokens, max_decode_length  # masks never come from token values
        cfg = self.config
        dtype = cfg.activation_dtype
        deterministic = not enable_dropout
        blocks.check_decoder_call(decoder_input_tokens, prefill, prefill_lengths)
        batch, length = decoder_input_tokens.shape
        positions = decoder_positions
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        if decode:
            if decoder_segment_ids is not None:
                raise ValueError("decoder_segment_ids (packing) cannot be used with decode=True.")
            initialized = self.has_variable("cache", "cache_key_mask")
            key_mask = self.variable(
                "cache", "cache_key_mask", lambda: jnp.ones((batch, length), jnp.int32)
            )
            mask = key_mask.value[:, None, None, :].astype(dtype) if initialized else None
        else:
            mask = attention_mask(
                length,
                batch,
                dtype,
                decoder_segment_ids,
                decoder_causal_attention,
                cfg.sliding_window,
            )
        embedder, y = blocks.embed_tokens(cfg, decoder_input_tokens, deterministic, dtype)
        for i in range(cfg.num_layers):
            y = LlamaLayer(cfg, name=f"layers_{i}")(
                y, mask, positions, deterministic=deterministic, decode=decode
            )
        return blocks.output_logits(
            cfg, y, embedder, deterministic=deterministic, return_hidden=return_hidden
        )


class LlamaDecoderWrapper(decoder.DecoderWrapper):
    """Llama-family causal LM with decoder.DecoderWrapper's call signature; parameters live under `decoder/`.

    `module.apply({'params': p}, decoder_input_tokens=x, decoder_target_tokens=y, enable_dropout=False)` gives
    float32 logits [batch, length, vocab]; position t predicts token t+1 of `x` (as Hugging Face).
    `decoder_target_tokens` is accepted for the common signature and not used (no padding from token ids);
    `decoder_positions` drive RoPE (default 0..length-1).
    """

    config: LlamaConfig
    # Token id 0 is a real token here (policy sampling reads this: a sampled 0 does not end a sample).
    ZERO_IS_PADDING = False

    def setup(self):
        self.decoder = LlamaDecoder(self.config, name="decoder")


gin.external_configurable(LlamaDecoderWrapper, module="iqlearn_jax.networks.llama")
