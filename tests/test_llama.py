"""Llama-family network against Hugging Face transformers (PyTorch): import, export, RoPE, KV cache, masks, packing,
sharding on 8 emulated devices, and bad input."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from iqlearn_jax import networks, optimizers, trainer  # noqa: E402
from iqlearn_jax.checkpoints import export_hf_decoder, import_hf_decoder  # noqa: E402
from iqlearn_jax.checkpoints.hf_decoder import UnsupportedArchitectureError  # noqa: E402
from iqlearn_jax.models import DecoderOnlyModel  # noqa: E402
from iqlearn_jax.networks import llama  # noqa: E402
from iqlearn_jax.objectives import Objective  # noqa: E402
from iqlearn_jax.partitioning import Partitioner  # noqa: E402

VOCAB = 97

HF_CONFIGS = {
    # GQA (kv heads < heads), untied, Llama 3 RoPE scaling.
    "llama_gqa_untied": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=5000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    ),
    # Qwen2: q/k/v biases, tied embeddings, one kv head.
    "qwen2_gqa_tied": lambda: transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1e6,
    ),
    # Mistral with a sliding window shorter than the batch, MHA, tied, head_dim != hidden / heads.
    "mistral_window_tied": lambda: transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True, sliding_window=4,
        head_dim=16,
    ),
}  # fmt: skip


def _randomise(model):
    """Random values for every tensor (HF initialises norms to 1 and biases to 0, which would hide bugs)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if "norm" in name else 0.2
            offset = 1.0 if "norm" in name else 0.0
            p.copy_(offset + scale * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def hf_model(request, tmp_path_factory):
    torch.manual_seed(0)
    config = HF_CONFIGS[request.param]()
    model = _randomise(transformers.AutoModelForCausalLM.from_config(config))
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, str(path)


def padded_batch(rows=3, length=11, seed=0):
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, VOCAB, (rows, length)).astype(np.int32)
    ids[:, 1] = 0  # id 0 is a real token
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids, mask


def hf_logits(model, ids, mask=None, position_ids=None):
    kwargs = {"attention_mask": torch.tensor(mask)} if mask is not None else {}
    if position_ids is not None:
        kwargs["position_ids"] = torch.tensor(position_ids)
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long), **kwargs).logits.float().numpy()


@functools.cache
def _jitted_apply(config):
    module = networks.network_for(config)

    def apply(params, ids, kwargs):
        return module.apply({"params": params}, decoder_input_tokens=ids, decoder_target_tokens=ids,
                            enable_dropout=False, **kwargs)  # fmt: skip

    return jax.jit(apply)


def our_logits(config, params, ids, **kwargs):
    kwargs = {k: jnp.asarray(v) for k, v in kwargs.items()}
    return np.asarray(_jitted_apply(config)(params, jnp.asarray(ids), kwargs))


def test_import_matches_transformers_on_padded_batch(hf_model):
    name, model, path = hf_model
    config, params = import_hf_decoder(path)
    assert isinstance(networks.network_for(config), llama.LlamaDecoderWrapper)
    if name.startswith("qwen2"):
        assert config.qkv_bias and config.logits_via_embedding and config.num_kv_heads == 1
    ids, mask = padded_batch()
    ref = hf_logits(model, ids, mask)
    ours = our_logits(config, params, ids)
    real = mask.astype(bool)
    assert ours.shape == (3, 11, VOCAB)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)


