"""What the T5X-style model classes share: the step-wise decoding state, objective plumbing, scoring and decoding.

`models.py` holds the two concrete classes (encoder-decoder and decoder-only); they differ only in how they call
their network. Nothing here is jitted: callers jit (the trainer jits `loss_fn` with shardings).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import seqio
from flax import linen as nn
from flax import struct

from iqlearn_jax import chunked_loss, decoding, losses
from iqlearn_jax.objectives import Objective

Array = jax.Array
PyTree = Any
Batch = Mapping[str, Array]
DecodeFn = Callable[..., tuple[Array, Array]]


@struct.dataclass
class DecodingState:
    """Where a step-wise decode stands. All rows share one cache position.

    Attributes:
      cache: the network's "cache" collection for `rows` = batch * num_decodes rows.
      logits: [rows, vocab] float32 logits of the next token.
      position: int32 scalar, number of cache slots filled (the next token is written there).
      extras: model-specific constants (encoded inputs for encoder-decoder models).
      max_length: cache length (static); `advance_decoding` beyond it is refused.
    """

    cache: PyTree
    logits: Array
    position: Array
    extras: dict[str, Array]
    max_length: int = struct.field(pytree_node=False)


def loss_weights(batch: Batch) -> Array:
    if "decoder_loss_weights" in batch:
        return batch["decoder_loss_weights"]
    return (batch["decoder_target_tokens"] > 0).astype(jnp.float32)


def check_features(batch: Batch, required: tuple[str, ...], model: str) -> None:
    missing = [name for name in required if name not in batch]
    if missing:
        raise ValueError(f"{model} batch lacks feature(s) {missing}; got {sorted(batch)}")


class BaseTransformerModel:
    """Shared logic: objective application, scoring, decoding plumbing. Subclasses supply the network calls."""

    FEATURE_CONVERTER_CLS: type[seqio.FeatureConverter]
    _REQUIRED: tuple[str, ...] = ("decoder_input_tokens", "decoder_target_tokens")

    def __init__(
        self,
        module: nn.Module,
        objective: Objective | None = None,
        input_vocabulary: seqio.Vocabulary | None = None,
        output_vocabulary: seqio.Vocabulary | None = None,
        decode_fn: DecodeFn | None = None,
        feature_converter_cls: type[seqio.FeatureConverter] | None = None,
    ):
        self.module = module
        self.objective = Objective() if objective is None else objective
        if not isinstance(self.objective, Objective):
            raise ValueError(
                f"objective must be an iqlearn_jax.objectives.Objective, got {objective!r}"
            )
        self._input_vocabulary = input_vocabulary
        self._output_vocabulary = output_vocabulary
        self._decode_fn = decode_fn
        # A Hugging Face tokenizer's EOS must be the objective's terminal state (tasks/hf_vocab.py).
        for vocab in (input_vocabulary, output_vocabulary):
            if getattr(vocab, "tokenizer_eos_id", None) is not None:
                from iqlearn_jax.tasks.hf_vocab import check_objective_eos

                check_objective_eos(vocab, self.objective.eos_id)
        if feature_converter_cls is not None:
            self.FEATURE_CONVERTER_CLS = feature_converter_cls

    @property
    def input_vocabulary(self) -> seqio.Vocabulary | None:
        return self._input_vocabulary

    @property
    def output_vocabulary(self) -> seqio.Vocabulary | None:
        return self._output_vocabulary

    @property
    def decode_fn(self) -> DecodeFn:
        return self._decode_fn

    def with_decode_fn(self, decode_fn: DecodeFn) -> BaseTransformerModel:
        """A shallow copy of this model that decodes with `decode_fn` (e.g. beam search instead of sampling)."""
        clone = copy.copy(self)
        clone._decode_fn = decode_fn
        return clone

    @property
    def eos_id(self) -> int:
        vocab = self._output_vocabulary
        return int(vocab.eos_id) if vocab is not None else int(self.objective.eos_id)

    # ---- to be provided by subclasses ----------------------------------------------------------------------

    def _compute_logits(
        self,
        params: PyTree,
        batch: Batch,
        dropout_rng: Array | None = None,
        return_hidden: bool = False,
    ) -> Array:
        """Logits [batch, length, vocab]; with `return_hidden` a chunked_loss.OutputHead instead."""
        raise NotImplementedError

    def compute_output(
        self, params: PyTree, batch: Batch, dropout_rng: Array | None = None
    ) -> Array | chunked_loss.ChunkedLogits:
        """What the objective consumes: logits [batch, length, vocab], or with `objective.vocab_chunk_size` a
        `ChunkedLogits` (hidden states + output projection) that losses.py reduces chunk by chunk."""
        chunk = self.objective.vocab_chunk_size
        if chunk is None:
            return self._compute_logits(params, batch, dropout_rng)
        head = self._compute_logits(params, batch, dropout_rng, return_hidden=True)
        return chunked_loss.ChunkedLogits(head, chunk)

    # ---- training / evaluation ---------------------------------------------------------------------------

    def loss_fn(
        self,
        params: PyTree,
        batch: Batch,
        dropout_rng: Array | None,
        step: Array | int | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        """Objective on one batch: (scalar loss, dict of float32 scalar metrics).

        Logits are computed once (dropout on when `dropout_rng` is given), or chunk by chunk when the objective
        sets `vocab_chunk_size`; `step` drives the λ warm-up.
        """
        check_features(batch, self._REQUIRED, type(self).__name__)
        logits = self.compute_output(params, batch, dropout_rng)
        return self.objective(
            logits,
            batch["decoder_target_tokens"],
            loss_weights(batch),
            segment_ids=batch.get("decoder_segment_ids"),
            step=step,
        )

    def eval_fn(self, params: PyTree, batch: Batch) -> tuple[Array, dict[str, Array]]:
        """`loss_fn` without dropout, with λ after warm-up."""
        return self.loss_fn(params, batch, dropout_rng=None, step=None)

    def score_batch(
        self, params: PyTree, batch: Batch, return_intermediates: bool = False
    ) -> Array | tuple[Array, dict[str, Array]]:
        """Sequence log-likelihood Σ_t w_t log π(y_t | s_t): float32 [batch].

        With `return_intermediates`, also a dict of [batch, length] float32 arrays:
          token_log_probs  log π(y_t | s_t) · w_t
          values           V(s_t) = logsumexp(logits_t) (padded vocabulary rows masked if the objective says so)
          entropies        H(π(·|s_t)) in nats, the policy's predictive entropy at every position
          rewards          implicit rewards r_t = Q(s_t, y_t) − γ V(s_{t+1}) (γ of the objective), 0 where undefined
          td_mask          1 where r_t is defined (losses.implicit_rewards)
          sequence_rewards [batch] Σ_t td_mask·r_t (with γ = 1 this is log π(y|x) + V(s_0) on complete sequences)
          loss_weights, target_tokens (copied from the batch)
        """
        check_features(batch, self._REQUIRED, type(self).__name__)
        output = self.compute_output(params, batch, dropout_rng=None)
        targets = batch["decoder_target_tokens"]
        weights = loss_weights(batch).astype(jnp.float32)
        terms = losses.token_terms(output, targets, self.objective.valid_vocab_size)
        token_log_probs = terms["log_prob"].astype(jnp.float32) * weights
        sequence_scores = token_log_probs.sum(-1)
        if not return_intermediates:
            return sequence_scores
        rewards, td_mask = losses.rewards_from_terms(
            terms,
            targets,
            weights,
            gamma=self.objective.gamma,
            eos_id=self.objective.eos_id,
            segment_ids=batch.get("decoder_segment_ids"),
        )
        rewards = rewards * td_mask
        return sequence_scores, {
            "token_log_probs": token_log_probs,
            "values": terms["value"],
            "entropies": terms["entropy"],
            "rewards": rewards,
            "td_mask": td_mask,
            "sequence_rewards": jnp.sum(rewards * td_mask, axis=-1),
            "loss_weights": weights,
            "target_tokens": targets,
        }

    # ---- decoding ------------------------------------------------------------------------------------------

    def _run_decode_fn(
        self,
        inputs: Array,
        cache: PyTree,
        tokens_to_logits: decoding.TokensToLogits,
        rng: Array | None,
        decoder_params: Mapping[str, Any] | None,
        num_decodes: int,
        **kwargs,
    ) -> tuple[Array, Array]:
        decoder_params = dict(decoder_params or {})
        if "decode_rng" in decoder_params and rng is not None:
            raise ValueError(
                "pass the decoding rng either as rng= or as decoder_params['decode_rng'], not both"
            )
        if rng is not None:
            decoder_params["decode_rng"] = rng
        return self.decode_fn(
            inputs=inputs,
            cache=cache,
            tokens_to_logits=tokens_to_logits,
            eos_id=self.eos_id,
            num_decodes=num_decodes,
            **kwargs,
            **decoder_params,
        )


def advance_state(
    tokens_to_logits: Callable[..., tuple[Array, PyTree]],
    params: PyTree,
    state: DecodingState,
    tokens: Array,
) -> DecodingState:
    """Feed `tokens` [rows] or [rows, n] (one position per column, all rows together) through the cache.

    Returns the state whose `logits` are those following the last fed token and whose `position` grew by n.
    Sampled and forced tokens (e.g. the calculator's `result>>`) go through the same call. Feeding past the cache
    length is refused when the position is known (outside jit); inside jit, keep position + n <= max_length.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim == 1:
        tokens = tokens[:, None]
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [rows] or [rows, n], got shape {tokens.shape}")
    n = tokens.shape[1]
    try:
        position = int(state.position)
    except jax.errors.ConcretizationTypeError:  # traced: the caller keeps within the cache
        position = None
    if position is not None:
        if position + n > state.max_length:
            raise ValueError(
                f"cannot feed {n} token(s) at position {position}: the cache holds {state.max_length} positions"
            )
    step = functools.partial(
        tokens_to_logits, params=params, extras=state.extras, max_length=state.max_length
    )

    def body(cache, column):
        logits, cache = step(column[:, None], cache)
        return cache, logits.astype(jnp.float32)

    cache, logits = jax.lax.scan(body, state.cache, tokens.T)
    return state.replace(cache=cache, logits=logits[-1], position=state.position + n)
