"""GSM8k decoding with a calculator: sample step by step, and whenever a row's text ends in an unclosed
``<<expr=``, force the tokens of ``result>>`` (``calculator.calculator_completion``) before sampling resumes.

Driven through the models' step-wise API (``start_decoding`` / ``advance_decoding``, one position per call for
all rows together): every row receives exactly one token per step, either its next pending calculator token or
a freshly sampled one, so rows stay aligned on the shared cache position. Expressions the safe evaluator refuses
(names, ``**``, division by zero, too long or too large) leave the text alone and the model continues on its own.

Output layout equals ``predict_batch_with_aux(..., return_all_decodes=True)``'s: tokens [batch, num_decodes,
length] (the continuation, left-aligned, 0 after EOS). Injected tokens count as generated tokens; scoring them with
``score_batch`` afterwards gives the model's own log-probabilities of the whole text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from iqlearn_jax import decoding
from iqlearn_jax.calculator import calculator_completion


@dataclasses.dataclass
class CalculatorStats:
    """Counts over one decode: annotations completed by the calculator and tokens it injected."""

    calls: int = 0
    injected_tokens: int = 0


def completion_ids(
    vocabulary: seqio.Vocabulary, prefix_ids: list[int], prefix_text: str, completion: str
) -> list[int]:
    """Token ids that continue ``prefix_ids`` with ``completion``.

    Encoding the completion alone can differ from its tokens in context (SentencePiece adds a word-initial "▁",
    which would decode as "= 24>>"); so the whole text is re-encoded and, when its tokens start with
    ``prefix_ids``, the rest is used. Otherwise (the tokenizer merged across the boundary) the completion is
    encoded alone.
    """
    full = [int(t) for t in vocabulary.encode(prefix_text + completion)]
    if full[: len(prefix_ids)] == [int(t) for t in prefix_ids] and len(full) > len(prefix_ids):
        return full[len(prefix_ids) :]
    return [int(t) for t in vocabulary.encode(completion)]


class CalculatorDecoder:
    """Step-wise sampler with the calculator hook for one model (jitted steps are cached across batches).

    Args:
      model: an ``EncoderDecoderModel`` or ``DecoderOnlyModel`` (anything with ``start_decoding`` /
        ``advance_decoding`` and ``eos_id``).
      vocabulary: the output vocabulary (decodes row prefixes, encodes the calculator's results).
      temperature: 0 = greedy; otherwise sampling with ``topk`` / ``topp`` as ``decoding.sample_logits``.
      num_decodes: samples per input (rows of one input are adjacent).
      max_decode_len: at most this many tokens per row (default: as many as the cache allows).
    """

    def __init__(
        self,
        model: Any,
        vocabulary: seqio.Vocabulary,
        temperature: float = 0.0,
        num_decodes: int = 1,
        topk: int = 0,
        topp: float = 0.0,
        max_decode_len: int | None = None,
    ):
        if num_decodes < 1:
            raise ValueError(f"num_decodes must be >= 1, got {num_decodes}")
        self.model = model
        self.vocabulary = vocabulary
        self.num_decodes = num_decodes
        self.max_decode_len = max_decode_len
        self._start = jax.jit(
            lambda params, batch: model.start_decoding(params, batch, num_decodes)
        )
        self._advance = jax.jit(model.advance_decoding)
        self._sample = jax.jit(
            lambda logits, rng: decoding.sample_logits(
                logits, rng, temperature=temperature, topk=topk, topp=topp
            )
        )

    def __call__(
        self, params: Any, batch: Mapping[str, np.ndarray], rng: jax.Array
    ) -> tuple[np.ndarray, CalculatorStats]:
        """Decodes ``batch``; returns (tokens int32 [batch, num_decodes, length], stats)."""
        eos = int(self.model.eos_id)
        length = int(batch["decoder_input_tokens"].shape[1])
        state = self._start(params, dict(batch))
        rows = int(state.logits.shape[0])
        position = int(state.position)
        steps = state.max_length - position + 1  # the last token is sampled but never fed
        out = np.zeros((rows, length), np.int32)
        done = np.zeros((rows,), bool)
        pending: list[list[int]] = [[] for _ in range(rows)]
        stats = CalculatorStats()
        if self.max_decode_len is not None:
            steps = min(steps, self.max_decode_len)
        for i in range(min(steps, length)):
            rng, step_rng = jax.random.split(rng)
            tokens = np.asarray(self._sample(state.logits, step_rng), np.int32).copy()
            forced = np.zeros((rows,), bool)
            for r in range(rows):
                if pending[r]:
                    tokens[r] = pending[r].pop(0)
                    forced[r] = True
            tokens[done] = 0
            out[:, i] = tokens
            done |= tokens == eos
            for r in np.flatnonzero(~done & ~forced):
                prefix_ids = out[r, : i + 1].tolist()
                prefix_text = self.vocabulary.decode(prefix_ids)
                completion = calculator_completion(prefix_text)
                if completion is not None:
                    ids = completion_ids(self.vocabulary, prefix_ids, prefix_text, completion)
                    pending[r] = ids
                    stats.calls += 1
                    stats.injected_tokens += len(ids)
            if done.all() or position >= state.max_length:
                break
            state = self._advance(params, state, jnp.asarray(tokens))
            position += 1
        return out.reshape(rows // self.num_decodes, self.num_decodes, length), stats