def test_export_reloads_in_transformers_with_same_logits(hf_model, tmp_path):
    name, model, path = hf_model
    config, params = import_hf_decoder(path)
    export_hf_decoder(config, params, str(tmp_path / "out"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert type(reloaded) is type(model)
    ids, mask = padded_batch(seed=1)
    np.testing.assert_allclose(
        hf_logits(reloaded, ids, mask), hf_logits(model, ids, mask), atol=1e-5
    )
    config2, params2 = import_hf_decoder(str(tmp_path / "out"))
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


@pytest.mark.parametrize("rope", ["default", "llama3"])
def test_rope_matches_transformers_past_1000(rope):
    from transformers.models.llama import modeling_llama as ml

    kwargs = {}
    if rope == "llama3":
        kwargs["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 256}  # fmt: skip
    hf_config = transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=2, num_key_value_heads=1, rope_theta=500000.0, **kwargs
    )
    from iqlearn_jax.checkpoints.hf_decoder import config_from_hf

    config = config_from_hf(hf_config.to_dict())
    positions = np.array([[0, 1, 999, 1000, 1024, 2047, 4096, 8191]], np.int64)
    x = np.random.RandomState(0).randn(1, 8, 2, 32).astype(np.float32)  # [b, len, heads, head_dim]
    rotary = ml.LlamaRotaryEmbedding(hf_config)
    cos, sin = rotary(torch.tensor(x), torch.tensor(positions))
    q_ref, _ = ml.apply_rotary_pos_emb(
        torch.tensor(x).transpose(1, 2), torch.tensor(x).transpose(1, 2), cos, sin
    )
    our_cos, our_sin = llama.rope_cos_sin(config, jnp.asarray(positions))
    np.testing.assert_allclose(np.asarray(our_cos), cos.numpy(), atol=2e-5)
    np.testing.assert_allclose(np.asarray(our_sin), sin.numpy(), atol=2e-5)
    ours = llama.apply_rope(jnp.asarray(x), our_cos, our_sin)
    np.testing.assert_allclose(np.asarray(ours), q_ref.transpose(1, 2).numpy(), atol=1e-4)


def tiny_config(**overrides):
    base = dict(vocab_size=VOCAB, emb_dim=32, num_heads=4, num_kv_heads=2, num_layers=2, head_dim=8,
                mlp_dim=48, rope_theta=10000.0, qkv_bias=True)  # fmt: skip
    base.update(overrides)
    return llama.LlamaConfig(**base)


def random_params(config, seed=0):
    module = llama.LlamaDecoderWrapper(config)
    ones = jnp.ones((2, 4), jnp.int32)
    params = module.init(jax.random.PRNGKey(seed), ones, ones, enable_dropout=False)["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("window", [None, 3])
def test_kv_cache_decoding_equals_full_forward_gqa(window):
    config = tiny_config(sliding_window=window)
    params = random_params(config)
    model = DecoderOnlyModel(llama.LlamaDecoderWrapper(config), objective=Objective(eos_id=2))
    length = 12
    rs = np.random.RandomState(3)
    seqs = rs.randint(0, VOCAB, (2, length)).astype(np.int32)
    prompt_lengths = np.array([3, 5])  # different lengths: prompts are right-aligned in the cache
    causal = (np.arange(length)[None] <= prompt_lengths[:, None]).astype(np.int32)
    batch = {
        "decoder_input_tokens": jnp.asarray(seqs),
        "decoder_causal_attention": jnp.asarray(causal),
    }
    full = our_logits(config, params, seqs)
    state = model.start_decoding(params, batch)
    advance = jax.jit(model.advance_decoding)
    for step in range(length - 1 - int(prompt_lengths.max())):
        pos = prompt_lengths + step  # logits predicting token pos + 1
        expected = full[np.arange(2), pos]
        np.testing.assert_allclose(np.asarray(state.logits), expected, atol=2e-5)
        state = advance(params, state, jnp.asarray(seqs[np.arange(2), pos + 1]))
    cache = state.cache["decoder"]["layers_0"]["self_attention"]
    assert cache["cached_key"].shape == (2, config.num_kv_heads, config.head_dim, length)


def test_prefix_lm_mask_and_reference():
    causal = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    segments = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 2, 2, 2]])
    mask = np.asarray(
        llama.attention_mask(6, 2, jnp.float32, jnp.asarray(segments), jnp.asarray(causal))
    )
    ref = np.zeros((2, 1, 6, 6))
    for b in range(2):
        for q in range(6):
            for k in range(6):
                visible = k <= q or (causal[b, q] and causal[b, k])
                same = segments[b, q] == segments[b, k] and segments[b, q] > 0
                ref[b, 0, q, k] = float(visible and same)
    np.testing.assert_array_equal(mask, ref)
    # In the network: a prefix token sees later prefix tokens, never tokens after the prefix.
    config = tiny_config()
    params = random_params(config)
    ids = np.random.RandomState(0).randint(0, VOCAB, (1, 6)).astype(np.int32)
    region = jnp.asarray(causal[:1])
    base = our_logits(config, params, ids, decoder_causal_attention=region)
    later_prefix, after_prefix = ids.copy(), ids.copy()
    later_prefix[0, 2] = (ids[0, 2] + 1) % VOCAB
    after_prefix[0, 4] = (ids[0, 4] + 1) % VOCAB
    changed = our_logits(config, params, later_prefix, decoder_causal_attention=region)
    assert np.abs(changed[0, 0] - base[0, 0]).max() > 1e-4  # bidirectional inside the prefix
    unchanged = our_logits(config, params, after_prefix, decoder_causal_attention=region)
    np.testing.assert_allclose(unchanged[0, :4], base[0, :4], atol=1e-6)


