"""Optimizers and learning-rate schedules (optax), gin-configurable.

    optimizer = adafactor(learning_rate=warmup_constant(1e-4, warmup_steps=2000))   # paper defaults (Table 3/4)
    optimizer = adamw(learning_rate=rsqrt(0.01, warmup_steps=10_000), weight_decay=0.01, clip_norm=1.0)

Schedules take the optimizer's step count (int) and return the learning rate (float, units: parameter units per
gradient unit). Gradient clipping by global norm is applied before the update rule when `clip_norm` is set.
"""

from __future__ import annotations

import numbers

import gin
import jax.numpy as jnp
import optax

from iqlearn_jax.gin_utils import ConfigError


def _number(where: str, value: object, minimum: float = 0.0) -> float:
    """`value` as a float >= minimum; a ConfigError naming `where` otherwise (bools and strings refused)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= minimum:
        raise ConfigError(
            f"{where} must be a number >= {minimum:g}, got {value!r} ({type(value).__name__})"
        )
    return float(value)


@gin.configurable
def constant(value: float = 1e-4) -> optax.Schedule:
    """lr(step) = value."""
    _number("optimizers.constant.value (the learning rate)", value)
    return optax.constant_schedule(value)


@gin.configurable
def warmup_constant(value: float = 1e-4, warmup_steps: int = 2000) -> optax.Schedule:
    """Linear warm-up from 0 to `value` over `warmup_steps`, then constant (the paper's schedule)."""
    _number("optimizers.warmup_constant.value (the learning rate, LEARNING_RATE)", value)
    _number("optimizers.warmup_constant.warmup_steps (WARMUP_STEPS)", warmup_steps)
    if warmup_steps == 0:
        return optax.constant_schedule(value)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, value, warmup_steps), optax.constant_schedule(value)],
        [warmup_steps],
    )


@gin.configurable
def rsqrt(
    base: float = 1.0, warmup_steps: int = 10_000, decay_factor: float = 1.0
) -> optax.Schedule:
    """T5's inverse square root: base · decay_factor / sqrt(max(step, warmup_steps))."""
    if warmup_steps < 1:
        raise ValueError(f"rsqrt needs warmup_steps >= 1, got {warmup_steps}")

    def schedule(step):
        return base * decay_factor / jnp.sqrt(jnp.maximum(step, warmup_steps).astype(jnp.float32))

    return schedule


def _with_clipping(
    tx: optax.GradientTransformation, clip_norm: float | None
) -> optax.GradientTransformation:
    if clip_norm is None:
        return tx
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm}")
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx)


@gin.configurable
def adafactor(
    learning_rate: float | optax.Schedule = 1e-3,
    *,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    weight_decay_rate: float | None = None,
    eps: float = 1e-30,
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """Adafactor with T5X-like defaults (factored second moments, decay 0.8, update clipping 1.0, no momentum,
    updates scaled by parameter RMS)."""
    tx = optax.adafactor(
        learning_rate=learning_rate,
        min_dim_size_to_factor=min_dim_size_to_factor,
        decay_rate=decay_rate,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold,
        momentum=momentum,
        weight_decay_rate=weight_decay_rate,
        eps=eps,
    )
    return _with_clipping(tx, clip_norm)


@gin.configurable
def adamw(
    learning_rate: float | optax.Schedule = 1e-4,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    clip_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """AdamW with global-norm gradient clipping (default 1.0)."""
    tx = optax.adamw(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return _with_clipping(tx, clip_norm)
