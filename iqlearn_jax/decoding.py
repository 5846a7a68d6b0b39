"""Autoregressive decoding through a KV cache: temperature sampling (greedy, top-k, top-p) and beam search.

Everything here is a pure function of a `tokens_to_logits` callable, so it works for any network that keeps its
KV cache in a pytree (the flax "cache" collection of `networks/t5.py` and `networks/decoder.py`, or a hand-built
table in tests):

    tokens_to_logits(token_ids: int32 [n, 1], cache) -> (logits float [n, vocab], new_cache)

where `n` = batch × num_decodes (rows of one input are adjacent: `flat_batch_beam_expand`), the token fed at loop
position `i` is the decoder *input* token of that position, and the logits are those of the decoder *target* of
position `i`.

Sequence layout (as T5X): `inputs` [batch, length] holds decoder input tokens (position 0 = BOS 0). A non-zero
`inputs[b, i + 1]` is a *forced* token (a prompt): it is written instead of a sampled one and adds nothing to the
score. Decoding of example `b` starts by feeding `inputs[b, initial_index[b]]` (a decoder-only model first prefills
its cache with the positions before `initial_index`). Outputs are decoder *targets*: `decodes[b, k, i]` is the
token produced (or forced) at target position `i`, 0 after EOS. Scores are log-probabilities under the model
(temperature 1, sampled tokens only) for sampling; length-penalised log-probabilities for beam search. The
`num_decodes` axis is sorted by score in increasing order, so `[:, -1]` is the best (T5X convention).

Everything runs inside one `lax.while_loop`, is jit-compatible, and needs static shapes only: `num_decodes`,
`topk` and the input length are static; `temperature`, `topp`, `alpha` may be traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any
TokensToLogits = Callable[[Array, PyTree], tuple[Array, PyTree]]

# Large finite negative number for masked logits and empty beam slots (keeps arithmetic NaN-free).
NEG_INF = -1.0e10


# ---------------------------------------------------------------------------------------------------------------
# Batch/beam bookkeeping.


def flat_batch_beam_expand(x: Array, beam_size: int, axis: int = 0) -> Array:
    """Repeat each element along `axis` `beam_size` times in place: [a, b] -> [a, a, b, b] for beam_size 2."""
    return jnp.repeat(x, beam_size, axis=axis)


def expand_cache(cache: PyTree, beam_size: int, cache_offset: int = 0) -> PyTree:
    """`flat_batch_beam_expand` on every cache leaf whose batch axis (`cache_offset`) exists; scalars are kept."""

    def expand(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.ndim <= cache_offset:
            return leaf
        return flat_batch_beam_expand(leaf, beam_size, axis=cache_offset)

    return jax.tree_util.tree_map(expand, cache)


def _gather_cache(cache: PyTree, flat_rows: Array, n_rows: int, cache_offset: int) -> PyTree:
    """Select rows `flat_rows` [n_rows] along each leaf's batch axis (leaves without that axis are kept)."""

    def gather(leaf):
        if leaf.ndim <= cache_offset or leaf.shape[cache_offset] != n_rows:
            return leaf
        return jnp.take(leaf, flat_rows, axis=cache_offset)

    return jax.tree_util.tree_map(gather, cache)


def remove_prefix(sequences: Array, prefix_lengths: Array) -> Array:
    """Drop the first `prefix_lengths[b]` tokens of each row and shift left, padding with 0.

    sequences: [batch, ..., length] int; prefix_lengths: [batch] int. Example: [1,2,3,4,0], 2 -> [3,4,0,0,0].
    """
    length = sequences.shape[-1]
    extra = sequences.ndim - 2
    shift = jnp.asarray(prefix_lengths).reshape((-1,) + (1,) * (extra + 1))
    src = jnp.arange(length) + shift  # source index of each output position
    valid = src < length
    gathered = jnp.take_along_axis(
        sequences, jnp.broadcast_to(jnp.minimum(src, length - 1), sequences.shape), axis=-1
    )
    return jnp.where(valid, gathered, 0)


def brevity_penalty(alpha: Array | float, length: Array | int) -> Array:
    """T5X/GNMT length penalty ((5 + length) / 6) ** alpha; beam scores are log-probs divided by it."""
    return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


# ---------------------------------------------------------------------------------------------------------------
# Sampling from one step's logits.


def _check_sampling_args(temperature: Any, topk: int, topp: Any) -> None:
    if not isinstance(topk, (int, np.integer)) or topk < 0:
        raise ValueError(f"topk must be a non-negative Python int (0 = off), got {topk!r}")
    for name, value, low, high in (
        ("temperature", temperature, 0.0, np.inf),
        ("topp", topp, 0.0, 1.0),
    ):
        if isinstance(value, (int, float, np.number)) and not low <= float(value) <= high:
            raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


