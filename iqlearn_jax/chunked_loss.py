"""Vocabulary-chunked output layer: the per-token statistics every objective needs, without [batch, length, vocab].

The unchunked path computes logits ℓ = scale·(h @ W) of shape [batch, length, vocab] (float32) and reduces them
over the vocabulary (losses.py). Everything the objectives use is a per-position reduction of ℓ:

    value       V(s_t)      = logsumexp_a ℓ_t[a]                    (over valid rows a < valid_vocab_size)
    q           Q(s_t, a_t) = ℓ_t[a_t]
    entropy     H_t         = V(s_t) − Σ_a softmax(ℓ_t)_a ℓ_t[a]
    logit_sum   Σ_a ℓ_t[a]                                           (label smoothing)
    correct     [argmax_a ℓ_t[a] == a_t]                             (first maximum, like jnp.argmax)

Here they are computed by a `lax.scan` over vocabulary chunks with streaming (online-softmax) reductions, and the
backward pass is a custom VJP that recomputes each chunk's logits and turns the cotangents of the statistics into
chunk gradients of h and W:

    ∂V/∂ℓ_a = p_a,   ∂Q/∂ℓ_a = [a = a_t],   ∂H/∂ℓ_a = −p_a (ℓ_a − V + H),   ∂Σℓ/∂ℓ_a = 1     (valid a only)

so neither direction ever holds more than [batch, length, chunk] of logits. The objectives then apply the SAME
per-token formulas as the unchunked path: `losses.token_terms` dispatches to `ChunkedLogits.token_terms`.

Chunk layout. With V vocabulary rows and chunk size C, there are n = ⌈V / C⌉ chunks of c = ⌈V / n⌉ ≤ C columns;
the weight is zero-padded to c·n rows when c·n > V (padded columns are masked like padded vocabulary rows). When the
vocabulary is not sharded (the current mesh and rules map 'vocab' to no mesh axis of size > 1, e.g. data-parallel
runs), chunk k holds the *contiguous* rows {k·c + i : 0 ≤ i < c}: the vocabulary axis is reshaped to [n, c] and
chunks are dynamic slices of the weight as it is laid out, so neither pass copies the weight. When the vocabulary is
sharded over 'model', chunk k holds the *strided* rows {i·n + k : 0 ≤ i < c}: reshaping to [c, n] keeps c major, so
the weight stays sharded inside every chunk (each device computes its slice of every chunk) at the price of a
strided gather per chunk. Chunk logits are constrained to the logical axes ('batch', 'length', 'vocab').

Shapes: hidden [batch, length, embed]; weight [embed, vocab] (a `logits_dense` kernel, vocab_axis=1) or
[vocab, embed] (a tied embedding, vocab_axis=0); statistics [batch, length] in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import partitioning as nn_partitioning
from jax import lax

Array = jax.Array

# Masked target logit (a target in the padded vocabulary rows), as losses._MASKED_LOGIT.
MASKED_LOGIT = -1e30


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["hidden", "weight"],
    meta_fields=["vocab_axis", "logit_scale"],
)
@dataclasses.dataclass(frozen=True)
class OutputHead:
    """The output layer's input and weight: logits = logit_scale · hidden @ W.

    Attributes:
      hidden: [batch, length, embed], the final hidden states (after the final norm and dropout).
      weight: [embed, vocab] when vocab_axis == 1 (untied kernel), [vocab, embed] when vocab_axis == 0 (tied
        embedding).
      vocab_axis: which axis of `weight` is the vocabulary (static).
      logit_scale: static multiplier of the logits (T5.1.0's tied head: 1/√d_model).
    """

    hidden: Array
    weight: Array
    vocab_axis: int = 1
    logit_scale: float = 1.0

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[self.vocab_axis])

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.result_type(self.hidden.dtype, self.weight.dtype, jnp.float32)

    def logits(self) -> Array:
        """The full logits [batch, length, vocab] (what the chunked path avoids; for tests and decoding)."""
        dtype = self.compute_dtype
        w = self.weight.astype(dtype)
        w = w.T if self.vocab_axis == 0 else w
        logits = jnp.dot(self.hidden.astype(dtype), w)
        return logits * self.logit_scale if self.logit_scale != 1.0 else logits


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["head"], meta_fields=["chunk_size"]
)
@dataclasses.dataclass(frozen=True)
class ChunkedLogits:
    """Logits [batch, length, vocab] held as (hidden, weight), reduced chunk by chunk of `chunk_size` columns.

    Stands in for the logits array wherever `losses.py` takes logits: it has `shape`, `ndim`, `dtype` and
    `token_terms(targets, valid_vocab_size)`, the only function that touches the vocabulary axis.
    """

    head: OutputHead
    chunk_size: int

    def __post_init__(self):
        if not isinstance(self.chunk_size, int | np.integer) or self.chunk_size < 1:
            raise ValueError(
                f"vocab_chunk_size must be a positive integer, got {self.chunk_size!r}"
            )
        if self.head.hidden.ndim != 3:
            raise ValueError(
                f"hidden must be [batch, length, embed], got shape {self.head.hidden.shape}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        batch, length, _ = self.head.hidden.shape
        return (int(batch), int(length), self.head.vocab_size)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def dtype(self) -> jnp.dtype:
        return self.head.compute_dtype

    def token_terms(self, targets: Array, valid_vocab_size: int | None = None) -> dict[str, Array]:
        """Per-position value, q, log_prob, entropy, correct, logit_sum: each [batch, length] (see losses.py)."""
        vocab = self.head.vocab_size
        if valid_vocab_size is None:
            valid_vocab_size = vocab
        elif (
            not isinstance(valid_vocab_size, int | np.integer) or not 0 < valid_vocab_size <= vocab
        ):
            raise ValueError(
                f"valid_vocab_size must be an integer in [1, {vocab}] (the logits' vocab size), "
                f"got {valid_vocab_size!r}"
            )
        stats = chunked_statistics(
            self.head,
            targets,
            chunk_size=int(self.chunk_size),
            valid_vocab_size=int(valid_vocab_size),
        )
        stats["log_prob"] = stats["q"] - stats["value"]
        return stats


def chunk_layout(vocab: int, chunk_size: int) -> tuple[int, int]:
    """(number of chunks n, columns per chunk c) for `vocab` rows in chunks of at most `chunk_size`; c·n ≥ vocab."""
    num_chunks = -(-vocab // min(chunk_size, vocab))
    return num_chunks, -(-vocab // num_chunks)


def vocab_shards() -> int:
    """Devices the logical 'vocab' axis is split over under the current mesh and axis rules (1 outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return 1
    axes = dict(nn_partitioning.get_axis_rules()).get("vocab")
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return int(np.prod([mesh.shape[a] for a in axes if a in mesh.shape]))


def _chunk_axis(vocab_axis: int, strided: bool) -> int:
    """The axis of the 3-D chunked weight that indexes chunks (see `_chunked_weight`)."""
    if vocab_axis == 1:
        return 2 if strided else 1
    return 1 if strided else 0


def _chunked_weight(head: OutputHead, num_chunks: int, cols: int, strided: bool) -> Array:
    """The weight with its vocabulary axis padded to cols·num_chunks and split into chunks.

    Kernel [embed, vocab] -> [embed, c, n] (strided) or [embed, n, c] (contiguous); embedding [vocab, embed] ->
    [c, n, embed] or [n, c, embed]. Both are reshapes of the (padded) weight, no transposes.
    """
    w = head.weight.astype(head.compute_dtype)
    pad = cols * num_chunks - head.vocab_size
    split = (cols, num_chunks) if strided else (num_chunks, cols)
    if head.vocab_axis == 1:
        if pad:
            w = jnp.pad(w, ((0, 0), (0, pad)))
        return w.reshape(w.shape[0], *split)
    if pad:
        w = jnp.pad(w, ((0, pad), (0, 0)))
    return w.reshape(*split, w.shape[1])


def _chunk_weight(w3: Array, k: Array, vocab_axis: int, strided: bool) -> Array:
    """Chunk k of the chunked weight: [embed, c] (kernel) or [c, embed] (embedding)."""
    return lax.dynamic_index_in_dim(w3, k, axis=_chunk_axis(vocab_axis, strided), keepdims=False)


def _chunk_logits(hidden: Array, wk: Array, vocab_axis: int, scale: float) -> Array:
    """[batch, length, c] logits of one chunk, constrained to ('batch', 'length', 'vocab')."""
    contract = ((2,), (0,)) if vocab_axis == 1 else ((2,), (1,))
    z = lax.dot_general(hidden, wk, (contract, ((), ())))
    if scale != 1.0:
        z = z * scale
    return nn_partitioning.with_sharding_constraint(z, ("batch", "length", "vocab"))


def chunked_statistics(
    head: OutputHead, targets: Array, *, chunk_size: int, valid_vocab_size: int
) -> dict[str, Array]:
    """value, q, entropy, logit_sum, correct ([batch, length] each) of logits = scale·hidden@W, chunk by chunk.

    Differentiable in head.hidden and head.weight through a custom VJP (`correct` has no gradient). Rows
    ≥ valid_vocab_size are excluded from every statistic; a target in them gets q = MASKED_LOGIT.
    """
    num_chunks, cols = chunk_layout(head.vocab_size, chunk_size)
    strided = vocab_shards() > 1
    fn = _make_statistics_fn(
        num_chunks, cols, head.vocab_size, valid_vocab_size, head.vocab_axis, head.logit_scale,
        strided,
    )  # fmt: skip
    value, q, entropy, logit_sum, correct = fn(head.hidden, head.weight, targets.astype(jnp.int32))
    return {"value": value, "q": q, "entropy": entropy, "logit_sum": logit_sum, "correct": correct}


def _make_statistics_fn(num_chunks, cols, vocab, valid, vocab_axis, scale, strided):
    """The custom-VJP function (hidden, weight, targets) -> (value, q, entropy, logit_sum, correct)."""
    chunk_axis = _chunk_axis(vocab_axis, strided)

    def columns(k: Array) -> tuple[Array, Array]:
        i, k = jnp.arange(cols, dtype=jnp.int32), k.astype(jnp.int32)
        index = i * num_chunks + k if strided else k * cols + i
        return index, index < valid

    def chunked_weight(hidden: Array, weight: Array) -> Array:
        return _chunked_weight(
            OutputHead(hidden, weight, vocab_axis, scale), num_chunks, cols, strided
        )

    def forward(hidden: Array, weight: Array, targets: Array):
        dtype = jnp.result_type(hidden.dtype, weight.dtype, jnp.float32)
        h = hidden.astype(dtype)
        w3 = chunked_weight(hidden, weight)
        shape = targets.shape
        floor = jnp.finfo(dtype).min  # finite stand-in for the max of nothing: keeps 0·(m − m') = 0

        def body(carry, k):
            m, s, t, best, q, total = carry
            z = _chunk_logits(h, _chunk_weight(w3, k, vocab_axis, strided), vocab_axis, scale)
            index, ok = columns(k)
            zm = jnp.where(ok, z, -jnp.inf)
            m_k = jnp.max(zm, axis=-1)
            m_new = jnp.maximum(m, m_k)
            alpha = jnp.exp(m - m_new)
            d = z - m_new[..., None]
            e = jnp.where(ok, jnp.exp(jnp.where(ok, d, 0.0)), 0.0)
            s_new = alpha * s + jnp.sum(e, axis=-1)
            t_new = alpha * (t + (m - m_new) * s) + jnp.sum(e * d, axis=-1)
            first = jnp.min(jnp.where(zm == m_k[..., None], index, np.iinfo(np.int32).max), -1)
            best = jnp.where(m_k > m, first, jnp.where(m_k == m, jnp.minimum(best, first), best))
            q = q + jnp.sum(jnp.where(index == targets[..., None], z, 0.0), axis=-1)
            total = total + jnp.sum(jnp.where(ok, z, 0.0), axis=-1)
            return (m_new, s_new, t_new, best, q, total), None

        init = (
            jnp.full(shape, floor, dtype),
            jnp.zeros(shape, dtype),
            jnp.zeros(shape, dtype),
            jnp.full(shape, np.iinfo(np.int32).max, jnp.int32),
            jnp.zeros(shape, dtype),
            jnp.zeros(shape, dtype),
        )
        (m, s, t, best, q, total), _ = lax.scan(body, init, jnp.arange(num_chunks))
        log_s = jnp.log(s)
        value = m + log_s
        entropy = log_s - t / s
        q = jnp.where(targets < valid, q, MASKED_LOGIT)
        correct = (best == targets).astype(jnp.float32)
        return value, q, entropy, total, correct

    @jax.custom_vjp
    def statistics(hidden, weight, targets):
        return forward(hidden, weight, targets)

    def statistics_fwd(hidden, weight, targets):
        out = forward(hidden, weight, targets)
        value, _, entropy, _, _ = out
        return out, (hidden, weight, targets, value, entropy)

    def statistics_bwd(residuals, cotangents):
        hidden, weight, targets, value, entropy = residuals
        g_value, g_q, g_entropy, g_sum, _ = cotangents
        dtype = value.dtype
        h = hidden.astype(dtype)
        w3 = chunked_weight(hidden, weight)
        target_ok = (targets < valid)[..., None]

        def body(carry, k):
            dh, dw3 = carry
            wk = _chunk_weight(w3, k, vocab_axis, strided)
            z = _chunk_logits(h, wk, vocab_axis, scale)
            index, ok = columns(k)
            centred = z - value[..., None]
            p = jnp.where(ok, jnp.exp(jnp.where(ok, centred, 0.0)), 0.0)
            dz = p * (g_value[..., None] - g_entropy[..., None] * (centred + entropy[..., None]))
            dz = dz + jnp.where((index == targets[..., None]) & target_ok, g_q[..., None], 0.0)
            dz = dz + jnp.where(ok, g_sum[..., None], 0.0)
            if scale != 1.0:
                dz = dz * scale
            dz = nn_partitioning.with_sharding_constraint(dz, ("batch", "length", "vocab"))
            if vocab_axis == 1:  # wk [embed, c]
                dh = dh + lax.dot_general(dz, wk, (((2,), (1,)), ((), ())))
                dwk = lax.dot_general(h, dz, (((0, 1), (0, 1)), ((), ())))  # [embed, c]
            else:  # wk [c, embed]
                dh = dh + lax.dot_general(dz, wk, (((2,), (0,)), ((), ())))
                dwk = lax.dot_general(dz, h, (((0, 1), (0, 1)), ((), ())))  # [c, embed]
            # written in place into the chunked gradient
            dw3 = lax.dynamic_update_index_in_dim(dw3, dwk.astype(dw3.dtype), k, chunk_axis)
            return (dh, dw3), None

        init = (jnp.zeros(h.shape, dtype), jnp.zeros(w3.shape, dtype))
        (dh, dw3), _ = lax.scan(body, init, jnp.arange(num_chunks))
        if (
            vocab_axis == 1
        ):  # [embed, c, n] or [embed, n, c] -> [embed, c·n] (a reshape) -> unpadded
            dw = dw3.reshape(weight.shape[0], cols * num_chunks)[:, :vocab]
        else:  # [c, n, embed] or [n, c, embed] -> [c·n, embed]
            dw = dw3.reshape(cols * num_chunks, weight.shape[1])[:vocab]
        return dh.astype(hidden.dtype), dw.astype(weight.dtype), None

    statistics.defvjp(statistics_fwd, statistics_bwd)
    return statistics
