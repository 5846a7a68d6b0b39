"""Pre-norm residual sub-blocks shared by the T5 encoder/decoder layers and the decoder-only layers.

Each function is called inside a linen `@nn.compact` method and creates its submodules in the *caller's* scope, so
parameter names stay exactly T5X's (`pre_attention_layer_norm`, `attention`, `pre_mlp_layer_norm`, `mlp`, ...).
`cfg` is a T5Config or DecoderOnlyConfig: both carry num_heads, head_dim, mlp_dim, mlp_activations, dropout_rate,
float32_attention_logits, layer_norm_epsilon and activation_dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from iqlearn_jax.chunked_loss import OutputHead
from iqlearn_jax.networks import attention as attention_lib
from iqlearn_jax.networks import layers

Array = jax.Array


def constrain_embed(x: Array) -> Array:
    """Sharding constraint of a residual-stream activation [batch, length, embed]."""
    return layers.with_sharding_constraint(x, ("batch", "length", "embed"))


def check_decoder_call(decoder_input_tokens: Array, prefill: bool, prefill_lengths: Any) -> None:
    """Decoder-only call checks shared by decoder.py and llama.py: [batch, length] ids, no in-module prefill."""
    if decoder_input_tokens.ndim != 2:
        raise ValueError(
            f"decoder_input_tokens must be [batch, length], got shape {decoder_input_tokens.shape}."
        )
    if prefill or prefill_lengths is not None:
        raise ValueError(
            "prefill=True is not supported inside the module (its cache has one scalar index); use "
            "iqlearn_jax.networks.decoder.prefill_cache, which models.DecoderOnlyModel calls."
        )


def embed_tokens(
    cfg: Any, tokens: Array, deterministic: bool, dtype: Any
) -> tuple[layers.Embed, Array]:
    """(the `token_embedder` module, embedded + dropped-out tokens [batch, length, embed] in `dtype`).

    Must be called inside a compact `__call__`; the embedder is returned for a tied output head.
    """
    embedder = layers.Embed(
        num_embeddings=cfg.vocab_size,
        features=cfg.emb_dim,
        dtype=dtype,
        attend_dtype=jnp.float32,
        embedding_init=nn.initializers.normal(stddev=1.0),
        name="token_embedder",
    )
    y = embedder(tokens.astype(jnp.int32))
    return embedder, dropout(cfg, y, deterministic).astype(dtype)


def dropout(cfg: Any, x: Array, deterministic: bool, broadcast: bool = True) -> Array:
    """Dropout at cfg.dropout_rate; `broadcast` shares the mask along the length axis (T5's convention)."""
    dims = (-2,) if broadcast else ()
    return nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=dims)(x, deterministic=deterministic)


def attention_sublayer(
    cfg: Any,
    inputs: Array,
    kv_inputs: Array | None,
    mask: Array | None,
    bias: Array | None,
    *,
    norm_name: str,
    attention_name: str,
    deterministic: bool,
    decode: bool = False,
    cross: bool = False,
) -> Array:
    """inputs + Dropout(Attention(RMSNorm(inputs), kv)) for [batch, length, embed] inputs.

    `kv_inputs` None means self-attention (keys/values from the normalised inputs); for cross-attention pass the
    encoder output [batch, enc_length, embed] and `cross=True` (its projected keys/values are cached once).
    """
    x = layers.LayerNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name=norm_name)(inputs)
    kv = x if kv_inputs is None else kv_inputs
    x = attention_lib.MultiHeadDotProductAttention(
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        dtype=cfg.activation_dtype,
        dropout_rate=cfg.dropout_rate,
        float32_logits=cfg.float32_attention_logits,
        cache_cross_kv=cross,
        name=attention_name,
    )(x, kv, mask, bias, deterministic=deterministic, decode=decode)
    return constrain_embed(dropout(cfg, x, deterministic) + inputs)


def mlp_sublayer(cfg: Any, inputs: Array, *, deterministic: bool) -> Array:
    """inputs + Dropout(MLP(RMSNorm(inputs))) with submodules `pre_mlp_layer_norm` and `mlp`."""
    y = layers.LayerNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="pre_mlp_layer_norm")(
        inputs
    )
    y = layers.MlpBlock(
        intermediate_dim=cfg.mlp_dim,
        activations=cfg.mlp_activations,
        intermediate_dropout_rate=cfg.dropout_rate,
        dtype=cfg.activation_dtype,
        name="mlp",
    )(y, deterministic=deterministic)
    return constrain_embed(dropout(cfg, y, deterministic) + inputs)


class _VocabKernel(nn.Module):
    """The `logits_dense` kernel (embed, vocab), declared exactly as DenseGeneral declares it, returned unapplied."""

    features: int

    @nn.compact
    def __call__(self, in_features: int) -> Array:
        return layers.param_with_axes(
            "kernel",
            layers.default_kernel_init,
            (in_features, self.features),
            jnp.float32,
            axes=("embed", "vocab"),
        )


def output_head(
    y: Array, vocab_size: int, embedder: Any | None, logit_scale: float = 1.0
) -> OutputHead:
    """The output projection unapplied: hidden `y` [batch, length, embed] (float32) with the tied `embedder`'s
    table [vocab, embed] (when given) or the `logits_dense` kernel [embed, vocab] (created in the caller's scope),
    for the vocabulary-chunked loss (iqlearn_jax.chunked_loss). logits = logit_scale · y @ W."""
    hidden = jnp.asarray(y, jnp.float32)
    if embedder is not None:
        table = jnp.asarray(embedder.embedding, jnp.float32)
        return OutputHead(hidden, table, vocab_axis=0, logit_scale=logit_scale)
    kernel = _VocabKernel(vocab_size, name="logits_dense")(y.shape[-1])
    return OutputHead(hidden, kernel, vocab_axis=1, logit_scale=logit_scale)


def output_logits(
    cfg: Any, y: Array, embedder: Any, *, deterministic: bool, return_hidden: bool = False
) -> Array | OutputHead:
    """Final `decoder_norm`, dropout and logits [batch, length, vocab] (float32).

    Tied to `embedder` (T5.1.0: `attend`, scaled by 1/√d_model as T5 does) when cfg.logits_via_embedding, else a
    separate `logits_dense` kernel (embed, vocab). With `return_hidden` the projection is not applied: an
    `OutputHead` (normalised hidden states + the same weight and scale) is returned for the chunked loss.
    """
    y = layers.LayerNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="decoder_norm")(y)
    y = dropout(cfg, y, deterministic)
    if return_hidden:
        tied = bool(cfg.logits_via_embedding)
        scaled = tied and getattr(cfg, "scale_tied_logits", True)
        scale = 1.0 / float(np.sqrt(y.shape[-1])) if scaled else 1.0
        return output_head(y, cfg.vocab_size, embedder if tied else None, scale)
    if cfg.logits_via_embedding:
        logits = embedder.attend(y)
        if getattr(
            cfg, "scale_tied_logits", True
        ):  # T5.1.0 scales; Llama-family (LlamaConfig) does not
            logits = logits / jnp.sqrt(jnp.float32(y.shape[-1]))
    else:
        logits = layers.DenseGeneral(
            cfg.vocab_size, dtype=jnp.float32, kernel_axes=("embed", "vocab"), name="logits_dense"
        )(y)
    return layers.with_sharding_constraint(logits, ("batch", "length", "vocab"))
