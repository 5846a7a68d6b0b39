"""Flax linen networks: shared layers, T5 encoder-decoder (t5.py), decoder-only (decoder.py), Llama family (llama.py)."""

from typing import Any

from flax import linen as nn

from iqlearn_jax.networks.t5 import T5Config, Transformer

__all__ = ["T5Config", "Transformer", "network_for"]


def network_for(config: Any) -> nn.Module:
    """The Flax module for a network config of this project.

    T5Config -> t5.Transformer; decoder.DecoderOnlyConfig -> decoder.DecoderWrapper (T5X decoder-only);
    llama.LlamaConfig -> llama.LlamaDecoderWrapper. Decoder-only modules are called as
    `module.apply({'params': p}, decoder_input_tokens=..., decoder_target_tokens=..., enable_dropout=False)`.
    """
    from iqlearn_jax.networks import decoder, llama

    builders = {
        T5Config: Transformer,
        decoder.DecoderOnlyConfig: decoder.DecoderWrapper,
        llama.LlamaConfig: llama.LlamaDecoderWrapper,
    }
    for config_type, module in builders.items():
        if isinstance(config, config_type):
            return module(config)
    raise ValueError(
        f"network_for: unsupported network config {type(config).__name__} ({config!r}); expected one of "
        + ", ".join(t.__name__ for t in builders)
    )