def filter_logits(logits: Array, *, topk: int = 0, topp: Array | float = 0.0) -> Array:
    """Mask (to NEG_INF) all tokens outside the top-k and outside the top-p nucleus.

    logits: [n, vocab] float32 (already divided by the temperature). topk = 0 disables top-k; topp = 0 (or 1)
    disables top-p. The nucleus is the smallest set of most-likely tokens whose probability reaches `topp`
    (always at least one token).
    """
    if topk and topk < logits.shape[-1]:
        kth = jax.lax.top_k(logits, topk)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if not (isinstance(topp, (int, float)) and (topp == 0.0 or topp == 1.0)):
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < topp
        # Smallest kept logit: everything below it lies outside the nucleus.
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        nucleus = jnp.where(logits < threshold, NEG_INF, logits)
        logits = jnp.where((topp > 0.0) & (topp < 1.0), nucleus, logits)
    return logits


def sample_logits(
    logits: Array,
    rng: Array,
    *,
    temperature: Array | float = 1.0,
    topk: int = 0,
    topp: Array | float = 0.0,
) -> Array:
    """Draw one token per row of `logits` [n, vocab]: int32 [n].

    temperature 0 is greedy (argmax); otherwise softmax(logits / temperature) restricted to top-k / top-p.
    Usable on its own by step-wise drivers (e.g. the GSM8k calculator) together with `models.*.start_decoding`.
    """
    _check_sampling_args(temperature, topk, topp)
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    safe_t = jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-30)
    filtered = filter_logits(logits / safe_t, topk=topk, topp=topp)
    sampled = jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
    return jnp.where(jnp.asarray(temperature) == 0.0, greedy, sampled)


# ---------------------------------------------------------------------------------------------------------------
# Temperature sampling.


def _loop_limits(
    batch: int, length: int, initial_index: Array | None, max_decode_steps: int | None
) -> tuple[Array, Array]:
    start = (
        jnp.zeros((batch,), jnp.int32)
        if initial_index is None
        else jnp.broadcast_to(jnp.asarray(initial_index, jnp.int32), (batch,))
    )
    limit = jnp.full((batch,), length, jnp.int32)
    if max_decode_steps is not None:
        if max_decode_steps < 1:
            raise ValueError(f"max_decode_steps must be >= 1, got {max_decode_steps!r}")
        limit = jnp.minimum(limit, start + max_decode_steps)
    return start, limit


def _check_inputs(inputs: Array, num_decodes: int) -> None:
    if inputs.ndim != 2:
        raise ValueError(f"inputs must be [batch, length] int tokens, got shape {inputs.shape}")
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
        raise ValueError(f"inputs must hold integer token ids, got dtype {inputs.dtype}")
    if not isinstance(num_decodes, (int, np.integer)) or num_decodes < 1:
        raise ValueError(f"num_decodes must be a positive int, got {num_decodes!r}")


