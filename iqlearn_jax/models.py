"""T5X-style model classes: a network, an `Objective`, and the batch feature names they agree on.

`EncoderDecoderModel` (networks/t5.py `Transformer`) and `DecoderOnlyModel` (networks/decoder.py `DecoderWrapper`)
offer T5X's model interface, so the trainer, the evaluator and `t5x.train` can drive them:

    get_initial_variables(rng, input_shapes, input_types=None) -> {'params', 'params_axes'}
    loss_fn(params, batch, dropout_rng, step=None) -> (loss, metrics)   # logits computed once, then the Objective
    eval_fn(params, batch) -> (loss, metrics)                           # no dropout
    score_batch(params, batch, return_intermediates=False)              # Σ_t w_t log π(y_t | s_t) per sequence
    predict_batch_with_aux(params, batch, rng=None, decoder_params=None, num_decodes=1, return_all_decodes=False)

plus a step-wise decoding API (`start_decoding`, `advance_decoding`) for drivers that must inject tokens from
Python, e.g. the GSM8k calculator. Nothing here is jitted: callers jit (the trainer jits `loss_fn` with shardings).

Batch features are SeqIO's: encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
decoder_loss_weights, *_segment_ids, *_positions, decoder_causal_attention. PAD = 0, EOS = 1 unless the vocabulary
says otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax
import gin
import jax
import jax.numpy as jnp
import seqio
from flax import linen as nn

from iqlearn_jax import decoding
from iqlearn_jax.model_base import (  # noqa: F401  (DecodingState is part of this module's API)
    BaseTransformerModel,
    DecodingState,
    advance_state,
    check_features,
    loss_weights,
)
from iqlearn_jax.networks.decoder import prefill_cache
from iqlearn_jax.objectives import Objective

Array = jax.Array
PyTree = Any
Batch = Mapping[str, Array]
DecodeFn = Callable[..., tuple[Array, Array]]

# Decoding functions as gin configurables: `DecoderOnlyModel.decode_fn = @decoding.temperature_sample` and
# `decoding.temperature_sample.temperature = 0.7` etc.
temperature_sample = gin.external_configurable(
    decoding.temperature_sample, module="iqlearn_jax.decoding"
)
beam_search = gin.external_configurable(decoding.beam_search, module="iqlearn_jax.decoding")


@gin.configurable
class EncoderDecoderModel(BaseTransformerModel):
    """Encoder-decoder model (networks/t5.py `Transformer`, or any module with T5X's call/encode/decode API)."""

    FEATURE_CONVERTER_CLS = seqio.EncDecFeatureConverter
    _REQUIRED = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")

    def __init__(
        self,
        module: nn.Module,
        objective: Objective | None = None,
        input_vocabulary: seqio.Vocabulary | None = None,
        output_vocabulary: seqio.Vocabulary | None = None,
        decode_fn: DecodeFn = decoding.beam_search,
        feature_converter_cls: type[seqio.FeatureConverter] | None = None,
    ):
        super().__init__(
            module, objective, input_vocabulary, output_vocabulary, decode_fn, feature_converter_cls
        )

    def get_initial_variables(
        self,
        rng: Array,
        input_shapes: Mapping[str, tuple[int, ...]],
        input_types: Mapping[str, jnp.dtype] | None = None,
    ) -> dict[str, PyTree]:
        """Initial 'params' and 'params_axes' (logical axis names of every parameter)."""
        types = dict(input_types or {})

        def ones(name):
            if name not in input_shapes:
                return None
            return jnp.ones(input_shapes[name], types.get(name, jnp.int32))

        check_features(
            input_shapes, ("encoder_input_tokens", "decoder_input_tokens"), "input_shapes"
        )
        variables = self.module.init(
            rng,
            ones("encoder_input_tokens"),
            ones("decoder_input_tokens"),
            ones("decoder_input_tokens"),
            encoder_segment_ids=ones("encoder_segment_ids"),
            decoder_segment_ids=ones("decoder_segment_ids"),
            encoder_positions=ones("encoder_positions"),
            decoder_positions=ones("decoder_positions"),
            decode=False,
            enable_dropout=False,
        )
        return flax.core.unfreeze(variables)

    def _compute_logits(
        self,
        params: PyTree,
        batch: Batch,
        dropout_rng: Array | None = None,
        return_hidden: bool = False,
    ) -> Array:
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        extra = {"return_hidden": True} if return_hidden else {}  # OutputHead for the chunked loss
        return self.module.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            encoder_segment_ids=batch.get("encoder_segment_ids"),
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            encoder_positions=batch.get("encoder_positions"),
            decoder_positions=batch.get("decoder_positions"),
            decode=False,
            enable_dropout=rngs is not None,
            rngs=rngs,
            **extra,
        )

    def _tokens_to_logits(
        self,
        token_ids: Array,
        cache: PyTree,
        *,
        params: PyTree,
        extras: dict[str, Array],
        max_length: int,
    ) -> tuple[Array, PyTree]:
        """[rows, 1] ids -> ([rows, vocab] logits, new cache)."""
        logits, new_vars = self.module.apply(
            {"params": params, "cache": cache},
            extras["encoded"],
            extras["raw_inputs"],
            token_ids,
            token_ids,
            enable_dropout=False,
            decode=True,
            max_decode_length=max_length,
            mutable=["cache"],
            method=self.module.decode,
        )
        return logits[:, 0], new_vars["cache"]

    def _setup_decoding(
        self, params: PyTree, batch: Batch, num_decodes: int
    ) -> tuple[PyTree, dict[str, Array], int]:
        check_features(
            batch, ("encoder_input_tokens", "decoder_input_tokens"), "EncoderDecoderModel"
        )
        inputs = batch["encoder_input_tokens"]
        target_shape = batch["decoder_input_tokens"].shape
        _, initial = self.module.apply(
            {"params": params},
            jnp.ones(inputs.shape, inputs.dtype),
            jnp.ones(target_shape, jnp.int32),
            jnp.ones(target_shape, jnp.int32),
            decode=True,
            enable_dropout=False,
            mutable=["cache"],
        )
        encoded = self.module.apply(
            {"params": params}, inputs, enable_dropout=False, method=self.module.encode
        )
        extras = {
            "encoded": decoding.flat_batch_beam_expand(encoded, num_decodes),
            "raw_inputs": decoding.flat_batch_beam_expand(inputs, num_decodes),
        }
        return initial["cache"], extras, target_shape[1]

    def predict_batch_with_aux(
        self,
        params: PyTree,
        batch: Batch,
        rng: Array | None = None,
        decoder_params: Mapping[str, Any] | None = None,
        num_decodes: int = 1,
        return_all_decodes: bool = False,
    ) -> tuple[Array, dict[str, Array]]:
        """Decode targets for `encoder_input_tokens`; length = decoder_input_tokens' length.

        Returns (tokens, {'scores': ...}): [batch, length] and [batch] for the best decode, or
        [batch, num_decodes, length] and [batch, num_decodes] (increasing score) with `return_all_decodes`.
        """
        cache, extras, max_length = self._setup_decoding(params, batch, num_decodes)
        tokens_to_logits = functools.partial(
            self._tokens_to_logits, params=params, extras=extras, max_length=max_length
        )
        decodes, scores = self._run_decode_fn(
            jnp.zeros_like(batch["decoder_input_tokens"], jnp.int32),
            cache,
            tokens_to_logits,
            rng,
            decoder_params,
            num_decodes,
        )
        if return_all_decodes:
            return decodes, {"scores": scores}
        return decodes[:, -1], {"scores": scores[:, -1]}

    def start_decoding(self, params: PyTree, batch: Batch, num_decodes: int = 1) -> DecodingState:
        """Encode the inputs, feed BOS; `state.logits` [batch * num_decodes, vocab] is the first target's."""
        cache, extras, max_length = self._setup_decoding(params, batch, num_decodes)
        cache = decoding.expand_cache(cache, num_decodes)
        rows = batch["encoder_input_tokens"].shape[0] * num_decodes
        state = DecodingState(
            cache=cache,
            logits=jnp.zeros((rows, 1), jnp.float32),
            position=jnp.int32(0),
            extras=extras,
            max_length=max_length,
        )
        return self.advance_decoding(params, state, jnp.zeros((rows,), jnp.int32))

    def advance_decoding(
        self, params: PyTree, state: DecodingState, tokens: Array
    ) -> DecodingState:
        """Feed `tokens` ([rows] or [rows, n]) through the cache; see `advance_state`."""
        return advance_state(self._tokens_to_logits, params, state, tokens)


