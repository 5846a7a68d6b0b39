"""Hugging Face Llama-family checkpoints (LlamaForCausalLM, MistralForCausalLM incl. sliding window, Qwen2ForCausalLM) <-> LlamaConfig + params.

A checkpoint directory holds `config.json` and `model.safetensors` (or `model.safetensors.index.json` + shards).
Layouts: HF `nn.Linear` weights are [out, in], our kernels [in, out] (transpose); q/k/v/o rows are head-major
as our joined axes; RMSNorm weights are our `scale`s. Reading needs no torch (hf_t5.load_hf_tensors).

    import_hf_decoder(path, dtype="float32") -> (LlamaConfig, params)
    export_hf_decoder(config, params, path)          # transformers reloads it with the same logits
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
from safetensors.numpy import save_file

from iqlearn_jax.checkpoints.hf_t5 import load_hf_tensors, rename_hf_tensors
from iqlearn_jax.networks.llama import LlamaConfig, LlamaDecoderWrapper

HF_CLASSES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


class UnsupportedArchitectureError(ValueError):
    """A checkpoint of an architecture (or option) this converter does not handle."""


# ---------------------------------------------------------------------------------------------------------------
# Config conversion.


def _rope_from_hf(hf: dict) -> tuple[float, str, tuple]:
    """(theta, rope_type, scaling pairs) from transformers 5 `rope_parameters` or 4.x `rope_theta`/`rope_scaling`."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    keys = {
        "default": (),
        "linear": ("factor",),
        "llama3": (
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ),
    }
    if rope_type not in keys:
        raise UnsupportedArchitectureError(
            f"RoPE type {rope_type!r} is not supported: expected one of {sorted(keys)}."
        )
    return theta, rope_type, tuple((k, float(merged[k])) for k in keys[rope_type])