def temperature_sample(
    inputs: Array,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    decode_rng: Array | None = None,
    num_decodes: int = 1,
    temperature: Array | float = 1.0,
    topk: int = 0,
    topp: Array | float = 0.0,
    initial_index: Array | None = None,
    max_decode_steps: int | None = None,
    cache_offset: int = 0,
) -> tuple[Array, Array]:
    """Sample `num_decodes` continuations per input through the KV cache.

    Args:
      inputs: [batch, length] int32 decoder input tokens; non-zero entries after `initial_index` are forced.
      cache: the network's cache for `batch` rows (expanded here to batch * num_decodes).
      tokens_to_logits: see module docstring.
      eos_id: a sampled EOS ends the sequence (forced EOS tokens do not).
      decode_rng: PRNG key (default PRNGKey(0)); each of the batch * num_decodes rows samples independently.
      num_decodes: samples per input.
      temperature: >= 0; 0 = greedy.
      topk: keep only the k most likely tokens (0 = off). topp: nucleus mass in (0, 1) (0 or 1 = off).
      initial_index: [batch] loop start per example (decoder-only prefill), default 0.
      max_decode_steps: optional cap on the number of loop steps per example.
      cache_offset: batch axis of the cache leaves (1 with scanned layers).

    Returns:
      decodes [batch, num_decodes, length] int32 (targets; 0 after EOS), scores [batch, num_decodes] float32
      (sum of model log-probs of sampled tokens), sorted by increasing score along num_decodes.
    """
    _check_inputs(inputs, num_decodes)
    _check_sampling_args(temperature, topk, topp)
    batch, length = inputs.shape
    rows = batch * num_decodes
    rng = jax.random.PRNGKey(0) if decode_rng is None else decode_rng
    start, limit = _loop_limits(batch, length, initial_index, max_decode_steps)
    start, limit = (flat_batch_beam_expand(x, num_decodes) for x in (start, limit))
    seqs0 = jnp.concatenate(
        [
            flat_batch_beam_expand(inputs.astype(jnp.int32), num_decodes),
            jnp.zeros((rows, 1), jnp.int32),
        ],
        axis=1,
    )
    row_ids = jnp.arange(rows)
    state0 = dict(
        i=start,
        seqs=seqs0,
        log_prob=jnp.zeros((rows,), jnp.float32),
        ended=jnp.zeros((rows,), bool),
        cache=expand_cache(cache, num_decodes, cache_offset),
        rng=rng,
    )

    def active(state):
        return ~state["ended"] & (state["i"] < limit)

    def body(state):
        i = state["i"]
        rng, step_rng = jax.random.split(state["rng"])
        token = state["seqs"][row_ids, i][:, None]
        logits, cache = tokens_to_logits(token, state["cache"])
        logits = logits.astype(jnp.float32)
        sampled = sample_logits(logits, step_rng, temperature=temperature, topk=topk, topp=topp)
        forced = state["seqs"][row_ids, i + 1]
        is_forced = forced != 0
        live = active(state)
        next_token = jnp.where(is_forced, forced, sampled)
        token_log_prob = jnp.take_along_axis(
            jax.nn.log_softmax(logits, axis=-1), next_token[:, None], axis=-1
        )[:, 0]
        seqs = state["seqs"].at[row_ids, i + 1].set(jnp.where(live, next_token, forced))
        generated = live & ~is_forced
        return dict(
            i=jnp.where(live, i + 1, i),
            seqs=seqs,
            log_prob=state["log_prob"] + jnp.where(generated, token_log_prob, 0.0),
            ended=state["ended"] | (generated & (next_token == eos_id)),
            cache=cache,
            rng=rng,
        )

    final = jax.lax.while_loop(lambda s: jnp.any(active(s)), body, state0)
    decodes = final["seqs"][:, 1:].reshape(batch, num_decodes, length)
    scores = final["log_prob"].reshape(batch, num_decodes)
    order = jnp.argsort(scores, axis=-1)
    decodes = jnp.take_along_axis(decodes, order[:, :, None], axis=1)
    return decodes, jnp.take_along_axis(scores, order, axis=1)


# ---------------------------------------------------------------------------------------------------------------
# Beam search.


