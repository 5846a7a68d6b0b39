"""Hugging Face T5 checkpoints <-> this project's T5 params.

A Hugging Face T5 directory holds `config.json` and `model.safetensors` (or a
sharded `model.safetensors.index.json` + shards). Weight layout differences:

- HF `nn.Linear` weights are [out, in]; our kernels are [in, out] (transpose).
- HF has separate q/k/v/o Linear layers per attention; ours are
  `query/key/value/out` kernels of shape (embed, heads*head_dim) / (heads*head_dim, embed)
  with the same head-major ordering of the joined axis.
- HF stores `relative_attention_bias` [buckets, heads] only in block 0 of each
  stack; ours is one `relpos_bias/rel_embedding` [heads, buckets] per stack.
- HF T5.1.0 ties `lm_head` to `shared` (and scales the decoder output by
  d_model**-0.5, as our `logits_via_embedding` does).

Reading does not need torch: safetensors files are parsed directly (including
bfloat16 tensors, via ml_dtypes), and everything is returned as float32 NumPy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Iterator

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from iqlearn_jax.networks.t5 import T5Config, flatten_params, unflatten_params, validate_params

_ACT_FROM_HF = {
    "relu": ("relu",),
    "gated-gelu": ("gelu", "linear"),
    "gated-relu": ("relu", "linear"),
    "gated-silu": ("silu", "linear"),
}
_ACT_TO_HF = {v: k for k, v in _ACT_FROM_HF.items()}

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


# ----------------------------------------------------------------------------
# Name mapping.
# ----------------------------------------------------------------------------


def hf_name_map(config: T5Config) -> dict[str, tuple[str, bool]]:
    """{our '/'-path: (HF tensor name, transpose?)} for every parameter of `config`."""
    names: dict[str, tuple[str, bool]] = {"token_embedder/embedding": ("shared.weight", False)}
    mlp = (
        ["wi"]
        if len(config.mlp_activations) == 1
        else [f"wi_{i}" for i in range(len(config.mlp_activations))]
    )
    proj = {"query": "q", "key": "k", "value": "v", "out": "o"}

    def attention(ours: str, hf: str):
        for o, h in proj.items():
            names[f"{ours}/{o}/kernel"] = (f"{hf}.{h}.weight", True)

    def mlp_block(ours: str, hf: str):
        for w in [*mlp, "wo"]:
            names[f"{ours}/{w}/kernel"] = (f"{hf}.DenseReluDense.{w}.weight", True)

    for stack, n_layers in (
        ("encoder", config.num_encoder_layers),
        ("decoder", config.num_decoder_layers),
    ):
        names[f"{stack}/relpos_bias/rel_embedding"] = (
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            True,
        )
        for i in range(n_layers):
            ours, hf = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
            if stack == "encoder":
                names[f"{ours}/pre_attention_layer_norm/scale"] = (
                    f"{hf}.0.layer_norm.weight",
                    False,
                )
                attention(f"{ours}/attention", f"{hf}.0.SelfAttention")
                names[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{hf}.1.layer_norm.weight", False)
                mlp_block(f"{ours}/mlp", f"{hf}.1")
            else:
                names[f"{ours}/pre_self_attention_layer_norm/scale"] = (
                    f"{hf}.0.layer_norm.weight",
                    False,
                )
                attention(f"{ours}/self_attention", f"{hf}.0.SelfAttention")
                names[f"{ours}/pre_cross_attention_layer_norm/scale"] = (
                    f"{hf}.1.layer_norm.weight",
                    False,
                )
                attention(f"{ours}/encoder_decoder_attention", f"{hf}.1.EncDecAttention")
                names[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{hf}.2.layer_norm.weight", False)
                mlp_block(f"{ours}/mlp", f"{hf}.2")
    names["encoder/encoder_norm/scale"] = ("encoder.final_layer_norm.weight", False)
    names["decoder/decoder_norm/scale"] = ("decoder.final_layer_norm.weight", False)
    if not config.logits_via_embedding:
        names["decoder/logits_dense/kernel"] = ("lm_head.weight", True)
    return names


# ----------------------------------------------------------------------------
# Config conversion.
# ----------------------------------------------------------------------------


def config_from_hf(hf: dict, dtype: str = "float32") -> T5Config:
    """T5Config from a Hugging Face T5 `config.json` dict."""
    model_type = hf.get("model_type", "t5")
    if model_type not in ("t5", "mt5"):
        raise ValueError(
            f"Unsupported Hugging Face model_type {model_type!r}: expected 't5' or 'mt5' "
            "(umt5 has per-layer relative biases and is not supported)."
        )
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in _ACT_FROM_HF:
        raise ValueError(
            f"Unsupported feed_forward_proj {proj!r}: expected one of {sorted(_ACT_FROM_HF)}."
        )
    num_layers = hf["num_layers"]
    return T5Config(
        vocab_size=hf["vocab_size"],
        emb_dim=hf["d_model"],
        num_heads=hf["num_heads"],
        num_encoder_layers=num_layers,
        num_decoder_layers=hf.get("num_decoder_layers") or num_layers,
        head_dim=hf["d_kv"],
        mlp_dim=hf["d_ff"],
        mlp_activations=_ACT_FROM_HF[proj],
        logits_via_embedding=bool(hf.get("tie_word_embeddings", True)),
        dropout_rate=float(hf.get("dropout_rate", 0.1)),
        dtype=dtype,
        num_buckets=hf.get("relative_attention_num_buckets", 32),
        max_distance=hf.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
    )


def config_to_hf(config: T5Config) -> dict:
    """Hugging Face `config.json` dict for `config` (T5ForConditionalGeneration)."""
    acts = tuple(config.mlp_activations)
    if acts not in _ACT_TO_HF:
        raise ValueError(
            f"mlp_activations {acts} has no Hugging Face T5 equivalent; expected one of "
            f"{sorted(_ACT_TO_HF)}."
        )
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.emb_dim,
        "d_kv": config.head_dim,
        "d_ff": config.mlp_dim,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.num_buckets,
        "relative_attention_max_distance": config.max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_factor": 1.0,
        "feed_forward_proj": _ACT_TO_HF[acts],
        "tie_word_embeddings": bool(config.logits_via_embedding),
        "is_encoder_decoder": True,
        "use_cache": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "torch_dtype": "float32",
    }


# ----------------------------------------------------------------------------
# safetensors reading (no torch needed; bfloat16 supported).
# ----------------------------------------------------------------------------


def _read_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}.")
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[start:end], dtype=_ST_DTYPES[info["dtype"]])
        yield name, arr.reshape(info["shape"])


def _weight_files(path: str) -> list[str]:
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(path, shard) for shard in sorted(set(weight_map.values()))]
    if os.path.exists(single):
        return [single]
    present = sorted(os.listdir(path))
    raise FileNotFoundError(
        f"No model.safetensors or model.safetensors.index.json in {path} (found {present}). "
        "Convert PyTorch .bin checkpoints to safetensors first (transformers: "
        "model.save_pretrained(dir, safe_serialization=True))."
    )


def rename_hf_tensors(
    tensors: dict[str, np.ndarray], name_map: dict[str, tuple[str, bool]], path: str
) -> dict[str, np.ndarray]:
    """{our flat name: float32 array} from Hugging Face tensors, by `name_map` {ours: (hf name, transpose)}.

    Raises ValueError naming (up to 10 of) the Hugging Face tensors the map needs and `path` lacks.
    """
    flat, missing = {}, []
    for ours, (hf_name, transpose) in name_map.items():
        if hf_name not in tensors:
            missing.append(f"{hf_name} (for {ours})")
            continue
        arr = np.asarray(tensors[hf_name], dtype=np.float32)
        flat[ours] = np.ascontiguousarray(arr.T if transpose else arr)
    if missing:
        raise ValueError(
            f"Hugging Face checkpoint {path} lacks tensors required by its config: "
            + ", ".join(missing[:10])
            + (f" ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        )
    return flat


def load_hf_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a Hugging Face checkpoint directory, by HF name."""
    tensors: dict[str, np.ndarray] = {}
    for file in _weight_files(path):
        tensors.update(_read_safetensors(file))
    return tensors


