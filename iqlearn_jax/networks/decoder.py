"""Decoder-only Transformer (causal LM and prefix-LM) with T5X `examples/decoder_only` parameter names.

Parameters (all float32, declared with `param_with_axes`, so `init` also returns `params_axes`):

    decoder/token_embedder/embedding                     (vocab, embed)
    decoder/relpos_bias/rel_embedding                    (heads, relpos_buckets)   causal buckets, shared by layers
    decoder/layers_{i}/pre_self_attention_layer_norm/scale (embed,)
    decoder/layers_{i}/self_attention/{query,key,value}/kernel (embed, joined_kv), .../out/kernel (joined_kv, embed)
    decoder/layers_{i}/pre_mlp_layer_norm/scale          (embed,)
    decoder/layers_{i}/mlp/{wi | wi_0, wi_1}/kernel (embed, mlp), mlp/wo/kernel (mlp, embed)
    decoder/decoder_norm/scale                           (embed,)
    decoder/logits_dense/kernel                          (embed, vocab)            unless logits_via_embedding

Attention: causal, restricted to non-padding positions (`decoder_target_tokens > 0`) and to one segment when
packed; where `decoder_causal_attention` is 1 (the "inputs" part of seqio's PrefixLMFeatureConverter, plus the
position of the first target) positions attend to each other bidirectionally.

Decoding cache (flax collection "cache"): each self-attention keeps `cached_key`/`cached_value`
[batch, heads, head_dim, cache_length] and a scalar `cache_index` (layers.py), and `decoder/cache_key_mask`
[batch, cache_length] marks the cache slots a query may attend to (all ones unless a prompt was prefilled
right-aligned, see `prefill_cache`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
from flax import linen as nn

from iqlearn_jax.networks import attention as attention_lib
from iqlearn_jax.networks import blocks, layers, masks
from iqlearn_jax.networks.t5 import resolve_dtype

Array = jax.Array


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig:
    """Hyper-parameters of the decoder-only Transformer (T5X decoder_only `TransformerConfig` fields).

    Attributes:
      vocab_size: embedding rows.
      emb_dim, num_heads, num_layers, head_dim, mlp_dim: sizes (joined_kv = num_heads * head_dim).
      mlp_activations: ('relu',) -> `wi`; ('gelu', 'linear') -> gated `wi_0`, `wi_1`.
      dropout_rate: dropout on embeddings, residual branches, MLP hidden and attention weights.
      logits_via_embedding: tie the output projection to the embedding (scaled by 1/sqrt(emb_dim)).
      dtype: activation dtype name ('float32', 'bfloat16', 'float16', 'auto'); parameters stay float32.
      float32_attention_logits: attention logits in float32.
      num_buckets, max_distance: relative-position bucketing (causal buckets).
      layer_norm_epsilon: RMS-norm epsilon.
    """

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 8
    num_layers: int = 6
    head_dim: int = 64
    mlp_dim: int = 2048
    mlp_activations: Sequence[str] = ("gelu", "linear")
    dropout_rate: float = 0.1
    logits_via_embedding: bool = False
    dtype: str = "float32"
    float32_attention_logits: bool = False
    num_buckets: int = 32
    max_distance: int = 128
    layer_norm_epsilon: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        for name in ("vocab_size", "emb_dim", "num_heads", "num_layers", "head_dim", "mlp_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DecoderOnlyConfig.{name} must be a positive int, got {value!r}.")
        if not self.mlp_activations:
            raise ValueError("DecoderOnlyConfig.mlp_activations must name at least one activation.")
        for act in self.mlp_activations:
            layers.get_activation(act)
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(
                f"DecoderOnlyConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}."
            )
        resolve_dtype(self.dtype)

    @property
    def activation_dtype(self) -> jnp.dtype:
        return resolve_dtype(self.dtype)

    def num_params(self) -> int:
        """Number of parameters of `DecoderWrapper(self)`."""
        d, j, m = self.emb_dim, self.num_heads * self.head_dim, self.mlp_dim
        layer = 4 * d * j + len(self.mlp_activations) * d * m + m * d + 2 * d
        total = (
            self.vocab_size * d + self.num_heads * self.num_buckets + d + self.num_layers * layer
        )
        return total + (0 if self.logits_via_embedding else d * self.vocab_size)


class DecoderLayer(nn.Module):
    """Pre-norm self-attention and MLP blocks with residuals."""

    config: DecoderOnlyConfig

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        mask: Array | None,
        bias: Array,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """inputs [batch, length, embed] -> [batch, length, embed]; `bias` [1, heads, len, len] (relpos)."""
        x = blocks.attention_sublayer(
            self.config,
            inputs,
            None,
            mask,
            bias,
            norm_name="pre_self_attention_layer_norm",
            attention_name="self_attention",
            deterministic=deterministic,
            decode=decode,
        )
        return blocks.mlp_sublayer(self.config, x, deterministic=deterministic)


class Decoder(nn.Module):
    """Embedding, decoder layers, final norm and logits (the `decoder/` scope)."""

    config: DecoderOnlyConfig

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
        del decoder_positions  # relative positions only
        cfg = self.config
        dtype = cfg.activation_dtype
        deterministic = not enable_dropout
        blocks.check_decoder_call(decoder_input_tokens, prefill, prefill_lengths)
        batch, length = decoder_input_tokens.shape
        mask = None
        if decode:
            if decoder_segment_ids is not None:
                raise ValueError("decoder_segment_ids (packing) cannot be used with decode=True.")
            initialized = self.has_variable("cache", "cache_key_mask")
            key_mask = self.variable(
                "cache", "cache_key_mask", lambda: jnp.ones((batch, length), jnp.int32)
            )
            if initialized:
                if max_decode_length is None:
                    max_decode_length = key_mask.value.shape[-1]
                mask = key_mask.value[:, None, None, :].astype(dtype)
        else:
            if decoder_target_tokens is None:
                raise ValueError(
                    "decoder_target_tokens (padding mask) is required unless decode=True."
                )
            mask = masks.make_decoder_mask(
                decoder_target_tokens,
                dtype=dtype,
                decoder_causal_attention=decoder_causal_attention,
                decoder_segment_ids=decoder_segment_ids,
            )
        bias_length = max_decode_length if decode and max_decode_length else length
        rel_emb = attention_lib.RelativePositionBiases(
            num_buckets=cfg.num_buckets,
            max_distance=cfg.max_distance,
            num_heads=cfg.num_heads,
            dtype=dtype,
            name="relpos_bias",
        )
        bias = rel_emb(bias_length, bias_length, False)

        embedder, y = blocks.embed_tokens(cfg, decoder_input_tokens, deterministic, dtype)
        for i in range(cfg.num_layers):
            y = DecoderLayer(cfg, name=f"layers_{i}")(
                y, mask, bias, deterministic=deterministic, decode=decode
            )
        return blocks.output_logits(
            cfg, y, embedder, deterministic=deterministic, return_hidden=return_hidden
        )


class DecoderWrapper(nn.Module):
    """Decoder-only LM with T5X decoder_only's call signature; parameters live under `decoder/`."""

    config: DecoderOnlyConfig

    def setup(self):
        self.decoder = Decoder(self.config, name="decoder")

    def __call__(
        self,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array | None = None,
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
        """Logits [batch, length, vocab] (float32).

        Args:
          decoder_input_tokens: [batch, length] int ids (targets shifted right, BOS 0).
          decoder_target_tokens: [batch, length]; only `> 0` is used (padding mask). Not needed with decode=True.
          decoder_segment_ids: [batch, length] packing ids (0 = padding).
          decoder_positions: accepted for T5X compatibility (relative positions only).
          decoder_causal_attention: [batch, length] 1 on the prefix-LM "inputs" region (bidirectional there).
          enable_dropout: apply dropout (needs a 'dropout' rng).
          decode: create (first call, full-length zeros) or use (later calls, [batch, 1]) the KV cache.
          max_decode_length: cache length (defaults to the cache's own length).
          prefill, prefill_lengths: T5X's in-module prefill is not supported (scalar cache index); use
            `prefill_cache`.
          return_hidden: return a chunked_loss.OutputHead (final hidden states and the output projection,
            unapplied) instead of logits, for the vocabulary-chunked loss.
        """
        return self.decoder(
            decoder_input_tokens,
            decoder_target_tokens,
            decoder_segment_ids,
            decoder_positions,
            decoder_causal_attention,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
            prefill=prefill,
            prefill_lengths=prefill_lengths,
            return_hidden=return_hidden,
        )


# Gin name `decoder.DecoderWrapper` (flax modules cannot take the decorator form).
gin.external_configurable(DecoderWrapper, module="iqlearn_jax.networks.decoder")


def _is_kv_projection(module: nn.Module, method_name: str) -> bool:
    return method_name == "__call__" and module.name in ("key", "value")


def prefill_cache(
    module: DecoderWrapper,
    params: Any,
    decoder_input_tokens: Array,
    prompt_lengths: Array,
    decoder_causal_attention: Array | None,
) -> tuple[Any, Array, Array]:
    """Run the prompts through one full forward pass and return a KV cache ready to decode after them.

    Every row's prompt (decoder input positions 0..prompt_lengths[b], i.e. BOS, the prompt tokens, and the
    token fed at the first decoding step) is right-aligned so that all rows continue from the same scalar cache
    index `start = max(prompt_lengths)`: row b is shifted right by `start - prompt_lengths[b]`. T5 attention only
    sees relative positions, and the shifted-in slots are masked through `cache_key_mask`, so each row's logits are
    exactly those of its unshifted sequence. The cache holds the keys/values of slots < start; the first decoding
    step feeds `aligned_tokens[:, start]`.

    Args:
      module: the network.
      params: its parameters.
      decoder_input_tokens: [batch, length] int, the sequence layout of seqio's decoder feature converters.
      prompt_lengths: [batch] int in [0, length): position of the last prompt token to feed (T5X's
        `sum(decoder_causal_attention) - 1`); 0 means "no prompt" (start from BOS).
      decoder_causal_attention: [batch, length] or None. If given, the prompt region (positions 0..prompt_lengths)
        attends bidirectionally (prefix-LM); otherwise causally.

    Returns:
      cache (the "cache" collection, length = input length), aligned_tokens [batch, length] (prompt tokens at
      their shifted slots, zeros elsewhere), start (int32 scalar).
    """
    tokens = decoder_input_tokens.astype(jnp.int32)
    batch, length = tokens.shape
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    start = jnp.max(prompt_lengths)
    shift = start - prompt_lengths
    slots = jnp.arange(length)
    src = slots[None, :] - shift[:, None]
    in_prompt = (src >= 0) & (src <= prompt_lengths[:, None])
    aligned = jnp.where(
        in_prompt, jnp.take_along_axis(tokens, jnp.clip(src, 0, length - 1), axis=1), 0
    )
    region = in_prompt.astype(jnp.int32)

    _, initial = module.apply(
        {"params": params}, aligned, aligned, decode=True, enable_dropout=False, mutable=["cache"]
    )
    _, captured = module.apply(
        {"params": params},
        aligned,
        region,  # valid (non-padding) positions for the attention mask
        decoder_segment_ids=region,  # the same, for networks that never read padding from token ids (llama.py)
        decoder_causal_attention=region if decoder_causal_attention is not None else None,
        decode=False,
        enable_dropout=False,
        capture_intermediates=_is_kv_projection,
        mutable=["intermediates"],
    )
    keep = ((src >= 0) & (slots[None, :] < start)).astype(jnp.float32)  # [batch, length]

    def fill(path, leaf):
        names = [getattr(p, "key", str(p)) for p in path]
        if names[-1] == "cache_key_mask":
            return (slots[None, :] >= shift[:, None]).astype(leaf.dtype)
        if names[-1] == "cache_index":
            return start.astype(leaf.dtype)
        kind = {"cached_key": "key", "cached_value": "value"}[names[-1]]
        node = captured["intermediates"]
        for name in names[:-1]:
            node = node[name]
        projected = node[kind]["__call__"][0]  # [batch, length, heads, head_dim]
        projected = projected * keep[:, :, None, None].astype(projected.dtype)
        return jnp.moveaxis(projected, 1, -1).astype(leaf.dtype)

    cache = jax.tree_util.tree_map_with_path(fill, initial["cache"])
    return cache, aligned, start