def beam_search(
    inputs: Array,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    num_decodes: int = 4,
    alpha: Array | float = 0.6,
    max_decode_len: int | None = None,
    decode_rng: Array | None = None,
    initial_index: Array | None = None,
    cache_offset: int = 0,
) -> tuple[Array, Array]:
    """Beam search with the T5X/GNMT length penalty; returns the `num_decodes` best finished sequences.

    A sequence finishes when it emits EOS or when it reaches the maximum length (then it is kept without EOS).
    Its score is log p(generated tokens) / ((5 + n) / 6) ** alpha with n the number of generated tokens
    (EOS included, forced prompt tokens excluded). Each step extends the `num_decodes` live beams by every token,
    keeps the best 2 * num_decodes candidates, of which the best non-EOS ones stay live and the rest join the
    finished set. An example stops early once no live beam can beat its worst kept finished score.

    Args: as `temperature_sample`; `num_decodes` is the beam size, `max_decode_len` caps the loop steps,
      `decode_rng` is unused (kept for the common decode-function signature).

    Returns:
      decodes [batch, beam, length] int32 and scores [batch, beam] float32 (length-penalised), increasing order.
      Slots that no sequence could fill (tiny vocabularies) have score <= NEG_INF / 2.
    """
    del decode_rng
    _check_inputs(inputs, num_decodes)
    beam = int(num_decodes)
    batch, length = inputs.shape
    start, limit = _loop_limits(batch, length, initial_index, max_decode_len)
    padded_inputs = jnp.concatenate(
        [inputs.astype(jnp.int32), jnp.zeros((batch, 1), jnp.int32)], axis=1
    )
    seqs0 = jnp.broadcast_to(padded_inputs[:, None, :], (batch, beam, length + 1))
    # Only beam 0 is live at first; the copies start at NEG_INF so they never duplicate it.
    alive_lp0 = jnp.tile(jnp.array([0.0] + [NEG_INF] * (beam - 1), jnp.float32), (batch, 1))
    b_ids = jnp.arange(batch)
    state0 = dict(
        i=start,
        n_generated=jnp.zeros((batch,), jnp.int32),
        alive_seqs=seqs0,
        alive_lp=alive_lp0,
        fin_seqs=seqs0,
        fin_scores=jnp.full((batch, beam), NEG_INF, jnp.float32),
        cache=expand_cache(cache, beam, cache_offset),
    )
    max_generated = limit - start

    def running(state):
        # Best score any live beam could still reach: log-probs only fall, the penalty is monotone in length.
        best_bp = jnp.maximum(
            brevity_penalty(alpha, state["n_generated"] + 1), brevity_penalty(alpha, max_generated)
        )
        best_alive = jnp.max(state["alive_lp"], axis=1) / best_bp
        worst_finished = jnp.min(state["fin_scores"], axis=1)
        done = worst_finished >= best_alive
        return (state["i"] < limit) & ~done

    def body(state):
        i = state["i"]
        live = running(state)
        token = state["alive_seqs"][b_ids, :, i].reshape(batch * beam, 1)
        logits, cache = tokens_to_logits(token, state["cache"])
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.reshape(batch, beam, vocab)
        forced = padded_inputs[b_ids, i + 1]
        is_forced = forced != 0
        forced_lp = jnp.where(jnp.arange(vocab) == forced[:, None], 0.0, NEG_INF)[:, None, :]
        log_probs = jnp.where(is_forced[:, None, None], forced_lp, log_probs)
        candidates = (state["alive_lp"][:, :, None] + log_probs).reshape(batch, beam * vocab)
        cand_lp, cand_idx = jax.lax.top_k(candidates, 2 * beam)
        parent, cand_tok = cand_idx // vocab, cand_idx % vocab
        cand_seqs = jnp.take_along_axis(state["alive_seqs"], parent[:, :, None], axis=1)
        cand_seqs = cand_seqs.at[
            b_ids[:, None], jnp.arange(2 * beam)[None, :], (i + 1)[:, None]
        ].set(cand_tok)
        n_generated = state["n_generated"] + (~is_forced).astype(jnp.int32)
        is_eos = (cand_tok == eos_id) & ~is_forced[:, None]
        at_end = (i + 1 >= limit)[:, None]

        # Live beams: best non-EOS candidates.
        alive_key = jnp.where(is_eos, NEG_INF, cand_lp)
        alive_lp, alive_pick = jax.lax.top_k(alive_key, beam)
        alive_seqs = jnp.take_along_axis(cand_seqs, alive_pick[:, :, None], axis=1)
        alive_parent = jnp.take_along_axis(parent, alive_pick, axis=1)

        # Finished: EOS candidates, and every candidate at the last position.
        finishing = (is_eos | at_end) & (cand_lp > NEG_INF / 2)
        new_scores = jnp.where(
            finishing, cand_lp / brevity_penalty(alpha, n_generated)[:, None], NEG_INF
        )
        all_scores = jnp.concatenate([state["fin_scores"], new_scores], axis=1)
        all_seqs = jnp.concatenate([state["fin_seqs"], cand_seqs], axis=1)
        fin_scores, fin_pick = jax.lax.top_k(all_scores, beam)
        fin_seqs = jnp.take_along_axis(all_seqs, fin_pick[:, :, None], axis=1)

        # Examples that already stopped keep their state; their cache rows are gathered in place.
        keep = live[:, None]
        alive_parent = jnp.where(keep, alive_parent, jnp.arange(beam)[None, :])
        flat_rows = (b_ids[:, None] * beam + alive_parent).reshape(-1)
        return dict(
            i=jnp.where(live, i + 1, i),
            n_generated=jnp.where(live, n_generated, state["n_generated"]),
            alive_seqs=jnp.where(keep[:, :, None], alive_seqs, state["alive_seqs"]),
            alive_lp=jnp.where(keep, alive_lp, state["alive_lp"]),
            fin_seqs=jnp.where(keep[:, :, None], fin_seqs, state["fin_seqs"]),
            fin_scores=jnp.where(keep, fin_scores, state["fin_scores"]),
            cache=_gather_cache(cache, flat_rows, batch * beam, cache_offset),
        )

    final = jax.lax.while_loop(lambda s: jnp.any(running(s)), body, state0)
    # top_k sorted the finished set best-first; T5X order is increasing.
    decodes = final["fin_seqs"][:, ::-1, 1:]
    return decodes, final["fin_scores"][:, ::-1]
