"""T5 encoder-decoder (T5.1.0 and T5.1.1) in Flax linen, T5X-compatible.

Parameter names, shapes and logical axes are those of T5X's
`examples/t5/network.py`, so T5X checkpoints load without renaming:

  token_embedder/embedding                                  (vocab, embed)
  encoder/relpos_bias/rel_embedding                         (heads, relpos_buckets)
  encoder/layers_{i}/pre_attention_layer_norm/scale         (embed,)
  encoder/layers_{i}/attention/{query,key,value}/kernel     (embed, joined_kv)
  encoder/layers_{i}/attention/out/kernel                   (joined_kv, embed)
  encoder/layers_{i}/pre_mlp_layer_norm/scale               (embed,)
  encoder/layers_{i}/mlp/{wi | wi_0, wi_1}/kernel           (embed, mlp)
  encoder/layers_{i}/mlp/wo/kernel                          (mlp, embed)
  encoder/encoder_norm/scale                                (embed,)
  decoder/relpos_bias/rel_embedding                         (heads, relpos_buckets)
  decoder/layers_{i}/{pre_self_attention_layer_norm, self_attention,
                      pre_cross_attention_layer_norm, encoder_decoder_attention,
                      pre_mlp_layer_norm, mlp}/...
  decoder/decoder_norm/scale                                (embed,)
  decoder/logits_dense/kernel                               (embed, vocab)   [T5.1.1 only]

T5.1.0 ties the output projection to the embedding and scales the decoder
output by emb_dim**-0.5 first (as T5, T5X and Hugging Face do).

The call signatures (`__call__`, `encode`, `decode`) are T5X's, so the module
also works inside T5X's own model classes. Decoding (`decode=True`) keeps a KV
cache in the flax collection "cache": one call on full-length inputs creates
it, then each call feeds one position. Cross-attention keys/values are
projected from the encoder output once, at the first step, and cached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from iqlearn_jax.networks import attention as attention_lib
from iqlearn_jax.networks import blocks, layers, masks

Array = jax.Array

_DTYPES = ("float32", "bfloat16", "float16", "auto")


def resolve_dtype(name: str) -> jnp.dtype:
    """Activation dtype from its name; 'auto' is bfloat16 on accelerators and float32 on CPU."""
    if name not in _DTYPES:
        raise ValueError(f"Unknown activation dtype {name!r}; expected one of {_DTYPES}.")
    if name == "auto":
        return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
    return jnp.dtype(name)


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 encoder-decoder.

    Attributes:
      vocab_size: embedding rows (32128 for the public T5 SentencePiece models).
      emb_dim: model width (HF d_model).
      num_heads: attention heads.
      num_encoder_layers, num_decoder_layers: stack depths.
      head_dim: per-head size (HF d_kv); joined_kv = num_heads * head_dim.
      mlp_dim: feed-forward width (HF d_ff).
      mlp_activations: ('gelu', 'linear') for T5.1.1 gated GELU (wi_0, wi_1);
        ('relu',) for T5.1.0 (wi).
      logits_via_embedding: tie the output projection to the embedding (T5.1.0).
      dropout_rate: dropout everywhere T5 applies it (disabled when
        enable_dropout=False).
      dtype: activation dtype name: 'float32', 'bfloat16', 'float16' or 'auto'
        (bfloat16 on GPU/TPU, float32 on CPU). Parameters are always float32.
      float32_attention_logits: compute attention logits in float32.
      num_buckets, max_distance: relative-position bucketing (T5: 32, 128).
      layer_norm_epsilon: RMS norm epsilon.
      one_hot_embed: embed with a one-hot matmul (T5X's TPU choice) instead of a gather.
    """

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    head_dim: int = 64
    mlp_dim: int = 2048
    mlp_activations: Sequence[str] = ("gelu", "linear")
    logits_via_embedding: bool = False
    dropout_rate: float = 0.1
    dtype: str = "float32"
    float32_attention_logits: bool = False
    num_buckets: int = 32
    max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    one_hot_embed: bool = False

    def __post_init__(self):
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        for name in (
            "vocab_size",
            "emb_dim",
            "num_heads",
            "head_dim",
            "mlp_dim",
            "num_buckets",
            "max_distance",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"T5Config.{name} must be a positive int, got {value!r}.")
        for name in ("num_encoder_layers", "num_decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"T5Config.{name} must be an int >= 1, got {value!r}.")
        if not self.mlp_activations:
            raise ValueError("T5Config.mlp_activations must name at least one activation.")
        for act in self.mlp_activations:
            layers.get_activation(act)
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate}.")
        resolve_dtype(self.dtype)

    @property
    def activation_dtype(self) -> jnp.dtype:
        return resolve_dtype(self.dtype)

    @property
    def is_gated(self) -> bool:
        return len(self.mlp_activations) > 1

    def num_params(self) -> int:
        """Number of parameters of `Transformer(self)`."""
        d, j, m = self.emb_dim, self.num_heads * self.head_dim, self.mlp_dim
        mlp = len(self.mlp_activations) * d * m + m * d
        enc_layer = 4 * d * j + mlp + 2 * d
        dec_layer = 8 * d * j + mlp + 3 * d
        total = self.vocab_size * d + 2 * self.num_heads * self.num_buckets + 2 * d
        total += self.num_encoder_layers * enc_layer + self.num_decoder_layers * dec_layer
        if not self.logits_via_embedding:
            total += d * self.vocab_size
        return total


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + MLP block with residuals."""

    config: T5Config
    relative_embedding: nn.Module

    @nn.compact
    def __call__(self, inputs: Array, encoder_mask: Array | None = None, deterministic=True):
        """[batch, length, embed] -> [batch, length, embed]."""
        length = inputs.shape[-2]
        bias = self.relative_embedding(length, length, True)
        x = blocks.attention_sublayer(
            self.config,
            inputs,
            None,
            encoder_mask,
            bias,
            norm_name="pre_attention_layer_norm",
            attention_name="attention",
            deterministic=deterministic,
        )
        return blocks.mlp_sublayer(self.config, x, deterministic=deterministic)


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention and MLP with residuals."""

    config: T5Config
    relative_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        encoded: Array,
        decoder_mask: Array | None = None,
        encoder_decoder_mask: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        """inputs [batch, length, embed], encoded [batch, enc_length, embed] -> [batch, length, embed]."""
        cfg = self.config
        length = max_decode_length if decode and max_decode_length else inputs.shape[-2]
        bias = self.relative_embedding(length, length, False)
        x = blocks.attention_sublayer(
            cfg,
            inputs,
            None,
            decoder_mask,
            bias,
            norm_name="pre_self_attention_layer_norm",
            attention_name="self_attention",
            deterministic=deterministic,
            decode=decode,
        )
        y = blocks.attention_sublayer(
            cfg,
            x,
            encoded,
            encoder_decoder_mask,
            None,
            norm_name="pre_cross_attention_layer_norm",
            attention_name="encoder_decoder_attention",
            deterministic=deterministic,
            decode=decode,
            cross=True,
        )
        return blocks.mlp_sublayer(cfg, y, deterministic=deterministic)


