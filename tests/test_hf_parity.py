"""Parity with Hugging Face's PyTorch T5 (transformers) through import_hf_t5 / export_hf_t5."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from iqlearn_jax.checkpoints import export_hf_t5, import_hf_t5  # noqa: E402
from iqlearn_jax.networks.t5 import Transformer, flatten_params  # noqa: E402

VOCAB = 211
ATOL = 1e-4

# name: (feed_forward_proj, tie_word_embeddings, give lm_head its own random weights)
VARIANTS = {
    # T5.1.1 as published (separate lm_head, no output scaling).
    "t5_1_1_untied": ("gated-gelu", False, True),
    # What transformers>=5 builds for tie_word_embeddings=False: lm_head tied to shared, unscaled.
    "t5_1_1_hf5_tied_unscaled": ("gated-gelu", False, False),
    # T5.1.0: ReLU MLP, tied lm_head, decoder output scaled by d_model**-0.5.
    "t5_1_0_tied": ("relu", True, False),
}


def _hf_model(proj, tie, own_head, seed=0):
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=40,
        d_kv=10,
        d_ff=72,
        num_layers=3,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj=proj,
        tie_word_embeddings=tie,
        dropout_rate=0.0,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=24,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Larger-than-default relative biases so bucket mistakes cannot hide.
        for stack in (model.encoder, model.decoder):
            bias = stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight
            bias.normal_(0.0, 2.0)
    if own_head:
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 40) * 0.5)
    return model


def _batch(seed=0):
    """Encoder inputs with padding (id 0), targets ending in EOS, decoder inputs shifted right."""
    rng = np.random.RandomState(seed)
    enc = rng.randint(2, VOCAB, (3, 41))
    enc[0, 30:] = 0
    enc[1, 12:] = 0
    enc[0, 29] = enc[1, 11] = 1
    tgt = rng.randint(2, VOCAB, (3, 37))  # longer than max_distance: exercises the log buckets
    tgt[:, -1] = 1
    dec_in = np.concatenate([np.zeros((3, 1), np.int64), tgt[:, :-1]], axis=1)
    return enc, dec_in, tgt


def _hf_logits(model, enc, dec_in):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc != 0).long(),
            decoder_input_ids=torch.tensor(dec_in),
        )
    return out.logits.numpy()


def _our_logits(config, params, enc, dec_in, tgt):
    out = Transformer(config).apply({"params": params}, enc, dec_in, tgt, enable_dropout=False)
    return np.asarray(out)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers_and_export_round_trips(variant, tmp_path):
    proj, tie, own_head = VARIANTS[variant]
    hf = _hf_model(proj, tie, own_head)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    config, params = import_hf_t5(str(tmp_path / "hf"))
    assert config.mlp_activations == (("relu",) if proj == "relu" else ("gelu", "linear"))
    assert config.logits_via_embedding == (variant == "t5_1_0_tied")

    enc, dec_in, tgt = _batch()
    want = _hf_logits(hf, enc, dec_in)
    got = _our_logits(config, params, enc, dec_in, tgt)
    diff = float(np.abs(got - want).max())
    print(f"{variant}: max |logits - HF| = {diff:.3g} (max |logit| {np.abs(want).max():.3g})")
    assert diff < ATOL

    export_hf_t5(config, params, str(tmp_path / "export"))
    with open(tmp_path / "export" / "config.json") as f:
        exported = json.load(f)
    assert exported["feed_forward_proj"] == proj
    assert exported["tie_word_embeddings"] == config.logits_via_embedding
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    round_trip = _hf_logits(reloaded, enc, dec_in)
    assert float(np.abs(round_trip - want).max()) < ATOL

    config2, params2 = import_hf_t5(str(tmp_path / "export"))
    assert config2 == config
    flat, flat2 = flatten_params(params), flatten_params(params2)
    assert flat.keys() == flat2.keys()
    for name in flat:
        np.testing.assert_array_equal(flat[name], flat2[name], err_msg=name)


def test_sharded_safetensors_checkpoint_imports(tmp_path):
    hf = _hf_model("gated-gelu", False, True, seed=1)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True, max_shard_size="100KB")
    assert os.path.exists(tmp_path / "hf" / "model.safetensors.index.json")
    config, params = import_hf_t5(str(tmp_path / "hf"))
    state = hf.state_dict()
    np.testing.assert_array_equal(
        params["encoder"]["layers_1"]["attention"]["query"]["kernel"],
        state["encoder.block.1.layer.0.SelfAttention.q.weight"].numpy().T,
    )
    np.testing.assert_array_equal(
        params["decoder"]["relpos_bias"]["rel_embedding"],
        state["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].numpy().T,
    )
    enc, dec_in, tgt = _batch(1)
    diff = np.abs(_our_logits(config, params, enc, dec_in, tgt) - _hf_logits(hf, enc, dec_in))
    assert float(diff.max()) < ATOL


def test_missing_tensor_and_bad_directory_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        import_hf_t5(str(tmp_path))
    hf = _hf_model("relu", True, False)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    with open(tmp_path / "hf" / "config.json") as f:
        cfg = json.load(f)
    cfg["num_layers"] = 4  # the checkpoint has 3 encoder blocks
    with open(tmp_path / "hf" / "config.json", "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match=r"encoder\.block\.3\..*encoder/layers_3"):
        import_hf_t5(str(tmp_path / "hf"))
