"""T5 network: T5X parameter names/axes, KV-cache decoding, packing, gin configs."""

import dataclasses
import functools
import glob
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iqlearn_jax.networks import masks
from iqlearn_jax.networks.t5 import (
    T5Config,
    Transformer,
    flatten_params,
    param_shapes,
    validate_params,
)

GATED = T5Config(
    vocab_size=97,
    emb_dim=32,
    num_heads=4,
    num_encoder_layers=2,
    num_decoder_layers=3,
    head_dim=8,
    mlp_dim=48,
    mlp_activations=("gelu", "linear"),
    logits_via_embedding=False,
    dropout_rate=0.1,
)
RELU_TIED = T5Config(
    vocab_size=97,
    emb_dim=32,
    num_heads=2,
    num_encoder_layers=3,
    num_decoder_layers=2,
    head_dim=12,
    mlp_dim=40,
    mlp_activations=("relu",),
    logits_via_embedding=True,
    dropout_rate=0.1,
)
CONFIGS = {"t5_1_1": GATED, "t5_1_0": RELU_TIED}


def _batch(rng, batch=2, enc_len=9, dec_len=7, vocab=97, pad_targets=False):
    enc = rng.randint(2, vocab, (batch, enc_len))
    enc[0, enc_len - 3 :] = 0  # encoder padding
    tgt = rng.randint(2, vocab, (batch, dec_len))
    if pad_targets:
        tgt[1, dec_len - 2 :] = 0
    dec_in = np.concatenate([np.zeros((batch, 1), int), tgt[:, :-1]], axis=1)
    return jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(tgt)


@functools.cache
def _init(cfg, rng=0):
    """Initial variables, computed once per config (initialisation dominates test time)."""
    enc, dec_in, tgt = _batch(np.random.RandomState(rng))
    return Transformer(cfg).init(jax.random.PRNGKey(rng), enc, dec_in, tgt, enable_dropout=False)


def _expected_t5x_names(cfg):
    """The T5X examples/t5/network.py parameter table (issue 3), written out independently."""
    mlp = ["wi"] if len(cfg.mlp_activations) == 1 else ["wi_0", "wi_1"]
    emb, joined, ff = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim
    names = {
        "token_embedder/embedding": ((cfg.vocab_size, emb), ("vocab", "embed")),
        "encoder/relpos_bias/rel_embedding": ((cfg.num_heads, 32), ("heads", "relpos_buckets")),
        "decoder/relpos_bias/rel_embedding": ((cfg.num_heads, 32), ("heads", "relpos_buckets")),
        "encoder/encoder_norm/scale": ((emb,), ("embed",)),
        "decoder/decoder_norm/scale": ((emb,), ("embed",)),
    }

    def attn(prefix):
        for p in ("query", "key", "value"):
            names[f"{prefix}/{p}/kernel"] = ((emb, joined), ("embed", "joined_kv"))
        names[f"{prefix}/out/kernel"] = ((joined, emb), ("joined_kv", "embed"))

    def mlp_block(prefix):
        for w in mlp:
            names[f"{prefix}/{w}/kernel"] = ((emb, ff), ("embed", "mlp"))
        names[f"{prefix}/wo/kernel"] = ((ff, emb), ("mlp", "embed"))

    for i in range(cfg.num_encoder_layers):
        p = f"encoder/layers_{i}"
        names[f"{p}/pre_attention_layer_norm/scale"] = ((emb,), ("embed",))
        names[f"{p}/pre_mlp_layer_norm/scale"] = ((emb,), ("embed",))
        attn(f"{p}/attention")
        mlp_block(f"{p}/mlp")
    for i in range(cfg.num_decoder_layers):
        p = f"decoder/layers_{i}"
        for norm in ("pre_self_attention", "pre_cross_attention", "pre_mlp"):
            names[f"{p}/{norm}_layer_norm/scale"] = ((emb,), ("embed",))
        attn(f"{p}/self_attention")
        attn(f"{p}/encoder_decoder_attention")
        mlp_block(f"{p}/mlp")
    if not cfg.logits_via_embedding:
        names["decoder/logits_dense/kernel"] = ((emb, cfg.vocab_size), ("embed", "vocab"))
    return names


@pytest.mark.parametrize("variant", sorted(CONFIGS))
def test_param_names_shapes_and_axes_match_t5x(variant):
    cfg = CONFIGS[variant]
    variables = _init(cfg)
    params = flatten_params(variables["params"])
    axes = flatten_params(variables["params_axes"])
    expected = _expected_t5x_names(cfg)
    assert set(params) == set(expected)
    # params_axes mirrors params exactly: '<path>/<name>_axes' for every parameter.
    assert set(axes) == {f"{k}_axes" for k in params}
    for name, (shape, axis_names) in expected.items():
        assert params[name].shape == shape, name
        assert params[name].dtype == jnp.float32, name
        assert tuple(axes[f"{name}_axes"].names) == axis_names, name
    assert sum(p.size for p in params.values()) == cfg.num_params()
    validate_params(cfg, variables["params"])


