"""Vocabulary-chunked output layer + loss (iqlearn_jax.chunked_loss) against the unchunked reference path.

Every objective's loss, metrics and gradients (hidden states and output projection; every network parameter through
the models) must equal the full-logits path in float32, for chunk sizes that do and do not divide the vocabulary,
with and without the padded-vocabulary mask, tied (T5.1.0) and untied (T5.1.1) heads, encoder-decoder and
decoder-only models, and under a ('data', 'model') mesh of 8 emulated devices with the vocabulary sharded on 'model'.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from iqlearn_jax import chunked_loss, losses, models, trainer
from iqlearn_jax.networks.decoder import DecoderOnlyConfig, DecoderWrapper
from iqlearn_jax.networks.t5 import T5Config, Transformer
from iqlearn_jax.objectives import Objective
from iqlearn_jax.partitioning import Partitioner

EOS = 1
TOL = dict(rtol=1e-5, atol=1e-5)


def _targets(rng, batch, length, vocab):
    """Targets with an EOS-terminated row, a truncated row, padding and a padded-vocab-free range."""
    tgt = rng.integers(2, vocab, (batch, length)).astype(np.int32)
    tgt[0, 3], tgt[0, 4:] = EOS, 0
    tgt[1, length - 2] = EOS
    return jnp.asarray(tgt), jnp.asarray((tgt > 0).astype(np.float32))


def _close(actual, expected, what):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), err_msg=what, **TOL)


# ---- losses.py on (hidden, projection) directly -------------------------------------------------------------
def _all_objectives(logits, policy_logits, tgt, w, ptgt, pw, segment_ids, valid):
    """Every objective of losses.py on the same (chunked or full) logits: {name: (loss, metrics)}."""
    out = {
        "mle_ls_z": losses.mle_loss(logits, tgt, w, label_smoothing=0.1, z_loss=1e-2),
        "mle_entropy": losses.entropy_regularized_loss(logits, tgt, w, beta=0.3),
        "iqlearn": losses.iqlearn_loss(
            logits, tgt, w, lam=0.5, gamma=0.9, segment_ids=segment_ids, valid_vocab_size=valid,
            loss_normalizing_factor="AVERAGE_PER_SEQUENCE",
        ),
        "online": losses.online_iqlearn_loss(
            logits, tgt, w, policy_logits, ptgt, pw, lam=0.5, alpha=0.3, gamma=0.95,
            loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
        ),
    }  # fmt: skip
    out["policy_td"] = losses.td_regularizer_loss(  # online IQLearn's policy term (algorithms/)
        policy_logits, ptgt, pw, lam=0.5, gamma=0.9, valid_vocab_size=valid
    )
    rewards, mask = losses.implicit_rewards(logits, tgt, w, gamma=0.8, segment_ids=segment_ids)
    terms = losses.token_terms(logits, tgt, valid)
    out["rewards"] = (jnp.sum(rewards**2), {"rewards": rewards, "mask": mask, **terms})
    return out


def test_every_objective_matches_full_logits():
    """On a (2, 4) mesh, kernel [embed, vocab] sharded on 'model' along the vocabulary, 48 rows in chunks of 10
    (5 chunks, the last padded); masked (iqlearn, token_terms: valid_vocab_size=45) and unmasked (mle, entropy,
    online, implicit rewards) reductions in the same run. The tied [vocab, embed] layout: the model tests below."""
    tied, chunk = False, 10
    vocab, embed, batch, length, valid = 48, 12, 4, 7, 45
    rng = np.random.default_rng(0)
    partitioner = Partitioner(mesh_shape=(2, 4), devices=jax.devices()[:8])
    put = lambda x, *spec: jax.device_put(x, partitioner.sharding(PartitionSpec(*spec)))  # noqa: E731
    hidden = put(jnp.asarray(rng.normal(size=(batch, length, embed)), jnp.float32), "data")
    policy_hidden = put(jnp.asarray(rng.normal(size=(2, length, embed)), jnp.float32), "data")
    shape, spec = ((vocab, embed), ("model", None)) if tied else ((embed, vocab), (None, "model"))
    weight = put(jnp.asarray(rng.normal(size=shape) * 0.8, jnp.float32), *spec)
    scale = 0.5 if tied else 1.0
    tgt, w = _targets(rng, batch, length, valid)  # targets never in the padded rows
    ptgt, pw = _targets(rng, 2, length, valid)
    segment_ids = jnp.asarray(np.where(np.asarray(tgt) > 0, 1 + (np.arange(length) >= 5), 0))
    names = ("mle_ls_z", "mle_entropy", "iqlearn", "online", "policy_td", "rewards")

    def run(h, ph, wt, chunked):
        heads = [chunked_loss.OutputHead(x, wt, int(not tied), scale) for x in (h, ph)]
        if chunked:
            logits = [chunked_loss.ChunkedLogits(head, chunk) for head in heads]
        else:
            logits = [head.logits() for head in heads]
        out = _all_objectives(*logits, tgt, w, ptgt, pw, segment_ids, valid)
        return jnp.stack([out[n][0] for n in names]), {n: out[n][1] for n in names}

    @jax.jit
    def values_and_grads(h, ph, wt):
        result = {}
        for chunked in (False, True):
            losses_, metrics = run(h, ph, wt, chunked)
            grads = jax.jacrev(lambda *a, c=chunked: run(*a, c)[0], argnums=(0, 1, 2))(h, ph, wt)
            result[chunked] = (losses_, metrics, grads)
        return result

    with partitioner.activation_context():
        result = values_and_grads(hidden, policy_hidden, weight)
    full, full_metrics, full_grads = result[False]
    chunk_, chunk_metrics, chunk_grads = result[True]
    _close(chunk_, full, "losses")
    assert np.all(np.isfinite(np.asarray(full)))
    for name in names:
        assert set(chunk_metrics[name]) == set(full_metrics[name]), name
        for key, value in full_metrics[name].items():
            _close(chunk_metrics[name][key], value, f"{name}/{key}")
    for arg, (g_full, g_chunk) in enumerate(zip(full_grads, chunk_grads, strict=True)):
        for i, name in enumerate(names):
            reads = arg == 2 or (arg == 1) == (name in ("online", "policy_td"))
            if reads:  # the policy hidden states feed only the online losses
                assert np.abs(np.asarray(g_full[i])).max() > 0, (name, arg)
            _close(g_chunk[i], g_full[i], f"d {name} / d arg{arg}")


def test_argmax_ties_and_stats_against_numpy():
    """Accuracy uses the FIRST maximum (as jnp.argmax) across chunk boundaries; V, q, H, Σℓ against NumPy."""
    hidden = jnp.eye(4, dtype=jnp.float32)[None, :, :]  # 1 x 4 positions
    weight = np.zeros((4, 10), np.float32)
    weight[:, [2, 7]] = (
        3.0  # ties between chunk 0/1 columns (chunk 4: layout 3 chunks of 4, strided)
    )
    weight[1, 9] = 5.0
    head = chunked_loss.OutputHead(hidden, jnp.asarray(weight))
    targets = jnp.asarray([[2, 9, 7, 0]], jnp.int32)
    terms = losses.token_terms(chunked_loss.ChunkedLogits(head, 4), targets, 9)
    logits = np.asarray(head.logits(), np.float64)[0][:, :9]
    np.testing.assert_array_equal(np.asarray(terms["correct"])[0], [1, 0, 0, 0])
    lse = np.log(np.exp(logits).sum(-1))
    p = np.exp(logits - lse[:, None])
    np.testing.assert_allclose(terms["value"][0], lse, rtol=1e-6)
    np.testing.assert_allclose(terms["entropy"][0], -(p * np.log(p)).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(terms["logit_sum"][0], logits.sum(-1), rtol=1e-6)
    np.testing.assert_allclose(terms["q"][0], [3.0, chunked_loss.MASKED_LOGIT, 3.0, 0.0])


def test_chunk_layout_and_bad_chunk_size():
    assert chunked_loss.chunk_layout(32128, 8192) == (4, 8032)
    assert chunked_loss.chunk_layout(48, 13) == (4, 12)
    assert chunked_loss.chunk_layout(45, 100) == (1, 45)
    n, c = chunked_loss.chunk_layout(101, 32)
    assert n * c >= 101 and c <= 32
    with pytest.raises(ValueError, match="vocab_chunk_size"):
        Objective(name="mle", vocab_chunk_size=0)
    head = chunked_loss.OutputHead(jnp.zeros((1, 2, 3)), jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="valid_vocab_size"):
        chunked_loss.ChunkedLogits(head, 2).token_terms(jnp.zeros((1, 2), jnp.int32), 6)


def test_layout_follows_vocabulary_sharding():
    # Contiguous chunks (no weight copy) unless the mesh splits 'vocab'; the mesh tests above and below run the
    # strided layout, the model tests below (no mesh) the contiguous one, both against the full logits.
    assert chunked_loss.vocab_shards() == 1
    for mesh, shards in (((8, 1), 1), ((2, 4), 4)):
        with Partitioner(mesh_shape=mesh, devices=jax.devices()[:8]).activation_context():
            assert chunked_loss.vocab_shards() == shards, mesh
    rng = np.random.default_rng(1)
    head = chunked_loss.OutputHead(
        jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32),
        jnp.asarray(rng.normal(size=(4, 11)), jnp.float32),
    )
    for strided in (False, True):
        w3 = chunked_loss._chunked_weight(head, 3, 4, strided)  # 11 rows padded to 12
        for k in range(3):
            cols = np.arange(4) * 3 + k if strided else k * 4 + np.arange(4)
            expect = np.pad(np.asarray(head.weight), ((0, 0), (0, 1)))[:, cols]
            got = chunked_loss._chunk_weight(w3, jnp.asarray(k), 1, strided)
            np.testing.assert_array_equal(got, expect)


# ---- through the networks and model classes -------------------------------------------------------------------
def _t5(tied, vocab):
    return Transformer(
        T5Config(
            vocab_size=vocab, emb_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
            head_dim=8, mlp_dim=24, dropout_rate=0.1, logits_via_embedding=tied,
            mlp_activations=("relu",) if tied else ("gelu", "linear"),
        )
    )  # fmt: skip


def _decoder(tied, vocab):
    return DecoderWrapper(
        DecoderOnlyConfig(
            vocab_size=vocab, emb_dim=16, num_heads=2, num_layers=1, head_dim=8, mlp_dim=24,
            dropout_rate=0.1, logits_via_embedding=tied,
        )
    )  # fmt: skip


def _batch(encdec, vocab, batch=4, length=8, seed=0):
    rng = np.random.default_rng(seed)
    tgt, w = _targets(
        rng, batch, length, vocab - 4
    )  # ids < vocab - 4: valid_vocab_size = vocab - 4 is right
    out = dict(
        decoder_input_tokens=jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), tgt[:, :-1]], 1),
        decoder_target_tokens=tgt,
        decoder_loss_weights=w,
    )
    if encdec:
        out["encoder_input_tokens"] = jnp.asarray(rng.integers(2, vocab, (batch, 6)), jnp.int32)
    return out


OBJECTIVES = {
    "mle": dict(name="mle", label_smoothing=0.1, z_loss=1e-3),
    "mle_entropy": dict(name="mle_entropy", beta=0.2),
    "iqlearn": dict(name="iqlearn", lam=0.3, gamma=0.9, lam_warmup_steps=1, valid_vocab_size=32),
}


@pytest.mark.parametrize(
    "network,tied,chunk,objective",
    [("t5", True, 10, "iqlearn"), ("t5", False, 12, "mle"), ("decoder", True, 7, "mle_entropy")],
    ids=["t5.1.0-tied-pad", "t5.1.1-untied-divides", "decoder-tied-pad"],
)
def test_models_chunked_equal_full(network, tied, chunk, objective):
    """loss_fn (with dropout) and score_batch(return_intermediates=True): every metric, every parameter's gradient."""
    vocab = 36
    encdec = network == "t5"
    module = _t5(tied, vocab) if encdec else _decoder(tied, vocab)
    cls = models.EncoderDecoderModel if encdec else models.DecoderOnlyModel
    batch = _batch(encdec, vocab)
    shapes = {k: v.shape for k, v in batch.items()}
    params = cls(module).get_initial_variables(jax.random.PRNGKey(1), shapes)["params"]
    rng = jax.random.PRNGKey(7)

    @jax.jit
    def run(params):
        out = []
        for chunk_size in (None, chunk):
            model = cls(
                module, objective=Objective(**OBJECTIVES[objective], vocab_chunk_size=chunk_size)
            )
            grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
            (loss, metrics), grads = grad_fn(params, batch, rng, step=3)
            scores, extra = model.score_batch(params, batch, return_intermediates=True)
            out.append((loss, metrics, grads, scores, extra))
        return out

    ref, got = run(params)
    what = f"{network} tied={tied} {objective}"
    _close(got[0], ref[0], f"{what}: loss")
    assert set(got[1]) == set(ref[1])
    for key in ref[1]:
        _close(got[1][key], ref[1][key], f"{what}: metric {key}")
    for (path, g), g_ref in zip(
        jax.tree.leaves_with_path(got[2]), jax.tree.leaves(ref[2]), strict=True
    ):
        _close(g, g_ref, f"{what}: grad {jax.tree_util.keystr(path)}")
    projection = (
        "token_embedder" if tied else "logits_dense"
    )  # the output projection's gradient is not zero
    head = [g for path, g in jax.tree.leaves_with_path(got[2]) if projection in str(path)]
    assert len(head) == 1 and np.abs(np.asarray(head[0])).max() > 0
    _close(got[3], ref[3], f"{what}: scores")
    for key in ref[4]:
        _close(got[4][key], ref[4][key], f"{what}: score_batch {key}")


