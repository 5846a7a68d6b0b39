"""Shared Flax linen layers for the T5-family networks.

Every parameter is declared with `flax.linen.partitioning.param_with_axes`, so
`init` also returns a `params_axes` collection with the logical axis names of
each parameter (T5X convention). Parameter names and shapes follow T5X's
`examples/t5/layers.py`, so T5X checkpoints load without renaming:

- `DenseGeneral/kernel`: 2-D, `(prod(input dims), prod(output features))`.
- `LayerNorm/scale`: `(features,)`, axis `embed` (RMS norm, no bias/centering).
- `Embed/embedding`: `(vocab, embed)`.

Attention and relative position biases live in attention.py, masks in masks.py.

Activations are constrained by logical names with
`flax.linen.partitioning.with_sharding_constraint` (a no-op without axis rules).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning
from jax import lax

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]

# Value added to masked-out attention logits (T5X uses the same constant).
MASK_VALUE = -1e10

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
default_embed_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


def _as_tuple(x: int | Iterable[int]) -> tuple[int, ...]:
    return tuple(x) if isinstance(x, Iterable) else (x,)


def get_activation(fn_or_name: str | Callable) -> Callable[[Array], Array]:
    """Maps an activation name to a function: 'linear' is identity, other names
    are looked up in `flax.linen` ('gelu' is the tanh approximation, as T5/HF
    'gelu_new'; 'relu', 'silu', ...)."""
    if callable(fn_or_name):
        return fn_or_name
    if fn_or_name == "linear":
        return lambda x: x
    fn = getattr(nn, fn_or_name, None)
    if not callable(fn):
        raise ValueError(
            f"Unknown activation {fn_or_name!r}: expected 'linear' or a function name in flax.linen "
            "(e.g. 'relu', 'gelu', 'silu')."
        )
    return fn


class DenseGeneral(nn.Module):
    """Bias-free linear map contracting `axis` of the input onto `features`.

    The kernel is stored 2-D as `(prod(contracted input dims), prod(features))`
    in float32 (T5X layout) and reshaped at call time.

    Attributes:
      features: output feature dims, e.g. `emb_dim` or `(heads, head_dim)`.
      axis: input axes to contract (default: last).
      dtype: computation dtype (inputs and kernel are cast to it).
      kernel_init: initialiser of the 2-D kernel.
      kernel_axes: logical axis names of the 2-D kernel, e.g. ('embed', 'mlp').
    """

    features: int | Sequence[int]
    axis: int | Sequence[int] = -1
    dtype: DType = jnp.float32
    kernel_init: Initializer = default_kernel_init
    kernel_axes: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """[..., *in_dims] -> [..., *features]."""
        features = _as_tuple(self.features)
        inputs = jnp.asarray(inputs, self.dtype)
        axis = tuple(a % inputs.ndim for a in _as_tuple(self.axis))
        in_dims = tuple(inputs.shape[a] for a in axis)
        kernel = param_with_axes(
            "kernel",
            self.kernel_init,
            (int(np.prod(in_dims)), int(np.prod(features))),
            jnp.float32,
            axes=self.kernel_axes,
        )
        kernel = jnp.reshape(jnp.asarray(kernel, self.dtype), in_dims + features)
        contract = (axis, tuple(range(len(axis))))
        return lax.dot_general(inputs, kernel, (contract, ((), ())))


class LayerNorm(nn.Module):
    """T5 RMS layer norm: x / sqrt(mean(x^2) + eps) * scale (no mean, no bias).

    Statistics are computed in float32; the result is cast to `dtype`.
    """

    epsilon: float = 1e-6
    dtype: DType = jnp.float32
    scale_init: Initializer = nn.initializers.ones

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[..., features] -> [..., features]."""
        x = jnp.asarray(x, jnp.float32)
        mean2 = jnp.mean(lax.square(x), axis=-1, keepdims=True)
        y = jnp.asarray(x * lax.rsqrt(mean2 + self.epsilon), self.dtype)
        scale = param_with_axes(
            "scale", self.scale_init, (x.shape[-1],), jnp.float32, axes=("embed",)
        )
        return y * jnp.asarray(scale, self.dtype)


class Embed(nn.Module):
    """Token embedding table `embedding` of shape (vocab, embed), float32.

    Attributes:
      num_embeddings: vocabulary size (rows).
      features: embedding size.
      dtype: dtype of looked-up embeddings.
      attend_dtype: dtype of `attend` (tied logits); default `dtype`.
      embedding_init: initialiser.
      one_hot: look up with a one-hot matmul (SPMD friendly on TPU) instead of a gather.
    """

    num_embeddings: int
    features: int
    dtype: DType = jnp.float32
    attend_dtype: DType | None = None
    embedding_init: Initializer = default_embed_init
    one_hot: bool = False

    def setup(self):
        self.embedding = param_with_axes(
            "embedding",
            self.embedding_init,
            (self.num_embeddings, self.features),
            jnp.float32,
            axes=("vocab", "embed"),
        )

    def __call__(self, inputs: Array) -> Array:
        """Integer ids [...] -> embeddings [..., features]."""
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"Embed expects integer token ids, got dtype {inputs.dtype}.")
        table = jnp.asarray(self.embedding, self.dtype)
        if self.one_hot:
            one_hot = jax.nn.one_hot(inputs, self.num_embeddings, dtype=self.dtype)
            out = jnp.dot(one_hot, table)
        else:
            out = jnp.take(table, inputs, axis=0)
        if out.ndim == 3:
            out = with_sharding_constraint(out, ("batch", "length", "embed"))
        return out

    def attend(self, query: Array) -> Array:
        """Tied output projection: [..., features] -> [..., num_embeddings]."""
        dtype = self.attend_dtype if self.attend_dtype is not None else self.dtype
        return jnp.dot(jnp.asarray(query, dtype), jnp.asarray(self.embedding, dtype).T)


class MlpBlock(nn.Module):
    """T5 feed-forward block.

    One input projection per activation: a single activation gives `wi` (T5.1.0,
    ('relu',)); several give `wi_0`, `wi_1`, ... whose activated outputs are
    multiplied (T5.1.1 gated GELU: ('gelu', 'linear')). Then dropout and `wo`.
    Kernels: wi* (embed, mlp), wo (mlp, embed).
    """

    intermediate_dim: int = 2048
    activations: Sequence[str | Callable] = ("relu",)
    kernel_init: Initializer = default_kernel_init
    intermediate_dropout_rate: float = 0.1
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
        """[batch, length, embed] -> [batch, length, embed]."""
        hidden = []
        for i, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            h = DenseGeneral(
                self.intermediate_dim,
                dtype=self.dtype,
                kernel_init=self.kernel_init,
                kernel_axes=("embed", "mlp"),
                name=name,
            )(inputs)
            hidden.append(get_activation(act)(h))
        x = functools.reduce(operator.mul, hidden)
        x = nn.Dropout(rate=self.intermediate_dropout_rate, broadcast_dims=(-2,))(
            x, deterministic=deterministic
        )
        x = with_sharding_constraint(x, ("batch", "length", "mlp"))
        return DenseGeneral(
            inputs.shape[-1],
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            kernel_axes=("mlp", "embed"),
            name="wo",
        )(x)