def test_packing_with_segment_ids_equals_separate_sequences():
    config = tiny_config()
    params = random_params(config)
    rs = np.random.RandomState(1)
    a, b = rs.randint(0, VOCAB, 5).astype(np.int32), rs.randint(0, VOCAB, 4).astype(np.int32)
    packed = np.concatenate([a, b, [7]])[None]
    segments = np.array([[1] * 5 + [2] * 4 + [0]])
    positions = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0]])
    out = our_logits(config, params, packed, decoder_segment_ids=jnp.asarray(segments),
                     decoder_positions=jnp.asarray(positions))  # fmt: skip
    np.testing.assert_allclose(out[0, :5], our_logits(config, params, a[None])[0], atol=2e-5)
    np.testing.assert_allclose(out[0, 5:9], our_logits(config, params, b[None])[0], atol=2e-5)


# ---- sharding: 8 emulated devices -------------------------------------------------------------------------------

BATCH, LENGTH = 8, 10


def sharding_batches(n=2):
    rs = np.random.RandomState(0)
    out = []
    for _ in range(n):
        tgt = rs.randint(0, VOCAB, (BATCH, LENGTH)).astype(np.int32)
        seg = np.ones_like(tgt)
        for row in range(BATCH):
            end = rs.randint(4, LENGTH + 1)
            tgt[row, end - 1] = 2  # EOS
            seg[row, end:] = 0
        tgt = np.where(seg > 0, tgt, 2)
        dec_in = np.concatenate([np.ones((BATCH, 1), np.int32), tgt[:, :-1]], 1)
        out.append({"decoder_input_tokens": dec_in, "decoder_target_tokens": tgt,
                    "decoder_loss_weights": seg, "decoder_segment_ids": seg})  # fmt: skip
    return out


def run_steps(mesh_shape):
    config = tiny_config(num_heads=4, num_kv_heads=2)
    model = DecoderOnlyModel(
        llama.LlamaDecoderWrapper(config), objective=Objective(name="iqlearn", lam=0.3, eos_id=2)
    )
    optimizer = optimizers.adamw(1e-2)
    devices = jax.devices()[: mesh_shape[0] * mesh_shape[1]]
    partitioner = Partitioner(mesh_shape=mesh_shape, devices=devices)
    shapes = {k: ((BATCH, LENGTH), np.dtype(np.int32)) for k in sharding_batches(1)[0]}
    _, shardings = trainer.abstract_train_state(model, optimizer, partitioner, shapes)
    state = trainer.init_train_state(
        model, optimizer, partitioner, shapes, seed=0, state_shardings=shardings
    )
    step_fn = trainer.build_train_step(model, optimizer, partitioner, shardings, 1)
    losses = []
    for batch in sharding_batches():
        state, metrics = step_fn(state, partitioner.shard_batch(batch))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params), state


def test_sharded_gqa_steps_equal_single_device():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (emulated) devices")
    ref_losses, ref_params, _ = run_steps((1, 1))
    for mesh_shape in [(8, 1), (2, 4)]:
        losses, params, state = run_steps(mesh_shape)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        # Sharded reductions re-associate float sums: Adam (lr 1e-2) turns that into ~1e-5 relative differences.
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, ref_params
        )
        if mesh_shape == (2, 4):
            query = state.params["decoder"]["layers_0"]["self_attention"]["query"]["kernel"]
            key = state.params["decoder"]["layers_0"]["self_attention"]["key"]["kernel"]
            assert query.sharding.spec[1] == "model"  # heads shard on 'model'
            assert key.sharding.spec[1] == "model"  # kv_heads_joined = 2 * 8 = 16 divides 4


# ---- bad input -----------------------------------------------------------------------------------------------------


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        import_hf_decoder(str(tmp_path))
    bad = {"model_type": "qwen2", "use_sliding_window": True, "num_attention_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(UnsupportedArchitectureError, match="use_sliding_window=True"):
        import_hf_decoder(str(tmp_path))
    with pytest.raises(ValueError, match="unsupported network config dict"):
        networks.network_for({"vocab_size": 3})


def test_mismatched_shapes_are_named(hf_model, tmp_path):
    name, model, path = hf_model
    if name != "llama_gqa_untied":
        pytest.skip("one architecture is enough")
    cfg = json.loads(open(f"{path}/config.json").read())
    cfg["intermediate_size"] = 50
    import shutil

    shutil.copytree(path, tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ValueError, match=r"mlp/wi_0/kernel: expected shape \(32, 50\), got \(32, 48\)"
    ):
        import_hf_decoder(str(tmp_path / "bad"))
