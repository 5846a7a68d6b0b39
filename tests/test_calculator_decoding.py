"""The calculator decode loop, driven through the step-wise API by a scripted stand-in for a model.

The stand-in's next-token distribution puts all mass on script[row][i] where i is the number of target tokens
fed so far, so an injected `result>>` shifts the script exactly as it would shift a real model's context. The
real models drive the same loop in tests/test_evaluate_e2e.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from iqlearn_jax.calculator_decoding import CalculatorDecoder
from iqlearn_jax.models import DecodingState

VOCAB = seqio.ByteVocabulary()
LENGTH = 48


class ScriptedModel:
    eos_id = 1

    def __init__(self, scripts):
        rows = []
        for s in scripts:
            ids = list(VOCAB.encode(s)) + [1]
            rows.append((ids + [0] * (LENGTH + 1))[: LENGTH + 1])
        self.table = jnp.asarray(rows, jnp.int32)  # [rows, LENGTH + 1]

    def _logits(self, index):
        nxt = jnp.take(self.table, jnp.minimum(index, LENGTH), axis=1)
        return 20.0 * jax.nn.one_hot(nxt, VOCAB.vocab_size)

    def start_decoding(self, params, batch, num_decodes=1):
        rows = batch["decoder_input_tokens"].shape[0] * num_decodes
        state = DecodingState(
            cache={},
            logits=jnp.zeros((rows, 1)),
            position=jnp.int32(0),
            extras={},
            max_length=LENGTH,
        )
        return self.advance_decoding(params, state, jnp.zeros((rows,), jnp.int32))  # BOS

    def advance_decoding(self, params, state, tokens):
        position = state.position + 1
        return state.replace(logits=self._logits(position - 1), position=position)


def _decode(scripts, num_decodes=1, temperature=0.0):
    model = ScriptedModel(scripts)
    batch = {"decoder_input_tokens": np.zeros((len(scripts) // num_decodes, LENGTH), np.int32)}
    decoder = CalculatorDecoder(model, VOCAB, temperature=temperature, num_decodes=num_decodes)
    tokens, stats = decoder(None, batch, jax.random.PRNGKey(0))
    assert tokens.shape == (len(scripts) // num_decodes, num_decodes, LENGTH)
    return [VOCAB.decode(t.tolist()) for t in tokens.reshape(len(scripts), LENGTH)], stats


def test_calculator_overrides_the_model_and_refuses_unsafe_input():
    scripts = [
        "a <<3*4=99>> b",  # the model would write 99: the calculator writes 12 and the model goes on
        "<<10/4=9.9>> end",
        "<<2**3=8>> <<1/0=5>>",  # refused: left to the model
        "<<__import__('os')=1>> ok",
    ]
    texts, stats = _decode(scripts, num_decodes=2)
    assert texts == [
        "a <<3*4=12>> b",
        "<<10/4=2.5>> end",
        "<<2**3=8>> <<1/0=5>>",
        "<<__import__('os')=1>> ok",
    ]
    assert stats.calls == 2


def test_no_annotation_is_plain_decoding_and_stops_at_the_cache_end():
    long_text = "x" * (LENGTH + 5)
    texts, stats = _decode(
        ["plain text", long_text, "<<1+1="], temperature=1.0
    )  # near-one-hot: same tokens
    assert texts[0] == "plain text" and stats.calls == 1
    assert texts[1] == "x" * LENGTH  # truncated at the decode length, no EOS
    assert texts[2] == "<<1+1=2>>"


def test_completion_tokens_fit_the_context_with_sentencepiece(tmp_path):
    import io

    import sentencepiece as spm

    from iqlearn_jax.calculator_decoding import completion_ids

    rng = np.random.default_rng(0)
    lines = [
        f"She sold {a}/{b} = <<{a}/{b}={a // b}>>{a // b} clips and <<{b}*{c}={b * c}>> more.\n#### {b * c}"
        for a, b, c in rng.integers(1, 99, size=(300, 3))
    ]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buffer, vocab_size=120, minloglevel=3
    )
    (tmp_path / "sp.model").write_bytes(buffer.getvalue())
    vocab = seqio.SentencePieceVocabulary(str(tmp_path / "sp.model"))
    for prefix_text in ["She sold 48/2 = <<48/2=", "and <<3*4="]:
        prefix = list(vocab.encode(prefix_text))
        ids = completion_ids(vocab, prefix, vocab.decode(prefix), "24>>")
        assert (
            vocab.decode(prefix + ids) == prefix_text + "24>>"
        )  # no "= 24>>" from a word-initial piece