def _relpos(cfg: T5Config) -> attention_lib.RelativePositionBiases:
    return attention_lib.RelativePositionBiases(
        num_buckets=cfg.num_buckets,
        max_distance=cfg.max_distance,
        num_heads=cfg.num_heads,
        dtype=cfg.activation_dtype,
        name="relpos_bias",
    )


class Encoder(nn.Module):
    """Embedding, encoder layers and final norm."""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoder_input_tokens: Array, encoder_mask=None, deterministic=True):
        """Token ids [batch, length] -> encoded [batch, length, embed]."""
        cfg = self.config
        if encoder_input_tokens.ndim != 2:
            raise ValueError(
                f"encoder_input_tokens must be [batch, length], got shape {encoder_input_tokens.shape}."
            )
        rel_emb = _relpos(cfg)
        x = self.shared_embedding(encoder_input_tokens.astype(jnp.int32))
        x = blocks.dropout(cfg, x, deterministic).astype(cfg.activation_dtype)
        for i in range(cfg.num_encoder_layers):
            x = EncoderLayer(cfg, rel_emb, name=f"layers_{i}")(x, encoder_mask, deterministic)
        x = layers.LayerNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="encoder_norm")(x)
        return blocks.dropout(cfg, x, deterministic, broadcast=False)


class Decoder(nn.Module):
    """Embedding, decoder layers, final norm and output logits."""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        encoded: Array,
        decoder_input_tokens: Array,
        decoder_positions: Array | None = None,
        decoder_mask: Array | None = None,
        encoder_decoder_mask: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
        return_hidden: bool = False,
    ) -> Array:
        """Token ids [batch, length] -> logits [batch, length, vocab] (float32).

        `decoder_positions` is accepted for T5X compatibility; T5 uses relative
        positions only, so it is not needed. `return_hidden`: an OutputHead
        (final hidden states + output projection) instead of logits.
        """
        cfg = self.config
        if decoder_input_tokens.ndim != 2:
            raise ValueError(
                f"decoder_input_tokens must be [batch, length], got shape {decoder_input_tokens.shape}."
            )
        rel_emb = _relpos(cfg)
        y = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))
        y = blocks.dropout(cfg, y, deterministic).astype(cfg.activation_dtype)
        for i in range(cfg.num_decoder_layers):
            y = DecoderLayer(cfg, rel_emb, name=f"layers_{i}")(
                y,
                encoded,
                decoder_mask=decoder_mask,
                encoder_decoder_mask=encoder_decoder_mask,
                deterministic=deterministic,
                decode=decode,
                max_decode_length=max_decode_length,
            )
        return blocks.output_logits(
            cfg, y, self.shared_embedding, deterministic=deterministic, return_hidden=return_hidden
        )