# ---- 8 emulated devices, vocabulary sharded on 'model' -----------------------------------------------------------
def test_sharded_train_step_chunked_equals_full():
    """THE jitted train step on a (2, 4) mesh, a tied decoder-only embedding [vocab, embed] sharded on 'model', 64
    rows in chunks of ≤ 24 (3 chunks of 22, padded to 66), with and without chunking: metrics and updated params."""
    vocab, mesh, chunk = 64, (2, 4), 24
    partitioner = Partitioner(mesh_shape=mesh, devices=jax.devices()[:8])
    optimizer = optax.sgd(0.5)
    module = _decoder(True, vocab)
    batch = _batch(False, vocab, batch=4)
    objective = dict(name="iqlearn", lam=0.3, valid_vocab_size=vocab - 4)
    results = {}
    for chunk_size in (None, chunk):
        model = models.DecoderOnlyModel(
            module, objective=Objective(**objective, vocab_chunk_size=chunk_size)
        )
        shapes = {k: (v.shape, np.dtype(v.dtype)) for k, v in batch.items()}
        _, shardings = trainer.abstract_train_state(model, optimizer, partitioner, shapes)
        embedding_spec = shardings.params["decoder"]["token_embedder"]["embedding"].spec
        assert tuple(embedding_spec) == ("model", None), embedding_spec
        state = trainer.init_train_state(model, optimizer, partitioner, shapes, 0, shardings)
        step = trainer.build_train_step(model, optimizer, partitioner, shardings)
        sharded = partitioner.shard_batch({k: np.asarray(v) for k, v in batch.items()})
        new_state, metrics = step(state, sharded)
        results[chunk_size] = (jax.device_get(new_state.params), jax.device_get(metrics))
    full, chunked = results[None], results[chunk]
    for key in full[1]:
        _close(chunked[1][key], full[1][key], f"metric {key}")
    for (path, a), b in zip(
        jax.tree.leaves_with_path(chunked[0]), jax.tree.leaves(full[0]), strict=True
    ):
        _close(a, b, f"updated param {jax.tree_util.keystr(path)}")


def test_dataclass_is_a_pytree():
    head = chunked_loss.OutputHead(jnp.ones((1, 2, 3)), jnp.ones((3, 5)), 1, 0.5)
    leaves, tree = jax.tree.flatten(chunked_loss.ChunkedLogits(head, 2))
    assert len(leaves) == 2
    rebuilt = jax.tree.unflatten(tree, leaves)
    assert rebuilt.chunk_size == 2 and rebuilt.head.logit_scale == 0.5
    assert dataclasses.replace(rebuilt, chunk_size=3).shape == (1, 2, 5)