# ----------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------


def _resolve_output_layer(
    config: T5Config, hf_config: dict, tensors: dict[str, np.ndarray]
) -> tuple[T5Config, np.ndarray | None]:
    """Decides how HF computes logits and maps it onto our two output layers.

    transformers >= 5 always ties `lm_head` to `shared` unless the checkpoint
    holds a different `lm_head.weight`, and scales the decoder output by
    d_model**-0.5 iff `scale_decoder_outputs` (saved configs; derived from the
    `tie_word_embeddings` argument). transformers 4 used `tie_word_embeddings`
    for both. Returns the config to use and the [vocab, embed] lm_head matrix
    for `logits_dense` (None when logits are tied, T5.1.0 style).
    """
    scale = bool(hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True)))
    shared = tensors["shared.weight"]
    head = tensors.get("lm_head.weight")
    distinct_head = head is not None and not np.array_equal(head, shared)
    if scale and not distinct_head:
        return dataclasses.replace(config, logits_via_embedding=True), None
    head = head if distinct_head else shared
    if scale:
        # Scaled decoder output with a separate head: fold the scale into the kernel.
        head = np.asarray(head, np.float32) * np.float32(config.emb_dim**-0.5)
    return dataclasses.replace(config, logits_via_embedding=False), head


def import_hf_t5(path: str, dtype: str = "float32") -> tuple[T5Config, dict]:
    """Reads a Hugging Face T5 checkpoint directory.

    Args:
      path: directory with config.json and model.safetensors (or a sharded index).
      dtype: activation dtype of the returned config.

    Returns:
      (config, params): params is a nested dict of float32 NumPy arrays with this
      project's (T5X) names, validated against `config`.
    """
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"No config.json in Hugging Face checkpoint directory {path}.")
    with open(config_path) as f:
        hf_config = json.load(f)
    config = config_from_hf(hf_config, dtype=dtype)
    tensors = load_hf_tensors(path)
    if "shared.weight" not in tensors:
        for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            if alias in tensors:
                tensors["shared.weight"] = tensors[alias]
                break
    config, lm_head = _resolve_output_layer(config, hf_config, tensors)
    if lm_head is not None:
        tensors["lm_head.weight"] = lm_head
    params = unflatten_params(rename_hf_tensors(tensors, hf_name_map(config), path))
    validate_params(config, params, source=f"Hugging Face checkpoint {path}")
    return config, params


def export_hf_t5(config: T5Config, params, path: str) -> None:
    """Writes `params` as a Hugging Face T5 checkpoint directory.

    Creates `path` with config.json and model.safetensors (float32) that
    `transformers.T5ForConditionalGeneration.from_pretrained(path)` loads.
    The embedding is written once as `shared.weight` (HF ties
    encoder/decoder `embed_tokens`, and `lm_head` when tie_word_embeddings).
    """
    validate_params(config, params, source="params to export")
    hf_config = config_to_hf(config)
    flat = flatten_params(params)
    tensors = {}
    for ours, (hf_name, transpose) in hf_name_map(config).items():
        arr = np.asarray(flat[ours], dtype=np.float32)
        tensors[hf_name] = np.ascontiguousarray(arr.T if transpose else arr)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