class Transformer(nn.Module):
    """T5 encoder-decoder with T5X's interface (`__call__`, `encode`, `decode`)."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.shared_embedding = layers.Embed(
            num_embeddings=cfg.vocab_size,
            features=cfg.emb_dim,
            dtype=cfg.activation_dtype,
            attend_dtype=jnp.float32,
            embedding_init=nn.initializers.normal(stddev=1.0),
            one_hot=cfg.one_hot_embed,
            name="token_embedder",
        )
        self.encoder = Encoder(config=cfg, shared_embedding=self.shared_embedding)
        self.decoder = Decoder(config=cfg, shared_embedding=self.shared_embedding)

    def encode(
        self,
        encoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        enable_dropout: bool = True,
        encoder_positions: Array | None = None,
    ) -> Array:
        """Encodes token ids [batch, length] (0 = padding) -> [batch, length, embed].

        Padding tokens are masked out as keys; with `encoder_segment_ids`
        (packing) attention stays within a segment.
        """
        dtype = self.config.activation_dtype
        mask = masks.make_attention_mask(
            encoder_input_tokens > 0, encoder_input_tokens > 0, dtype=dtype
        )
        if encoder_segment_ids is not None:
            mask = masks.combine_masks(
                mask,
                masks.make_segment_mask(encoder_segment_ids, encoder_segment_ids),
                dtype=dtype,
            )
        return self.encoder(encoder_input_tokens, mask, deterministic=not enable_dropout)

    def decode(
        self,
        encoded: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
        return_hidden: bool = False,
    ) -> Array:
        """Decoder logits [batch, length, vocab] for `decoder_input_tokens` given `encoded`.

        `encoder_input_tokens` is only used for the padding mask. With
        `decode=True`: the first call (no "cache" yet, full-length inputs)
        creates the cache; each further call feeds one position
        (`decoder_input_tokens` [batch, 1]) and needs `max_decode_length` equal
        to the cache length. Packing is not allowed while decoding.
        """
        dtype = self.config.activation_dtype
        if decode:
            if encoder_segment_ids is not None or decoder_segment_ids is not None:
                raise ValueError(
                    "Packed inputs (segment ids) cannot be used with decode=True; got "
                    f"encoder_segment_ids={encoder_segment_ids is not None}, "
                    f"decoder_segment_ids={decoder_segment_ids is not None}."
                )
            decoder_mask = None
            encoder_decoder_mask = masks.make_attention_mask(
                jnp.ones_like(decoder_target_tokens), encoder_input_tokens > 0, dtype=dtype
            )
        else:
            decoder_mask = masks.make_decoder_mask(
                decoder_target_tokens, dtype=dtype, decoder_segment_ids=decoder_segment_ids
            )
            encoder_decoder_mask = masks.make_attention_mask(
                decoder_target_tokens > 0, encoder_input_tokens > 0, dtype=dtype
            )
            if encoder_segment_ids is not None:
                if decoder_segment_ids is None:
                    raise ValueError(
                        "encoder_segment_ids given without decoder_segment_ids; packed "
                        "encoder-decoder batches need both."
                    )
                encoder_decoder_mask = masks.combine_masks(
                    encoder_decoder_mask,
                    masks.make_segment_mask(decoder_segment_ids, encoder_segment_ids),
                    dtype=dtype,
                )
        return self.decoder(
            encoded,
            decoder_input_tokens=decoder_input_tokens,
            decoder_positions=decoder_positions,
            decoder_mask=decoder_mask,
            encoder_decoder_mask=encoder_decoder_mask,
            deterministic=not enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
            return_hidden=return_hidden,
        )

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        *,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
        return_hidden: bool = False,
    ) -> Array:
        """Logits [batch, dec_length, vocab] (float32) of the full model.

        Args:
          encoder_input_tokens: [batch, enc_length] int ids, 0 = padding.
          decoder_input_tokens: [batch, dec_length], targets shifted right
            (start id 0; packed segments each start with 0).
          decoder_target_tokens: [batch, dec_length], used for the padding mask.
          encoder_segment_ids, decoder_segment_ids: packing ids, 0 = padding.
          encoder_positions, decoder_positions: accepted for T5X compatibility
            (unused: T5 uses relative positions).
          enable_dropout: apply dropout (needs a 'dropout' rng).
          decode: create/use the autoregressive cache (see `decode`).
          max_decode_length: cache length for single-step decoding.
          return_hidden: return a chunked_loss.OutputHead (final hidden states
            and the output projection, unapplied) instead of logits.
        """
        encoded = self.encode(
            encoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            enable_dropout=enable_dropout,
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids=encoder_segment_ids,
            decoder_segment_ids=decoder_segment_ids,
            decoder_positions=decoder_positions,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
            return_hidden=return_hidden,
        )


def param_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """Expected parameter shapes of `Transformer(config)`, keyed by '/'-joined path."""
    dummy = jnp.ones((1, 1), jnp.int32)
    variables = jax.eval_shape(
        lambda: Transformer(config).init(
            jax.random.PRNGKey(0), dummy, dummy, dummy, enable_dropout=False
        )
    )
    flat = flatten_params(variables["params"])
    return {k: tuple(v.shape) for k, v in flat.items()}


def flatten_params(params) -> dict[str, object]:
    """Nested params dict -> {'encoder/layers_0/attention/query/kernel': array, ...}."""
    out: dict[str, object] = {}

    def visit(node, prefix):
        if hasattr(node, "items"):
            for key, value in node.items():
                visit(value, f"{prefix}/{key}" if prefix else str(key))
        else:
            out[prefix] = node

    visit(params, "")
    return out


def unflatten_params(flat: dict[str, object]) -> dict:
    """Inverse of `flatten_params`."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def validate_params(config: T5Config, params, source: str = "params") -> None:
    """Checks that `params` has exactly the names and shapes `Transformer(config)` expects.

    Raises:
      ValueError naming every missing or unexpected parameter path and every
      shape mismatch (path, expected shape, found shape), and `source`.
    """
    expected = param_shapes(config)
    found = {k: tuple(getattr(v, "shape", ())) for k, v in flatten_params(params).items()}
    problems = []
    for name in sorted(expected.keys() - found.keys()):
        problems.append(f"missing parameter {name} (expected shape {expected[name]})")
    for name in sorted(found.keys() - expected.keys()):
        problems.append(f"unexpected parameter {name} (shape {found[name]})")
    for name in sorted(expected.keys() & found.keys()):
        if expected[name] != found[name]:
            problems.append(
                f"parameter {name}: expected shape {expected[name]}, found {found[name]}"
            )
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(
            f"{source} does not match the T5 config (emb_dim={config.emb_dim}, "
            f"num_heads={config.num_heads}, head_dim={config.head_dim}, mlp_dim={config.mlp_dim}, "
            f"vocab_size={config.vocab_size}, layers={config.num_encoder_layers}+"
            f"{config.num_decoder_layers}, mlp_activations={config.mlp_activations}, "
            f"logits_via_embedding={config.logits_via_embedding}):\n  {shown}{more}"
        )