def _step_decode(cfg, params, enc, dec_in, tgt, jit=True, corrupt_encoded_after_first=False):
    """Greedy-free teacher-forced decoding one position at a time through the cache."""
    model = Transformer(cfg)
    length = dec_in.shape[1]
    _, init_vars = model.apply(
        {"params": params},
        jnp.ones_like(enc),
        jnp.ones_like(dec_in),
        jnp.ones_like(tgt),
        decode=True,
        enable_dropout=False,
        mutable=["cache"],
    )
    cache = init_vars["cache"]
    encoded = model.apply({"params": params}, enc, enable_dropout=False, method=model.encode)

    def step(cache, encoded, token):
        return model.apply(
            {"params": params, "cache": cache},
            encoded,
            enc,
            token,
            token,
            enable_dropout=False,
            decode=True,
            max_decode_length=length,
            mutable=["cache"],
            method=model.decode,
        )

    if jit:
        step = jax.jit(step)
    outs = []
    for t in range(length):
        enc_t = encoded
        if corrupt_encoded_after_first and t > 0:
            enc_t = jnp.full_like(encoded, 1e3)  # must be ignored: cross K/V come from the cache
        logits, new_vars = step(cache, enc_t, dec_in[:, t : t + 1])
        cache = new_vars["cache"]
        outs.append(logits)
    return jnp.concatenate(outs, axis=1), cache, encoded


@pytest.mark.parametrize("variant", sorted(CONFIGS))
def test_kv_cache_decoding_equals_full_forward(variant):
    cfg = CONFIGS[variant]
    params = _init(cfg)["params"]
    enc, dec_in, tgt = _batch(np.random.RandomState(1))
    full = Transformer(cfg).apply({"params": params}, enc, dec_in, tgt, enable_dropout=False)
    stepped, cache, encoded = _step_decode(
        cfg, params, enc, dec_in, tgt, corrupt_encoded_after_first=True
    )
    np.testing.assert_allclose(np.asarray(stepped), np.asarray(full), atol=2e-5, rtol=1e-5)

    # Cross-attention keys were projected once, from the true encoder output.
    kernel = params["decoder"]["layers_0"]["encoder_decoder_attention"]["key"]["kernel"]
    want = np.einsum("ble,ek->blk", np.asarray(encoded), np.asarray(kernel))
    cross = cache["decoder"]["layers_0"]["encoder_decoder_attention"]
    got = np.asarray(cross["cached_key"]).reshape(want.shape)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert int(cross["cache_index"]) == dec_in.shape[1]
    self_cache = cache["decoder"]["layers_0"]["self_attention"]
    assert self_cache["cached_key"].shape == (2, cfg.num_heads, cfg.head_dim, dec_in.shape[1])


def test_decode_step_without_max_decode_length_is_a_clear_error():
    params = _init(GATED)["params"]
    enc, dec_in, tgt = _batch(np.random.RandomState(2))
    model = Transformer(GATED)
    _, v = model.apply(
        {"params": params}, enc, dec_in, tgt, decode=True, enable_dropout=False, mutable=["cache"]
    )
    with pytest.raises(ValueError, match="max_decode_length"):
        model.apply(
            {"params": params, "cache": v["cache"]},
            enc,
            dec_in[:, :1],
            tgt[:, :1],
            decode=True,
            enable_dropout=False,
            mutable=["cache"],
        )


def test_packed_batch_equals_separate_examples():
    cfg = GATED
    params = _init(cfg)["params"]
    model = Transformer(cfg)
    rng = np.random.RandomState(3)
    a_enc, b_enc = rng.randint(2, 97, 4), rng.randint(2, 97, 3)
    a_tgt, b_tgt = rng.randint(2, 97, 3), rng.randint(2, 97, 4)

    def shift(t):
        return np.concatenate([[0], t[:-1]])

    def run(enc, tgt, dec_in, **kw):
        return np.asarray(
            model.apply(
                {"params": params},
                jnp.asarray(enc)[None],
                jnp.asarray(dec_in)[None],
                jnp.asarray(tgt)[None],
                enable_dropout=False,
                **{k: jnp.asarray(v)[None] for k, v in kw.items()},
            )[0]
        )

    packed = run(
        np.concatenate([a_enc, b_enc, [0]]),
        np.concatenate([a_tgt, b_tgt, [0]]),
        np.concatenate([shift(a_tgt), shift(b_tgt), [0]]),
        encoder_segment_ids=np.array([1] * 4 + [2] * 3 + [0]),
        decoder_segment_ids=np.array([1] * 3 + [2] * 4 + [0]),
        encoder_positions=np.array([0, 1, 2, 3, 0, 1, 2, 0]),
        decoder_positions=np.array([0, 1, 2, 0, 1, 2, 3, 0]),
    )
    # T5 biases depend on position differences only and cross-segment pairs are masked,
    # so each packed segment must reproduce its unpacked logits.
    np.testing.assert_allclose(packed[:3], run(a_enc, a_tgt, shift(a_tgt)), atol=2e-5)
    np.testing.assert_allclose(packed[3:7], run(b_enc, b_tgt, shift(b_tgt)), atol=2e-5)


