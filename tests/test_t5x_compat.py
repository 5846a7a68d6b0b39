"""The optional T5X adapter (iqlearn_jax/t5x_compat.py) against the real T5X, in process.

T5X comes from tests/install_test_extras.sh (the vendored copy in ../shared/vendor/t5x); its two run-time shims
(airio stand-in, jestimator's PartitionSpec import) from tests/t5x_shims. Without T5X these tests skip with the
reason; a T5X that is installed but broken makes them fail.

What is checked: on packed batches (two segments per row, padding, a truncated segment), the adapter's loss and
metrics equal the independent NumPy reference (tests/loss_reference.py) on logits from T5X's own network, and its
gradients equal those of `Objective` applied to those logits, for `IQLearnEncoderDecoderModel` and
`IQLearnDecoderOnlyModel` (prefix LM); with λ = 0 the loss equals T5X's own cross-entropy `loss_fn`.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from loss_reference import iqlearn_reference

sys.path.insert(0, str(REPO_ROOT / "tests" / "t5x_shims"))
import t5x_shims  # noqa: E402

VOCAB = 48  # embedding rows; rows >= VALID_VOCAB are padding masked out of V
VALID_VOCAB = 40
LAM = 0.7


@pytest.fixture(scope="module")
def t5x():
    reason = t5x_shims.unavailable_reason()
    if reason:
        pytest.skip(reason)
    t5x_shims.activate()
    return importlib.import_module("t5x")


def test_import_without_t5x_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "t5x", None)  # `import t5x` now raises ImportError
    monkeypatch.delitem(sys.modules, "iqlearn_jax.t5x_compat", raising=False)
    with pytest.raises(ImportError, match=r"iqlearn_jax\[t5x\]"):
        importlib.import_module("iqlearn_jax.t5x_compat")
    monkeypatch.delitem(sys.modules, "iqlearn_jax.t5x_compat", raising=False)


def _packed_decoder(rng: np.random.Generator):
    """Targets/inputs/segments/positions/weights [2, 12] of two packed rows (SeqIO's packing layout).

    Row 0: segment 1 (5 tokens, EOS) + segment 2 (4 tokens, EOS) + 3 pads. Row 1: segment 1 (6 tokens, EOS) +
    segment 2 truncated (6 tokens, no EOS: its last TD term is masked).
    """
    lengths = [[(5, True), (4, True)], [(6, True), (6, False)]]
    length = 12
    out = {
        k: np.zeros((2, length), np.int32) for k in ("targets", "inputs", "segments", "positions")
    }
    for row, segments in enumerate(lengths):
        start = 0
        for seg, (n, eos) in enumerate(segments, start=1):
            tokens = rng.integers(2, VALID_VOCAB, size=n)
            if eos:
                tokens[-1] = 1
            out["targets"][row, start : start + n] = tokens
            out["inputs"][row, start + 1 : start + n] = tokens[
                :-1
            ]  # first input of a segment stays 0
            out["segments"][row, start : start + n] = seg
            out["positions"][row, start : start + n] = np.arange(n)
            start += n
    out["weights"] = (out["segments"] > 0).astype(np.float32)
    return out


def _encoder_decoder_case(t5x):
    import seqio
    from t5x import adafactor
    from t5x.examples.t5 import network

    from iqlearn_jax import objectives, t5x_compat

    config = network.T5Config(
        vocab_size=VOCAB,
        dtype="float32",
        emb_dim=16,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=2,
        head_dim=8,
        mlp_dim=32,
        mlp_activations=("gelu", "linear"),
        dropout_rate=0.0,
        logits_via_embedding=False,
    )
    objective = objectives.Objective(name="iqlearn", lam=LAM, valid_vocab_size=VALID_VOCAB)
    kwargs = dict(
        module=network.Transformer(config),
        input_vocabulary=seqio.PassThroughVocabulary(VOCAB),
        output_vocabulary=seqio.PassThroughVocabulary(VOCAB),
        optimizer_def=adafactor.Adafactor(),
    )
    model = t5x_compat.IQLearnEncoderDecoderModel(objective=objective, **kwargs)
    rng = np.random.default_rng(0)
    dec = _packed_decoder(rng)
    enc_segments = np.array([[1] * 4 + [2] * 5 + [0], [1] * 6 + [2] * 4], np.int32)
    enc_positions = np.array(
        [list(range(4)) + list(range(5)) + [0], list(range(6)) + list(range(4))]
    )
    batch = {
        "encoder_input_tokens": np.where(
            enc_segments > 0, rng.integers(2, VALID_VOCAB, size=enc_segments.shape), 0
        ).astype(np.int32),
        "encoder_segment_ids": enc_segments,
        "encoder_positions": enc_positions.astype(np.int32),
        "decoder_input_tokens": dec["inputs"],
        "decoder_target_tokens": dec["targets"],
        "decoder_segment_ids": dec["segments"],
        "decoder_positions": dec["positions"],
        "decoder_loss_weights": dec["weights"],
    }
    shapes = {"encoder_input_tokens": (2, 10), "decoder_input_tokens": (2, 12)}

    def network_logits(params, packed=True):
        packing = (
            dict(
                encoder_segment_ids=batch["encoder_segment_ids"],
                decoder_segment_ids=batch["decoder_segment_ids"],
                encoder_positions=batch["encoder_positions"],
                decoder_positions=batch["decoder_positions"],
            )
            if packed
            else {}
        )
        return model.module.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            **packing,
            enable_dropout=False,
        )

    stock = t5x.models.EncoderDecoderModel(
        loss_normalizing_factor="NUM_REAL_TARGET_TOKENS", **kwargs
    )
    mle = t5x_compat.IQLearnEncoderDecoderModel(
        objective=objectives.Objective(name="iqlearn", lam=0.0), **kwargs
    )
    return model, objective, batch, shapes, network_logits, stock, mle


def _decoder_only_case(t5x):
    import seqio
    from t5x import adafactor
    from t5x.examples.decoder_only import network

    from iqlearn_jax import objectives, t5x_compat

    config = network.TransformerConfig(
        vocab_size=VOCAB,
        dtype="float32",
        emb_dim=16,
        num_heads=2,
        num_layers=2,
        head_dim=8,
        mlp_dim=32,
        mlp_activations=("gelu", "linear"),
        dropout_rate=0.0,
        logits_via_embedding=False,
    )
    objective = objectives.Objective(name="iqlearn", lam=LAM, valid_vocab_size=VALID_VOCAB)
    kwargs = dict(
        module=network.DecoderWrapper(config),
        vocabulary=seqio.PassThroughVocabulary(VOCAB),
        optimizer_def=adafactor.Adafactor(),
        inputs_bidirectional_attention=True,
    )
    model = t5x_compat.IQLearnDecoderOnlyModel(objective=objective, **kwargs)
    dec = _packed_decoder(np.random.default_rng(1))
    # Prefix LM: the first 2 tokens of every segment are the prompt (weight 0, bidirectional attention).
    prompt = (dec["segments"] > 0) & (dec["positions"] < 2)
    batch = {
        "decoder_input_tokens": dec["inputs"],
        "decoder_target_tokens": dec["targets"],
        "decoder_segment_ids": dec["segments"],
        "decoder_positions": dec["positions"],
        "decoder_causal_attention": prompt.astype(np.int32),
        "decoder_loss_weights": np.where(prompt, 0.0, dec["weights"]).astype(np.float32),
    }
    shapes = {"decoder_input_tokens": (2, 12)}

    def network_logits(params, packed=True):
        packing = (
            dict(
                decoder_segment_ids=batch["decoder_segment_ids"],
                decoder_positions=batch["decoder_positions"],
            )
            if packed
            else {}
        )
        return model.module.apply(
            {"params": params},
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            decoder_causal_attention=batch["decoder_causal_attention"],
            **packing,
            enable_dropout=False,
        )

    stock = t5x.models.DecoderOnlyModel(loss_normalizing_factor="NUM_REAL_TARGET_TOKENS", **kwargs)
    mle = t5x_compat.IQLearnDecoderOnlyModel(
        objective=objectives.Objective(name="iqlearn", lam=0.0), **kwargs
    )
    return model, objective, batch, shapes, network_logits, stock, mle


@pytest.mark.parametrize("case", ["encoder_decoder", "decoder_only"])
def test_adapter_loss_and_grads_equal_objective_on_t5x_logits_packed(t5x, case):
    import jax

    build = _encoder_decoder_case if case == "encoder_decoder" else _decoder_only_case
    model, objective, batch, shapes, network_logits, stock, mle = build(t5x)
    # Everything under jit: one compile per function instead of one per op (eager T5X is slow on a loaded CPU).
    params = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(jax.random.PRNGKey(0))
    params = params["params"]
    network_logits = jax.jit(network_logits, static_argnames="packed")
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    segments = batch["decoder_segment_ids"]

    loss, metrics = jax.jit(lambda p: model.loss_fn(p, batch, None))(params)
    logits = np.asarray(network_logits(params))
    ref = iqlearn_reference(
        logits,
        targets,
        weights,
        lam=LAM,
        segment_ids=segments,
        factor="NUM_REAL_TARGET_TOKENS",
        valid_vocab_size=VALID_VOCAB,
    )
    assert ref["td_term"] > 0.01 * ref["loss"]  # the TD term is really in play
    np.testing.assert_allclose(float(loss), ref["loss"], rtol=2e-5)
    for name in ("mle_term", "td_term"):
        got = metrics[f"objective/{name}"].compute()
        np.testing.assert_allclose(float(got), ref[name], rtol=2e-5, err_msg=name)
    assert "accuracy" in metrics  # T5X's own metrics are kept beside objective/*

    # Packing matters here: the same batch read as unpacked rows gives another loss.
    unpacked = iqlearn_reference(
        np.asarray(network_logits(params, packed=False)),
        targets,
        weights,
        lam=LAM,
        factor="NUM_REAL_TARGET_TOKENS",
        valid_vocab_size=VALID_VOCAB,
    )
    assert abs(unpacked["loss"] - ref["loss"]) > 1e-3

    grads = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, None)[0]))(params)
    expected = jax.jit(
        jax.grad(lambda p: objective(network_logits(p), targets, weights, segment_ids=segments)[0])
    )(params)
    flat_got = jax.tree_util.tree_leaves_with_path(grads)
    flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected))
    assert len(flat_got) == len(flat_expected) > 5
    for path, value in flat_got:
        np.testing.assert_allclose(
            np.asarray(value),
            np.asarray(flat_expected[path]),
            rtol=1e-5,
            atol=1e-7,
            err_msg=jax.tree_util.keystr(path),
        )
    assert max(float(np.abs(np.asarray(v)).max()) for _, v in flat_got) > 1e-4

    # λ = 0: the adapter's loss is T5X's own cross-entropy loss (same normalisation, no z-loss).
    mle_loss, _ = jax.jit(lambda p: mle.loss_fn(p, batch, None))(params)
    stock_loss, _ = jax.jit(lambda p: stock.loss_fn(p, batch, None))(params)
    np.testing.assert_allclose(float(mle_loss), float(stock_loss), rtol=1e-5)


def test_adapter_refuses_lambda_warmup_and_t5x_loss_options(t5x):
    import seqio
    from t5x import adafactor
    from t5x.examples.t5 import network

    from iqlearn_jax import objectives, t5x_compat

    kwargs = dict(
        module=network.Transformer(network.T5Config(vocab_size=8)),
        input_vocabulary=seqio.PassThroughVocabulary(8),
        output_vocabulary=seqio.PassThroughVocabulary(8),
        optimizer_def=adafactor.Adafactor(),
    )
    warm = objectives.Objective(name="iqlearn", lam=0.1, lam_warmup_steps=100)
    with pytest.raises(ValueError, match="lam_warmup_steps=100"):
        t5x_compat.IQLearnEncoderDecoderModel(objective=warm, **kwargs)
    chunked = objectives.Objective(name="iqlearn", lam=0.1, vocab_chunk_size=4)
    with pytest.raises(ValueError, match="vocab_chunk_size=4"):
        t5x_compat.IQLearnEncoderDecoderModel(objective=chunked, **kwargs)
    with pytest.raises(ValueError, match="z_loss=0.0001"):
        t5x_compat.IQLearnEncoderDecoderModel(z_loss=1e-4, **kwargs)
