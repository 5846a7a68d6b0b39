"""Decoding algorithms on a hand-built "model": a fixed table of next-token logits indexed by (position, token).

The table model keeps its position in a cache pytree, exactly as a network's KV cache would be threaded, so the
tests exercise the real loop, cache expansion and beam gathering. References are brute-force NumPy.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iqlearn_jax import decoding

EOS = 1


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


class TableModel:
    """logits(position t, fed token a) = table[t, a]; row-specific tables via an extra batch axis."""

    def __init__(self, table):  # table [batch, length, vocab(fed), vocab(next)]
        self.table = np.asarray(table, np.float32)

    def cache(self, batch):
        return {"pos": jnp.zeros((batch,), jnp.int32), "row": jnp.arange(batch, dtype=jnp.int32)}

    def tokens_to_logits(self, ids, cache):
        table = jnp.asarray(self.table)
        logits = table[cache["row"], cache["pos"], ids[:, 0]]
        return logits, {"pos": cache["pos"] + 1, "row": cache["row"]}

    def log_probs(self, row, t, token):
        return _log_softmax(self.table[row, t, token])


def _random_table(seed, batch, length, vocab, scale=2.0, no_pad=True):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(batch, length, vocab, vocab)) * scale
    if no_pad:
        table[..., 0] = -1e9  # never produce the padding id
    return table


def _numpy_greedy(model, row, length, prompt=()):
    """Greedy decode of one row by plain loops; returns (targets [length], score of generated tokens)."""
    fed = [0]
    out, score = [], 0.0
    t = 0
    while t < length:
        lp = model.log_probs(row, t, fed[t])
        if t < len(prompt):
            tok = prompt[t]
        else:
            tok = int(np.argmax(lp))
            score += lp[tok]
        out.append(tok)
        fed.append(tok)
        t += 1
        if t > len(prompt) and tok == EOS:
            break
    return np.array(out + [0] * (length - len(out))), score


@pytest.fixture(scope="module")
def table_model():
    return TableModel(_random_table(0, batch=3, length=6, vocab=7))


def _sample(model, batch, length, **kwargs):
    fn = jax.jit(
        lambda inputs, rng: decoding.temperature_sample(
            inputs, model.cache(batch), model.tokens_to_logits, EOS, decode_rng=rng, **kwargs
        )
    )
    return fn(jnp.zeros((batch, length), jnp.int32), jax.random.PRNGKey(3))


def test_greedy_matches_numpy_loop(table_model):
    decodes, scores = _sample(table_model, 3, 6, temperature=0.0)
    for row in range(3):
        expected, score = _numpy_greedy(table_model, row, 6)
        np.testing.assert_array_equal(decodes[row, 0], expected)
        np.testing.assert_allclose(scores[row, 0], score, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=1e-6), dict(temperature=1.0, topk=1), dict(temperature=1.0, topp=1e-6)],
)
def test_limits_of_sampling_equal_greedy(table_model, kwargs):
    greedy, greedy_scores = _sample(table_model, 3, 6, temperature=0.0)
    decodes, scores = _sample(table_model, 3, 6, num_decodes=4, **kwargs)
    np.testing.assert_array_equal(decodes, np.repeat(np.asarray(greedy), 4, axis=1))
    np.testing.assert_allclose(scores, np.repeat(np.asarray(greedy_scores), 4, axis=1), rtol=1e-5)


def test_forced_prompt_tokens_and_scores(table_model):
    prompt = [[3, 4], [5, 1], [2, 2]]  # a forced EOS does not end the sequence
    inputs = np.zeros((3, 6), np.int32)
    for row, p in enumerate(prompt):
        inputs[row, 1 : 1 + len(p)] = p  # decoder-input layout: position 0 is BOS
    decodes, scores = jax.jit(
        lambda x: decoding.temperature_sample(
            x, table_model.cache(3), table_model.tokens_to_logits, EOS, temperature=0.0
        )
    )(jnp.asarray(inputs))
    for row, p in enumerate(prompt):
        expected, score = _numpy_greedy(table_model, row, 6, prompt=p)
        np.testing.assert_array_equal(decodes[row, 0], expected)
        np.testing.assert_allclose(scores[row, 0], score, rtol=1e-5)


def test_sampling_frequencies_topk_topp():
    # One decoding step from a known distribution: frequencies match softmax restricted to top-k / nucleus.
    vocab, n = 6, 4000
    first = np.array([0.0, 2.0, 1.5, 1.0, 0.2, -1.0], np.float32)
    table = np.zeros((1, 2, vocab, vocab), np.float32)
    table[0, 0, 0] = first
    model = TableModel(table)
    probs = np.exp(_log_softmax(first))
    order = np.argsort(-probs)

    @jax.jit
    def draw(
        temperature, topp, rng
    ):  # temperature and topp traced: one compilation for all settings
        return decoding.temperature_sample(
            jnp.zeros((1, 2), jnp.int32),
            model.cache(1),
            model.tokens_to_logits,
            EOS,
            rng,
            num_decodes=n,
            max_decode_steps=1,
            temperature=temperature,
            topp=topp,
        )[0]

    def frequencies(temperature=1.0, topk=0, topp=0.0):
        if topk:
            decodes = decoding.temperature_sample(
                jnp.zeros((1, 2), jnp.int32),
                model.cache(1),
                model.tokens_to_logits,
                EOS,
                jax.random.PRNGKey(0),
                num_decodes=n,
                max_decode_steps=1,
                topk=topk,
            )[0]
        else:
            decodes = draw(jnp.float32(temperature), jnp.float32(topp), jax.random.PRNGKey(0))
        return np.bincount(np.asarray(decodes[0, :, 0]), minlength=vocab) / n

    np.testing.assert_allclose(frequencies(temperature=1.0), probs, atol=0.03)
    topk = np.zeros(vocab)
    topk[order[:3]] = probs[order[:3]] / probs[order[:3]].sum()
    np.testing.assert_allclose(frequencies(temperature=1.0, topk=3), topk, atol=0.03)
    # Nucleus for p = 0.7: the smallest most-likely set with mass >= 0.7.
    cum = np.cumsum(probs[order])
    size = int(np.searchsorted(cum, 0.7) + 1)
    nucleus = np.zeros(vocab)
    nucleus[order[:size]] = probs[order[:size]] / probs[order[:size]].sum()
    np.testing.assert_allclose(frequencies(temperature=1.0, topp=0.7), nucleus, atol=0.03)
    hot = np.exp(_log_softmax(first / 2.0))
    np.testing.assert_allclose(frequencies(temperature=2.0), hot, atol=0.03)


def _beam(model, batch, length, **kwargs):
    return jax.jit(
        lambda x: decoding.beam_search(x, model.cache(batch), model.tokens_to_logits, EOS, **kwargs)
    )(jnp.zeros((batch, length), jnp.int32))


def test_beam_one_equals_greedy_on_peaked_model():
    # A peaked model: the greedy path is far more likely than any early-EOS alternative, so beam 1 (alpha 0) and
    # greedy agree (in general beam 1 may keep an earlier finished hypothesis that greedy passed by).
    table = _random_table(1, batch=4, length=7, vocab=9, scale=8.0)
    table[:, 4, :, EOS] += 20.0  # make some rows end at position 4
    model = TableModel(table)
    greedy, greedy_scores = _sample(model, 4, 7, temperature=0.0)
    beams, beam_scores = _beam(model, 4, 7, num_decodes=1, alpha=0.0)
    np.testing.assert_array_equal(beams, greedy)
    np.testing.assert_allclose(beam_scores, greedy_scores, rtol=1e-5)
    assert (np.asarray(greedy) == EOS).any()


def _brute_force(model, row, length, alpha):
    """All sequences ending at their first EOS or at `length`; score = log p / ((5 + n) / 6) ** alpha."""
    results = []
    vocab = model.table.shape[-1]
    for n in range(1, length + 1):
        for body in itertools.product(range(2, vocab), repeat=n - 1):
            endings = [EOS] + (list(range(2, vocab)) if n == length else [])
            for last in endings:
                seq = list(body) + [last]
                fed = [0] + seq[:-1]
                logp = sum(model.log_probs(row, t, fed[t])[seq[t]] for t in range(n))
                results.append((logp / ((5.0 + n) / 6.0) ** alpha, seq + [0] * (length - n)))
    results.sort(key=lambda r: -r[0])
    return results


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_matches_brute_force(alpha):
    length, beam = (
        4,
        32,
    )  # vocab {0 (never), EOS, 2, 3, 4}: at most 27 live hypotheses, so the search is exact
    model = TableModel(_random_table(2, batch=2, length=length, vocab=5, scale=1.5))
    decodes, scores = _beam(model, 2, length, num_decodes=beam, alpha=alpha)
    for row in range(2):
        expected = _brute_force(model, row, length, alpha)
        top = 5
        got_scores = np.asarray(scores[row])[::-1][:top]
        got_seqs = np.asarray(decodes[row])[::-1][:top]
        np.testing.assert_allclose(got_scores, [s for s, _ in expected[:top]], rtol=1e-5)
        np.testing.assert_array_equal(got_seqs, [q for _, q in expected[:top]])


def test_small_beam_best_is_brute_force_best_on_sharp_model():
    # Beam 3 with a length penalty finds the brute-force optimum on a model where the greedy path is not optimal.
    length = 4
    table = _random_table(4, batch=1, length=length, vocab=5, scale=1.0)
    table[0, 0, 0] = [-1e9, 1.0, 3.0, 2.9, -5.0]  # greedy takes 2 ...
    table[0, 1, 2] = [
        -1e9,
        -3.0,
        0.0,
        0.0,
        0.0,
    ]  # ... which is followed by a flat, costly distribution
    table[0, 1, 3] = [-1e9, 9.0, -9.0, -9.0, -9.0]  # while 3 then EOS is almost certain
    model = TableModel(table)
    greedy, _ = _sample(model, 1, length, temperature=0.0)
    decodes, scores = _beam(model, 1, length, num_decodes=3, alpha=0.6)
    best_score, best_seq = _brute_force(model, 0, length, 0.6)[0]
    np.testing.assert_array_equal(decodes[0, -1], best_seq)
    np.testing.assert_allclose(scores[0, -1], best_score, rtol=1e-5)
    assert not np.array_equal(np.asarray(greedy[0, 0]), best_seq)


def test_remove_prefix():
    seqs = jnp.array([[1, 2, 3, 4, 0], [5, 6, 7, 0, 0]])
    np.testing.assert_array_equal(
        decoding.remove_prefix(seqs, jnp.array([2, 0])), [[3, 4, 0, 0, 0], [5, 6, 7, 0, 0]]
    )


def test_bad_arguments():
    model = TableModel(_random_table(0, batch=1, length=3, vocab=4))
    inputs = jnp.zeros((1, 3), jnp.int32)
    with pytest.raises(ValueError, match="topk"):
        decoding.temperature_sample(inputs, model.cache(1), model.tokens_to_logits, EOS, topk=-1)
    with pytest.raises(ValueError, match="temperature"):
        decoding.temperature_sample(
            inputs, model.cache(1), model.tokens_to_logits, EOS, temperature=-1.0
        )
    with pytest.raises(ValueError, match="topp"):
        decoding.temperature_sample(inputs, model.cache(1), model.tokens_to_logits, EOS, topp=1.5)
    with pytest.raises(ValueError, match="num_decodes"):
        decoding.beam_search(inputs, model.cache(1), model.tokens_to_logits, EOS, num_decodes=0)
    with pytest.raises(ValueError, match="inputs"):
        decoding.beam_search(inputs[0], model.cache(1), model.tokens_to_logits, EOS)
