"""Decoder-only network: T5X parameter names/axes, KV cache vs full pass, prefill, prefix-LM masks from seqio."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from iqlearn_jax.networks.decoder import DecoderOnlyConfig, DecoderWrapper, prefill_cache

VOCAB = 29


def _config(**overrides):
    base = dict(
        vocab_size=VOCAB,
        emb_dim=16,
        num_heads=2,
        num_layers=2,
        head_dim=8,
        mlp_dim=24,
        dropout_rate=0.0,
        dtype="float32",
    )
    base.update(overrides)
    return DecoderOnlyConfig(**base)


@pytest.fixture(scope="module")
def net():
    module = DecoderWrapper(_config())
    tokens = jnp.ones((2, 12), jnp.int32)
    variables = module.init(jax.random.PRNGKey(0), tokens, tokens, enable_dropout=False)
    return module, variables


def test_t5x_decoder_only_names_and_axes(net):
    _, variables = net
    flat = {
        "/".join(p.key for p in path): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
    }
    expected = {
        "decoder/token_embedder/embedding": ((VOCAB, 16), ("vocab", "embed")),
        "decoder/relpos_bias/rel_embedding": ((2, 32), ("heads", "relpos_buckets")),
        "decoder/decoder_norm/scale": ((16,), ("embed",)),
        "decoder/logits_dense/kernel": ((16, VOCAB), ("embed", "vocab")),
    }
    for i in range(2):
        p = f"decoder/layers_{i}"
        expected[f"{p}/pre_self_attention_layer_norm/scale"] = ((16,), ("embed",))
        expected[f"{p}/pre_mlp_layer_norm/scale"] = ((16,), ("embed",))
        for name in ("query", "key", "value"):
            expected[f"{p}/self_attention/{name}/kernel"] = ((16, 16), ("embed", "joined_kv"))
        expected[f"{p}/self_attention/out/kernel"] = ((16, 16), ("joined_kv", "embed"))
        expected[f"{p}/mlp/wi_0/kernel"] = ((16, 24), ("embed", "mlp"))
        expected[f"{p}/mlp/wi_1/kernel"] = ((16, 24), ("embed", "mlp"))
        expected[f"{p}/mlp/wo/kernel"] = ((24, 16), ("mlp", "embed"))
    assert flat == {k: v[0] for k, v in expected.items()}
    axes = {
        "/".join(p.key for p in path): leaf.names
        for path, leaf in jax.tree_util.tree_leaves_with_path(
            variables["params_axes"], is_leaf=lambda x: hasattr(x, "names")
        )
    }
    assert axes == {k + "_axes": v[1] for k, v in expected.items()}


def _random_sequences(seed, batch, length, min_len):
    rng = np.random.default_rng(seed)
    targets = np.zeros((batch, length), np.int32)
    for b in range(batch):
        n = rng.integers(min_len, length + 1)
        targets[b, :n] = rng.integers(2, VOCAB, n)
        targets[b, n - 1] = 1
    inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    return inputs, targets


def test_kv_cache_steps_equal_full_forward(net):
    module, variables = net
    params = variables["params"]
    inputs, targets = _random_sequences(0, 3, 12, 12)
    full = module.apply({"params": params}, inputs, targets, enable_dropout=False)
    _, cache = module.apply(
        {"params": params}, inputs, None, decode=True, enable_dropout=False, mutable=["cache"]
    )
    step = jax.jit(
        lambda c, tok: module.apply(
            {"params": params, "cache": c},
            tok,
            None,
            decode=True,
            enable_dropout=False,
            mutable=["cache"],
        )
    )
    cache = cache["cache"]
    steps = []
    for t in range(12):
        logits, new = step(cache, inputs[:, t : t + 1])
        cache = new["cache"]
        steps.append(logits[:, 0])
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_prefill_then_steps_equal_full_forward(net, bidirectional):
    """Prompts of different lengths, right-aligned by prefill_cache, continue exactly as the full pass."""
    module, variables = net
    params = variables["params"]
    inputs, targets = _random_sequences(1, 3, 12, 12)
    prompt_lengths = np.array([3, 6, 1])
    causal = (np.arange(12)[None, :] <= prompt_lengths[:, None]).astype(np.int32)
    full = module.apply(
        {"params": params},
        inputs,
        targets,
        decoder_causal_attention=causal if bidirectional else None,
        enable_dropout=False,
    )
    cache, aligned, start = prefill_cache(
        module, params, inputs, prompt_lengths, causal if bidirectional else None
    )
    start = int(start)
    assert start == 6
    for b, n in enumerate(prompt_lengths):  # the prompt ends at slot `start` in every row
        np.testing.assert_array_equal(aligned[b, start - n : start + 1], inputs[b, : n + 1])
    step = jax.jit(
        lambda c, tok: module.apply(
            {"params": params, "cache": c},
            tok,
            None,
            decode=True,
            enable_dropout=False,
            mutable=["cache"],
        )
    )
    # Feed each row's last prompt token, then its true continuation (teacher forcing) for 12 - start steps.
    for k in range(12 - start):
        tok = np.array([inputs[b, n + k] for b, n in enumerate(prompt_lengths)])[:, None]
        logits, new = step(cache, tok)
        cache = new["cache"]
        expected = np.stack([full[b, n + k] for b, n in enumerate(prompt_lengths)])
        np.testing.assert_allclose(logits[:, 0], expected, atol=2e-5, rtol=1e-5)


def _prefix_lm_batch(pack):
    examples = [
        dict(inputs=[9, 4, 6, 1], targets=[3, 9, 1]),
        dict(inputs=[5, 1], targets=[7, 7, 8, 1]),
        dict(inputs=[2, 3, 4, 5, 1], targets=[6, 1]),
        dict(inputs=[11, 1], targets=[12, 13, 1]),
    ]
    ds = tf.data.Dataset.from_generator(
        lambda: ({k: np.array(v, np.int32) for k, v in e.items()} for e in examples),
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32),
        },
    )
    converted = seqio.PrefixLMFeatureConverter(pack=pack)(ds, {"inputs": 7, "targets": 6})
    rows = list(converted.as_numpy_iterator())
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _expected_mask(batch):
    """NumPy mask from the converter's features: causal, or both in the prefix; non-padding; same segment."""
    tgt = batch["decoder_target_tokens"]
    causal = batch["decoder_causal_attention"]
    seg = batch.get("decoder_segment_ids", (tgt > 0).astype(np.int32))
    n, length = tgt.shape
    mask = np.zeros((n, length, length), bool)
    for b in range(n):
        for i in range(length):
            for j in range(length):
                visible = j <= i or (causal[b, i] == 1 and causal[b, j] == 1)
                mask[b, i, j] = (
                    visible and tgt[b, i] > 0 and tgt[b, j] > 0 and seg[b, i] == seg[b, j]
                )
    return mask


