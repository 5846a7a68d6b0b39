"""Model classes: variables/axes, objectives through loss_fn, score_batch vs NumPy, decoding vs full forward passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iqlearn_jax import decoding, models
from iqlearn_jax.networks.decoder import DecoderOnlyConfig, DecoderWrapper
from iqlearn_jax.networks.t5 import T5Config, Transformer
from iqlearn_jax.objectives import Objective

VOCAB = 31
EOS = 1


def _t5():
    cfg = T5Config(
        vocab_size=VOCAB,
        emb_dim=16,
        num_heads=2,
        num_encoder_layers=2,
        num_decoder_layers=2,
        head_dim=8,
        mlp_dim=24,
        dropout_rate=0.1,
    )
    return Transformer(cfg)


def _decoder():
    cfg = DecoderOnlyConfig(
        vocab_size=VOCAB,
        emb_dim=16,
        num_heads=2,
        num_layers=2,
        head_dim=8,
        mlp_dim=24,
        dropout_rate=0.1,
    )
    return DecoderWrapper(cfg)


def _encdec_batch(seed=0, batch=3, enc_len=7, dec_len=6):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, VOCAB, (batch, enc_len)).astype(np.int32)
    enc[0, 5:] = 0
    tgt = rng.integers(2, VOCAB, (batch, dec_len)).astype(np.int32)
    tgt[0, 3] = EOS
    tgt[0, 4:] = 0
    tgt[1, 5] = EOS  # row 2 is truncated (no EOS)
    inp = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
    return dict(
        encoder_input_tokens=enc,
        decoder_input_tokens=inp,
        decoder_target_tokens=tgt,
        decoder_loss_weights=(tgt > 0).astype(np.float32),
    )


def _prefix_batch(seed=0, length=14, prompts=(3, 6, 2), targets=(4, 5, 3)):
    """Batch in seqio.PrefixLMFeatureConverter's layout (checked against the real converter in
    test_decoder_network.py): causal attention covers the inputs plus the first target position."""
    rng = np.random.default_rng(seed)
    n = len(prompts)
    tgt = np.zeros((n, length), np.int32)
    causal = np.zeros((n, length), np.int32)
    weights = np.zeros((n, length), np.float32)
    for b, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        seq = (
            list(rng.integers(2, VOCAB, p - 1))
            + [EOS]
            + list(rng.integers(2, VOCAB, t - 1))
            + [EOS]
        )
        tgt[b, : len(seq)] = seq
        causal[b, : p + 1] = 1
        weights[b, p : len(seq)] = 1
    inp = np.concatenate([np.zeros((n, 1), np.int32), tgt[:, :-1]], 1)
    return dict(
        decoder_input_tokens=inp,
        decoder_target_tokens=tgt,
        decoder_causal_attention=causal,
        decoder_loss_weights=weights,
    )


@pytest.fixture(scope="module")
def t5_model():
    model = models.EncoderDecoderModel(_t5())
    shapes = {"encoder_input_tokens": (2, 7), "decoder_input_tokens": (2, 6)}
    variables = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(jax.random.PRNGKey(0))
    return model, variables


@pytest.fixture(scope="module")
def dec_model():
    model = models.DecoderOnlyModel(_decoder(), inputs_bidirectional_attention=True)
    shapes = {"decoder_input_tokens": (2, 14)}
    variables = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(jax.random.PRNGKey(0))
    return model, variables


def _with_objective(model, objective):
    if isinstance(model, models.DecoderOnlyModel):
        return models.DecoderOnlyModel(
            model.module, objective=objective, inputs_bidirectional_attention=True
        )
    return models.EncoderDecoderModel(model.module, objective=objective)


@pytest.mark.parametrize("which", ["t5_model", "dec_model"])
def test_params_axes_cover_every_parameter(request, which):
    _, variables = request.getfixturevalue(which)
    assert set(variables) == {"params", "params_axes"}
    params = {
        "/".join(p.key for p in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
    }
    axes = {
        "/".join(p.key for p in path): leaf.names
        for path, leaf in jax.tree_util.tree_leaves_with_path(
            variables["params_axes"], is_leaf=lambda x: hasattr(x, "names")
        )
    }
    assert sorted(axes) == sorted(k + "_axes" for k in params)
    for name, value in params.items():
        assert len(axes[name + "_axes"]) == value.ndim, name


@pytest.mark.parametrize("which", ["t5_model", "dec_model"])
def test_iqlearn_at_lambda_zero_equals_mle(request, which):
    model, variables = request.getfixturevalue(which)
    batch = _encdec_batch() if which == "t5_model" else _prefix_batch()
    rng = jax.random.PRNGKey(5)  # dropout on: both objectives see the same logits

    objectives = [
        (Objective(name="mle"), None),
        (Objective(name="iqlearn", lam=0.0), None),
        (Objective(name="iqlearn", lam=0.5, lam_warmup_steps=10), 3),
        (Objective(name="iqlearn", lam=0.5), None),
    ]

    @jax.jit
    def all_losses(params):
        grads = [
            jax.value_and_grad(
                lambda p, o=o, s=s: _with_objective(model, o).loss_fn(p, batch, rng, s)[0]
            )(params)
            for o, s in objectives[:3]
        ]
        iq = _with_objective(model, objectives[3][0]).loss_fn(params, batch, rng)[0]
        no_dropout = _with_objective(model, objectives[0][0]).eval_fn(params, batch)[0]
        return grads, iq, no_dropout

    grads, iq, no_dropout = all_losses(variables["params"])
    (mle, mle_grad), (iq0, iq0_grad), (warm, warm_grad) = grads
    np.testing.assert_allclose(iq0, mle, rtol=1e-6)
    np.testing.assert_allclose(warm, mle, rtol=1e-6)
    for g in (iq0_grad, warm_grad):
        for a, b in zip(
            jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(mle_grad), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(iq) > float(mle)
    assert not np.isclose(float(no_dropout), float(mle))  # dropout is on in loss_fn, off in eval_fn


def _numpy_intermediates(logits, targets, weights, gamma):
    logits = np.asarray(logits, np.float64)
    batch, length, _ = logits.shape
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    log_probs = np.zeros((batch, length))
    rewards = np.zeros((batch, length))
    mask = np.zeros((batch, length))
    for b in range(batch):
        for t in range(length):
            if weights[b, t] == 0:
                continue
            q = logits[b, t, targets[b, t]]
            log_probs[b, t] = q - log_z[b, t]
            if targets[b, t] == EOS:
                rewards[b, t], mask[b, t] = q, 1.0
            elif t + 1 < length and weights[b, t + 1] > 0:
                rewards[b, t], mask[b, t] = q - gamma * log_z[b, t + 1], 1.0
    return log_probs, log_z, rewards, mask


@pytest.mark.parametrize("which", ["t5_model", "dec_model"])
def test_score_batch_intermediates_match_numpy(request, which):
    model, variables = request.getfixturevalue(which)
    batch = _encdec_batch(1) if which == "t5_model" else _prefix_batch(1)
    model = _with_objective(model, Objective(name="iqlearn", lam=0.1, gamma=0.9))
    params = variables["params"]
    scores, inter = jax.jit(lambda p: model.score_batch(p, batch, return_intermediates=True))(
        params
    )
    if which == "t5_model":
        logits = model.module.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            enable_dropout=False,
        )
    else:
        logits = model.module.apply(
            {"params": params},
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            decoder_causal_attention=batch["decoder_causal_attention"],
            enable_dropout=False,
        )
    w = batch["decoder_loss_weights"]
    log_probs, values, rewards, mask = _numpy_intermediates(
        logits, batch["decoder_target_tokens"], w, 0.9
    )
    np.testing.assert_allclose(inter["token_log_probs"], log_probs, atol=1e-5)
    np.testing.assert_allclose(scores, log_probs.sum(-1), atol=1e-4)
    # Eager vs jitted: XLA may fuse/reorder the float32 sum over tokens differently (seen: 4e-6 on -23.57).
    np.testing.assert_allclose(model.score_batch(params, batch), scores, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(inter["values"], values, atol=1e-5)
    probs = np.exp(np.asarray(logits, np.float64) - values[..., None])
    entropies = -np.sum(probs * np.log(probs), axis=-1)
    np.testing.assert_allclose(inter["entropies"], entropies, atol=1e-4)
    np.testing.assert_array_equal(inter["td_mask"], mask)
    np.testing.assert_allclose(np.asarray(inter["rewards"]) * mask, rewards, atol=1e-5)
    np.testing.assert_allclose(inter["sequence_rewards"], rewards.sum(-1), atol=1e-4)


def test_t5_step_api_equals_full_forward(t5_model):
    model, variables = t5_model
    params = variables["params"]
    batch = _encdec_batch(2)
    full = model.module.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        np.ones_like(batch["decoder_target_tokens"]),
        enable_dropout=False,
    )
    state = model.start_decoding(params, batch)
    np.testing.assert_allclose(state.logits, full[:, 0], atol=2e-5)
    state = model.advance_decoding(params, state, batch["decoder_input_tokens"][:, 1:])
    np.testing.assert_allclose(state.logits, full[:, -1], atol=2e-5)
    assert int(state.position) == 6
    with pytest.raises(ValueError, match="cache holds 6"):
        model.advance_decoding(params, state, np.zeros((3,), np.int32))


def test_decoder_step_api_equals_full_forward(dec_model):
    """Prompts of different lengths: prefill + step-wise feeding (as the calculator does) = full forward pass."""
    model, variables = dec_model
    params = variables["params"]
    batch = _prefix_batch(3)
    full = model.module.apply(
        {"params": params},
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
        decoder_causal_attention=batch["decoder_causal_attention"],
        enable_dropout=False,
    )
    prompt = batch["decoder_causal_attention"].sum(1) - 1
    rows = np.arange(3)
    state = model.start_decoding(params, batch)
    advance = jax.jit(model.advance_decoding)
    for k in range(4):
        real = (
            batch["decoder_target_tokens"][rows, prompt + k] > 0
        )  # the full pass is garbage on padding
        assert real.sum() >= 2
        np.testing.assert_allclose(state.logits[real], full[rows, prompt + k][real], atol=2e-5)
        state = advance(params, state, batch["decoder_input_tokens"][rows, prompt + k + 1])


def _peaked(params, path, factor):
    """Scale the output projection so that distributions are sharp (greedy paths dominate)."""
    params = jax.tree_util.tree_map(lambda x: x, params)
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = node[path[-1]] * factor
    return params


def _naive_greedy_t5(model, params, batch):
    enc = batch["encoder_input_tokens"]
    n, length = batch["decoder_input_tokens"].shape
    fwd = jax.jit(
        lambda dec: model.module.apply(
            {"params": params}, enc, dec, jnp.ones_like(dec), enable_dropout=False
        )
    )
    out = np.zeros((n, length), np.int32)
    done = np.zeros(n, bool)
    for t in range(length):
        dec = np.concatenate([np.zeros((n, 1), np.int32), out[:, :-1]], 1)
        nxt = np.asarray(jnp.argmax(fwd(dec)[:, t], -1))
        out[:, t] = np.where(done, 0, nxt)
        done |= nxt == EOS
    return out


def test_t5_predict_greedy_beam_and_sampling_limits(t5_model):
    model, variables = t5_model
    params = _peaked(variables["params"], ("decoder", "logits_dense", "kernel"), 6.0)
    batch = _encdec_batch(4)
    expected = _naive_greedy_t5(model, params, batch)
    sampler = models.EncoderDecoderModel(model.module, decode_fn=decoding.temperature_sample)
    greedy, aux = sampler.predict_batch_with_aux(params, batch, decoder_params={"temperature": 0.0})
    np.testing.assert_array_equal(greedy, expected)
    cold, _ = sampler.predict_batch_with_aux(
        params, batch, rng=jax.random.PRNGKey(1), decoder_params={"temperature": 1e-6}
    )
    np.testing.assert_array_equal(cold, expected)
    top1, _ = sampler.predict_batch_with_aux(
        params, batch, decoder_params={"topk": 1}, num_decodes=2
    )
    np.testing.assert_array_equal(top1, expected)
    beam, beam_aux = model.predict_batch_with_aux(
        params, batch, decoder_params={"alpha": 0.0}, num_decodes=1
    )
    np.testing.assert_array_equal(beam, expected)
    np.testing.assert_allclose(beam_aux["scores"], aux["scores"], rtol=1e-5)


def test_sample_scores_equal_score_batch(t5_model):
    """The log-probability decoding reports for each sample equals score_batch on that sample."""
    model, variables = t5_model
    params = variables["params"]
    batch = _encdec_batch(5)
    sampler = models.EncoderDecoderModel(model.module, decode_fn=decoding.temperature_sample)
    samples, aux = sampler.predict_batch_with_aux(
        params, batch, rng=jax.random.PRNGKey(2), num_decodes=2, return_all_decodes=True
    )
    assert samples.shape == (3, 2, 6) and aux["scores"].shape == (3, 2)
    assert np.all(np.diff(np.asarray(aux["scores"]), axis=1) >= 0)
    flat = np.asarray(samples).reshape(6, 6)
    eos_before = np.cumsum(flat == EOS, 1) - (flat == EOS)  # EOS strictly before each position
    assert np.all(flat[eos_before > 0] == 0)  # positions after the first EOS are padding
    scored = dict(
        encoder_input_tokens=np.repeat(batch["encoder_input_tokens"], 2, 0),
        decoder_input_tokens=np.concatenate([np.zeros((6, 1), np.int32), flat[:, :-1]], 1),
        decoder_target_tokens=flat,
        decoder_loss_weights=(eos_before == 0).astype(np.float32),
    )
    # A sampled PAD (0) inside a sample is masked as a key by the teacher-forced pass (as in T5X), so only
    # samples without one are comparable.
    clean = ~np.any((flat == 0) & (eos_before == 0), axis=1)
    assert clean.sum() >= 3
    np.testing.assert_allclose(
        np.asarray(model.score_batch(params, scored))[clean],
        np.asarray(aux["scores"]).reshape(6)[clean],
        atol=1e-4,
    )


def test_decoder_predict_greedy_equals_naive_full_forward(dec_model):
    model, variables = dec_model
    params = _peaked(variables["params"], ("decoder", "logits_dense", "kernel"), 6.0)
    batch = _prefix_batch(6)
    n, length = batch["decoder_input_tokens"].shape
    prompt = batch["decoder_causal_attention"].sum(1) - 1
    fwd = jax.jit(
        lambda dec, tgt: model.module.apply(
            {"params": params},
            dec,
            tgt,
            decoder_causal_attention=batch["decoder_causal_attention"],
            enable_dropout=False,
        )
    )
    steps = length - prompt.max()
    dec = batch["decoder_input_tokens"] * batch["decoder_causal_attention"]
    expected = np.zeros((n, length), np.int32)
    done = np.zeros(n, bool)
    for k in range(steps):
        valid = (np.arange(length)[None] <= (prompt + k)[:, None]).astype(np.int32)
        nxt = np.asarray(jnp.argmax(fwd(dec, valid)[np.arange(n), prompt + k], -1))
        expected[:, k] = np.where(done, 0, nxt)
        done |= nxt == EOS
        dec[np.arange(n), np.minimum(prompt + k + 1, length - 1)] = np.where(done, 0, nxt)
    got, aux = model.predict_batch_with_aux(params, batch, decoder_params={"temperature": 0.0})
    np.testing.assert_array_equal(got, expected)
    beam = models.DecoderOnlyModel(
        model.module, decode_fn=decoding.beam_search, inputs_bidirectional_attention=True
    )
    got_beam, beam_aux = beam.predict_batch_with_aux(
        params, batch, decoder_params={"alpha": 0.0}, num_decodes=1
    )
    np.testing.assert_array_equal(got_beam, expected)
    np.testing.assert_allclose(beam_aux["scores"], aux["scores"], rtol=1e-5)


def test_bad_batches_are_refused(dec_model):
    model, variables = dec_model
    batch = _prefix_batch()
    del batch["decoder_causal_attention"]
    with pytest.raises(ValueError, match="decoder_causal_attention"):
        model.loss_fn(variables["params"], batch, None)
    with pytest.raises(ValueError, match="decoder_target_tokens"):
        model.score_batch(
            variables["params"], {"decoder_input_tokens": batch["decoder_input_tokens"]}
        )
    with pytest.raises(ValueError, match="objective"):
        models.DecoderOnlyModel(model.module, objective="mle")