@gin.configurable
class DecoderOnlyModel(BaseTransformerModel):
    """Decoder-only LM (networks/decoder.py `DecoderWrapper`), causal or prefix-LM.

    With `inputs_bidirectional_attention=True` (prefix-LM) the batch must carry `decoder_causal_attention`
    (seqio.PrefixLMFeatureConverter) and the "inputs" part attends bidirectionally, in training and decoding.
    Loss weights come from `decoder_loss_weights`, so the prompt part is not trained on.
    """

    FEATURE_CONVERTER_CLS = seqio.DecoderFeatureConverter

    def __init__(
        self,
        module: nn.Module,
        objective: Objective | None = None,
        input_vocabulary: seqio.Vocabulary | None = None,
        output_vocabulary: seqio.Vocabulary | None = None,
        decode_fn: DecodeFn = decoding.temperature_sample,
        inputs_bidirectional_attention: bool = False,
        feature_converter_cls: type[seqio.FeatureConverter] | None = None,
    ):
        if output_vocabulary is None:
            output_vocabulary = input_vocabulary
        super().__init__(
            module, objective, input_vocabulary, output_vocabulary, decode_fn, feature_converter_cls
        )
        self._inputs_bidirectional_attention = bool(inputs_bidirectional_attention)

    def _causal_attention(self, batch: Batch) -> Array | None:
        if not self._inputs_bidirectional_attention:
            return None
        if "decoder_causal_attention" not in batch:
            raise ValueError(
                "inputs_bidirectional_attention=True needs the 'decoder_causal_attention' feature "
                f"(seqio.PrefixLMFeatureConverter); batch has {sorted(batch)}"
            )
        return batch["decoder_causal_attention"]

    def get_initial_variables(
        self,
        rng: Array,
        input_shapes: Mapping[str, tuple[int, ...]],
        input_types: Mapping[str, jnp.dtype] | None = None,
    ) -> dict[str, PyTree]:
        """Initial 'params' and 'params_axes' (logical axis names of every parameter)."""
        check_features(input_shapes, ("decoder_input_tokens",), "input_shapes")
        shape = input_shapes["decoder_input_tokens"]
        dtype = dict(input_types or {}).get("decoder_input_tokens", jnp.int32)
        variables = self.module.init(
            rng, jnp.ones(shape, dtype), jnp.ones(shape, dtype), enable_dropout=False
        )
        return flax.core.unfreeze(variables)

    def _compute_logits(
        self,
        params: PyTree,
        batch: Batch,
        dropout_rng: Array | None = None,
        return_hidden: bool = False,
    ) -> Array:
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        extra = {"return_hidden": True} if return_hidden else {}  # OutputHead for the chunked loss
        return self.module.apply(
            {"params": params},
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            decoder_positions=batch.get("decoder_positions"),
            decoder_causal_attention=self._causal_attention(batch),
            decode=False,
            enable_dropout=rngs is not None,
            rngs=rngs,
            **extra,
        )

    def _tokens_to_logits(
        self,
        token_ids: Array,
        cache: PyTree,
        *,
        params: PyTree,
        extras: dict[str, Array],
        max_length: int,
    ) -> tuple[Array, PyTree]:
        del extras
        logits, new_vars = self.module.apply(
            {"params": params, "cache": cache},
            token_ids,
            None,
            enable_dropout=False,
            decode=True,
            max_decode_length=max_length,
            mutable=["cache"],
        )
        return logits[:, 0], new_vars["cache"]

    def _prompt_lengths(self, batch: Batch) -> Array:
        tokens = batch["decoder_input_tokens"]
        if "decoder_causal_attention" not in batch:
            if self._inputs_bidirectional_attention:
                self._causal_attention(batch)  # raises
            return jnp.zeros((tokens.shape[0],), jnp.int32)
        return jnp.maximum(jnp.sum(batch["decoder_causal_attention"], axis=1) - 1, 0).astype(
            jnp.int32
        )

    def _prefill(self, params: PyTree, batch: Batch) -> tuple[PyTree, Array, Array]:
        check_features(batch, ("decoder_input_tokens",), "DecoderOnlyModel")
        return prefill_cache(
            self.module,
            params,
            batch["decoder_input_tokens"],
            self._prompt_lengths(batch),
            batch.get("decoder_causal_attention") if self._inputs_bidirectional_attention else None,
        )

    def predict_batch_with_aux(
        self,
        params: PyTree,
        batch: Batch,
        rng: Array | None = None,
        decoder_params: Mapping[str, Any] | None = None,
        num_decodes: int = 1,
        return_all_decodes: bool = False,
    ) -> tuple[Array, dict[str, Array]]:
        """Continue each prompt (the `decoder_causal_attention` region, as T5X) and return only the continuation.

        Prompts are right-aligned in the cache (networks.decoder.prefill_cache), so every row can generate
        `length - max(prompt_lengths) ` tokens at most, where length = decoder_input_tokens' length. Without
        `decoder_causal_attention` decoding starts from BOS. Returns (tokens, {'scores': ...}) shaped as
        `EncoderDecoderModel.predict_batch_with_aux`; tokens are the continuation left-aligned, 0-padded.
        """
        cache, aligned, start = self._prefill(params, batch)
        batch_size, length = aligned.shape
        tokens_to_logits = functools.partial(
            self._tokens_to_logits, params=params, extras={}, max_length=length
        )
        decodes, scores = self._run_decode_fn(
            aligned,
            cache,
            tokens_to_logits,
            rng,
            decoder_params,
            num_decodes,
            initial_index=jnp.full((batch_size,), start, jnp.int32),
        )
        decodes = decoding.remove_prefix(decodes, jnp.full((batch_size,), start, jnp.int32))
        if return_all_decodes:
            return decodes, {"scores": scores}
        return decodes[:, -1], {"scores": scores[:, -1]}

    def start_decoding(self, params: PyTree, batch: Batch, num_decodes: int = 1) -> DecodingState:
        """Prefill the prompts and feed each prompt's last token; `state.logits` is the first new token's."""
        cache, aligned, start = self._prefill(params, batch)
        rows = aligned.shape[0] * num_decodes
        state = DecodingState(
            cache=decoding.expand_cache(cache, num_decodes),
            logits=jnp.zeros((rows, 1), jnp.float32),
            position=start,
            extras={},
            max_length=aligned.shape[1],
        )
        last = jnp.take(aligned, start, axis=1)
        return self.advance_decoding(
            params, state, decoding.flat_batch_beam_expand(last, num_decodes)
        )

    def advance_decoding(
        self, params: PyTree, state: DecodingState, tokens: Array
    ) -> DecodingState:
        """Feed `tokens` ([rows] or [rows, n]) through the cache; see `advance_state`."""
        return advance_state(self._tokens_to_logits, params, state, tokens)