def config_from_hf(hf: dict, dtype: str = "float32") -> LlamaConfig:
    """LlamaConfig from a Hugging Face config.json dict (model_type llama, mistral or qwen2)."""
    model_type = hf.get("model_type")
    if model_type not in HF_CLASSES:
        raise UnsupportedArchitectureError(
            f"Unsupported Hugging Face model_type {model_type!r} (architectures {hf.get('architectures')}): "
            f"expected one of {sorted(HF_CLASSES)} ({', '.join(HF_CLASSES.values())})."
        )
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedArchitectureError(f"hidden_act={act!r} is not supported: expected 'silu'.")
    if hf.get("mlp_bias"):
        raise UnsupportedArchitectureError(
            "mlp_bias=True is not supported (Llama MLP without biases)."
        )
    sliding = hf.get("sliding_window") if model_type == "mistral" else None
    if model_type == "qwen2" and hf.get("use_sliding_window"):
        raise UnsupportedArchitectureError("Qwen2 use_sliding_window=True is not supported.")
    heads = hf["num_attention_heads"]
    theta, rope_type, scaling = _rope_from_hf(hf)
    attention_bias = bool(hf.get("attention_bias", False))
    eos = hf.get("eos_token_id")
    return LlamaConfig(
        vocab_size=hf["vocab_size"],
        emb_dim=hf["hidden_size"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        num_layers=hf["num_hidden_layers"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        mlp_dim=hf["intermediate_size"],
        rope_theta=theta,
        rope_type=rope_type,
        rope_scaling=scaling,
        layer_norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        logits_via_embedding=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias,
        out_bias=model_type == "llama" and attention_bias,
        dropout_rate=float(hf.get("attention_dropout", 0.0)),
        dtype=dtype,
        architecture=model_type,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        bos_id=hf.get("bos_token_id"),
        eos_id=eos[0] if isinstance(eos, list) else eos,
        pad_id=hf.get("pad_token_id"),
        sliding_window=int(sliding) if sliding is not None else None,
    )


def config_to_hf(config: LlamaConfig) -> dict:
    """Hugging Face config.json dict (transformers 4.x and 5 both read it) for `config`."""
    arch = config.architecture
    if arch == "qwen2" and (not config.qkv_bias or config.out_bias):
        raise UnsupportedArchitectureError("Qwen2 needs q/k/v biases and no o_proj bias.")
    if arch != "llama" and config.out_bias:
        raise UnsupportedArchitectureError(
            f"{arch} has no o_proj bias (only Llama's attention_bias)."
        )
    if arch in ("llama", "mistral") and config.qkv_bias != config.out_bias:
        raise UnsupportedArchitectureError(
            f"{arch}: Hugging Face's attention_bias sets q/k/v and o biases together; got "
            f"qkv_bias={config.qkv_bias}, out_bias={config.out_bias}."
        )
    if arch != "mistral" and config.sliding_window is not None:
        raise UnsupportedArchitectureError(
            f"{arch}: sliding_window={config.sliding_window} has no Hugging Face equivalent (Mistral only)."
        )
    rope = {
        "rope_type": config.rope_type,
        "rope_theta": config.rope_theta,
        **dict(config.rope_scaling),
    }
    out = {
        "architectures": [HF_CLASSES[arch]],
        "model_type": arch,
        "vocab_size": config.vocab_size,
        "hidden_size": config.emb_dim,
        "intermediate_size": config.mlp_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.layer_norm_epsilon,
        "rope_theta": config.rope_theta,
        "rope_parameters": rope,
        "rope_scaling": None
        if config.rope_type == "default"
        else dict(rope, type=config.rope_type),
        "tie_word_embeddings": bool(config.logits_via_embedding),
        "attention_dropout": config.dropout_rate,
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
        "pad_token_id": config.pad_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if arch == "llama":
        out.update(attention_bias=bool(config.qkv_bias), mlp_bias=False)
    if arch == "mistral":
        out["sliding_window"] = config.sliding_window
    if arch == "qwen2":
        out.update(use_sliding_window=False, sliding_window=None)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Names.


def hf_name_map(config: LlamaConfig) -> dict[str, tuple[str, bool]]:
    """{our '/'-path (under params): (HF tensor name, transpose?)} for every parameter of `config`."""
    names = {"decoder/token_embedder/embedding": ("model.embed_tokens.weight", False)}
    for i in range(config.num_layers):
        ours, hf = f"decoder/layers_{i}", f"model.layers.{i}"
        names[f"{ours}/pre_self_attention_layer_norm/scale"] = (
            f"{hf}.input_layernorm.weight",
            False,
        )
        names[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{hf}.post_attention_layernorm.weight", False)
        for o, h in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            names[f"{ours}/self_attention/{o}/kernel"] = (f"{hf}.self_attn.{h}_proj.weight", True)
            if config.qkv_bias and o != "out":
                names[f"{ours}/self_attention/{o}/bias"] = (f"{hf}.self_attn.{h}_proj.bias", False)
        if config.out_bias:
            names[f"{ours}/self_attention/out_bias"] = (f"{hf}.self_attn.o_proj.bias", False)
        for o, h in (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj")):
            names[f"{ours}/mlp/{o}/kernel"] = (f"{hf}.mlp.{h}.weight", True)
    names["decoder/decoder_norm/scale"] = ("model.norm.weight", False)
    if not config.logits_via_embedding:
        names["decoder/logits_dense/kernel"] = ("lm_head.weight", True)
    return names


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        out.update(flatten(v, path) if isinstance(v, dict) else {path: v})
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """{'/'-path: shape} of the params of `LlamaDecoderWrapper(config)` (abstract init, no compute)."""
    module = LlamaDecoderWrapper(config)
    tokens = jax.ShapeDtypeStruct((1, 1), np.int32)
    shapes = jax.eval_shape(
        lambda t: module.init(jax.random.PRNGKey(0), t, t, enable_dropout=False), tokens
    )
    return {k: tuple(v.shape) for k, v in flatten(dict(shapes["params"])).items()}


def validate_params(config: LlamaConfig, params: dict, source: str) -> None:
    """Raises ValueError naming every missing/unexpected parameter and shape mismatch of `params` vs `config`."""
    expected = expected_shapes(config)
    found = {k: tuple(np.shape(v)) for k, v in flatten(dict(params)).items()}
    problems = [
        f"{k}: expected shape {expected[k]}, got {found[k]}"
        for k in sorted(expected.keys() & found.keys())
        if expected[k] != found[k]
    ]
    problems += [f"missing {k} {expected[k]}" for k in sorted(expected.keys() - found.keys())]
    problems += [f"unexpected {k} {found[k]}" for k in sorted(found.keys() - expected.keys())]
    if problems:
        raise ValueError(
            f"{source} does not match its Llama-family config ({len(problems)} problems): "
            + "; ".join(problems[:8])
            + (" ..." if len(problems) > 8 else "")
        )


# ---------------------------------------------------------------------------------------------------------------
# Public API.


def read_hf_config(path: str) -> dict:
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"No config.json in Hugging Face checkpoint directory {path}.")
    with open(config_path) as f:
        return json.load(f)


def import_hf_decoder(path: str, dtype: str = "float32") -> tuple[LlamaConfig, dict]:
    """Reads a Hugging Face Llama / Mistral / Qwen2 causal-LM directory.

    Args:
      path: directory with config.json and model.safetensors (or a sharded index).
      dtype: activation dtype of the returned config (parameters are float32 NumPy either way).

    Returns:
      (config, params): params = {'decoder': {...}} with this project's names, checked against the config.
    """
    config = config_from_hf(read_hf_config(path), dtype=dtype)
    tensors = load_hf_tensors(path)
    if config.logits_via_embedding is False and "lm_head.weight" not in tensors:
        raise ValueError(
            f"{path}: config says tie_word_embeddings=false but the checkpoint has no lm_head.weight."
        )
    params = unflatten(rename_hf_tensors(tensors, hf_name_map(config), path))
    validate_params(config, params, source=f"Hugging Face checkpoint {path}")
    return config, params


def export_hf_decoder(config: LlamaConfig, params: dict, path: str) -> None:
    """Writes `params` as a Hugging Face checkpoint directory (config.json + float32 model.safetensors)."""
    params = dict(params.get("params", params)) if isinstance(params, dict) else params
    params = jax.tree.map(np.asarray, jax.device_get(params))
    validate_params(config, params, source="params to export")
    hf_config = config_to_hf(config)
    flat = flatten(params)
    tensors = {}
    for ours, (hf_name, transpose) in hf_name_map(config).items():
        arr = np.asarray(flat[ours], dtype=np.float32)
        tensors[hf_name] = np.ascontiguousarray(arr.T if transpose else arr)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def is_hf_decoder_dir(path: str) -> bool:
    """True when `path/config.json` names a Llama-family model_type (used by checkpoint format detection)."""
    try:
        return read_hf_config(path).get("model_type") in HF_CLASSES
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return False


def with_dtype(config: LlamaConfig, dtype: str) -> LlamaConfig:
    return dataclasses.replace(config, dtype=dtype)