def test_dropout_is_active_only_when_enabled():
    params = _init(GATED)["params"]
    enc, dec_in, tgt = _batch(np.random.RandomState(4))
    model = Transformer(GATED)

    def run(seed, enable):
        return np.asarray(
            model.apply(
                {"params": params},
                enc,
                dec_in,
                tgt,
                enable_dropout=enable,
                rngs={"dropout": jax.random.PRNGKey(seed)},
            )
        )

    assert not np.allclose(run(0, True), run(1, True))
    np.testing.assert_array_equal(run(0, False), run(1, False))


def test_bfloat16_activations_keep_float32_params_and_logits():
    cfg = dataclasses.replace(GATED, dtype="bfloat16")
    variables = _init(GATED)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    enc, dec_in, tgt = _batch(np.random.RandomState(5))
    logits = Transformer(cfg).apply(variables, enc, dec_in, tgt, enable_dropout=False)
    ref = Transformer(GATED).apply(variables, enc, dec_in, tgt, enable_dropout=False)
    assert logits.dtype == jnp.float32
    assert np.abs(np.asarray(logits) - np.asarray(ref)).max() < 0.1 * np.abs(ref).max()


def test_masks_follow_t5x_semantics():
    tokens = jnp.array([[5, 6, 0]])
    pad = masks.make_attention_mask(tokens > 0, tokens > 0)
    np.testing.assert_array_equal(pad[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(masks.make_causal_mask(tokens)[0, 0], np.tril(np.ones((3, 3))))
    seg = masks.make_segment_mask(jnp.array([[1, 1, 2]]), jnp.array([[1, 2, 2]]))
    np.testing.assert_array_equal(seg[0, 0], [[1, 0, 0], [1, 0, 0], [0, 1, 1]])
    prefix = masks.make_decoder_mask(
        jnp.array([[7, 8, 9, 0]]), decoder_causal_attention=jnp.array([[1, 1, 0, 0]])
    )
    np.testing.assert_array_equal(
        prefix[0, 0], [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    )
    assert masks.combine_masks(None, None) is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"emb_dim": 0}, "emb_dim"),
        ({"mlp_activations": ("nope",)}, "nope"),
        ({"dtype": "float8"}, "float8"),
        ({"dropout_rate": 1.5}, "dropout_rate"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        T5Config(**kwargs)


# Published parameter counts (millions) of the T5 checkpoints.
_PUBLISHED_M = {
    "t5_1_1_small": 77,
    "t5_1_1_base": 248,
    "t5_1_1_large": 783,
    "t5_1_1_xl": 2850,
    "t5_1_0_small": 60.5,
    "t5_1_0_base": 223,
}


def test_gin_model_configs():
    root = os.path.join(os.path.dirname(__file__), "..", "gin_configs", "models")
    files = sorted(glob.glob(os.path.join(root, "t5_1_*.gin")))
    assert {os.path.basename(f)[:-4] for f in files} >= set(_PUBLISHED_M) | {
        "t5_1_1_tiny",
        "t5_1_0_tiny",
    }
    for path in files:
        name = os.path.basename(path)[:-4]
        with open(path) as f:
            assert f.readline().startswith("#")
        gin.clear_config()
        try:
            gin.parse_config_files_and_bindings([path], [])
            network = gin.query_parameter("%NETWORK").scoped_configurable_fn()
            config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
        finally:
            gin.clear_config()
        assert isinstance(network, Transformer) and network.config == config
        assert config.is_gated == name.startswith("t5_1_1")
        assert config.logits_via_embedding == name.startswith("t5_1_0")
        millions = config.num_params() / 1e6
        if name in _PUBLISHED_M:
            assert abs(millions - _PUBLISHED_M[name]) / _PUBLISHED_M[name] < 0.01, name
        else:
            assert 0.1 < millions < 1.0, name
            assert config.vocab_size >= 259  # fits seqio.ByteVocabulary
            shapes = param_shapes(config)
            assert sum(int(np.prod(s)) for s in shapes.values()) == config.num_params()
