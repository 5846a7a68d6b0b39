"""Flax linen networks: shared layers, T5 encoder-decoder (t5.py), decoder-only (decoder.py)."""

from iqlearn_jax.networks.t5 import T5Config, Transformer

__all__ = ["T5Config", "Transformer"]