@pytest.mark.parametrize("pack", [False, True])
def test_prefix_lm_attention_follows_seqio_converter(pack):
    """With one layer, logits at i change when input token j changes iff i may attend to j."""
    batch = _prefix_lm_batch(pack)
    if pack:
        assert batch["decoder_segment_ids"].max() >= 2  # the converter really packed examples
    module = DecoderWrapper(_config(num_layers=1))
    tokens = jnp.asarray(batch["decoder_input_tokens"])
    params = module.init(jax.random.PRNGKey(1), tokens, tokens, enable_dropout=False)["params"]

    n, length = tokens.shape

    def tiled(name):  # one copy of the batch per perturbed position, plus the unperturbed one
        return None if name not in batch else np.tile(batch[name], (length + 1, 1))

    perturbed = np.tile(np.asarray(tokens), (length + 1, 1)).reshape(length + 1, n, length)
    for j in range(length):
        perturbed[j, :, j] = (perturbed[j, :, j] + 7) % (VOCAB - 2) + 2
    logits = module.apply(
        {"params": params},
        perturbed.reshape(-1, length),
        tiled("decoder_target_tokens"),
        decoder_segment_ids=tiled("decoder_segment_ids"),
        decoder_causal_attention=tiled("decoder_causal_attention"),
        enable_dropout=False,
    )
    logits = np.asarray(logits).reshape(length + 1, n, length, VOCAB)
    base = logits[length]
    # observed[b, i, j]: did the logits at i move when input token j changed?
    observed = np.moveaxis(np.abs(logits[:length] - base[None]).max(-1) > 1e-6, 0, -1)
    expected = _expected_mask(batch)
    valid = batch["decoder_target_tokens"] > 0
    for b in range(n):
        rows = np.flatnonzero(valid[b])
        # Off-diagonal dependencies (the diagonal always depends on its own token through the residual path).
        off = ~np.eye(length, dtype=bool)[np.ix_(rows, np.arange(length))]
        np.testing.assert_array_equal(
            observed[b][rows][off], expected[b][rows][off], err_msg=f"row {b}"
        )
