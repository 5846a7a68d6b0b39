"""Argument checks of the loss functions (Python level, before tracing).

Traced values cannot be range-checked and are let through; concrete ones out of range raise ValueError naming the
argument, the expected range and the value. Used by `losses.py`, `objectives.py` and the online algorithms.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

NORMALIZING_FACTOR_NAMES = (
    "NUM_REAL_TARGET_TOKENS",
    "NUM_TOTAL_TARGET_TOKENS",
    "AVERAGE_PER_SEQUENCE",
)


def _concrete_float(value: Any) -> float | None:
    """Returns `value` as a Python float when it is known at trace time, else None."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def check_range(
    name: str, value: Any, low: float, high: float, *, high_inclusive: bool = True
) -> None:
    """`value` in [low, high] (or [low, high) when not `high_inclusive`), unless it is traced."""
    number = _concrete_float(value)
    if number is None:
        if not isinstance(value, jax.core.Tracer):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return
    upper_ok = number <= high if high_inclusive else number < high
    if not (low <= number and upper_ok) or np.isnan(number):
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")


def check_inputs(
    logits: Array, targets: Array, weights: Array, segment_ids: Array | None, prefix: str = ""
) -> None:
    """logits floating [batch, length, vocab]; targets, weights, segment_ids (if any) [batch, length]."""
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"{prefix}logits must have a floating dtype, got {logits.dtype}")
    if logits.ndim != 3:
        raise ValueError(
            f"{prefix}logits must have shape [batch, length, vocab], got shape {logits.shape}"
        )
    expected = logits.shape[:2]
    for name, array in (("targets", targets), ("weights", weights), ("segment_ids", segment_ids)):
        if array is not None and tuple(array.shape) != tuple(expected):
            raise ValueError(
                f"{prefix}{name} must have shape [batch, length] = {tuple(expected)} to match logits "
                f"{tuple(logits.shape)}, got {tuple(array.shape)}"
            )


def check_normalizing_factor(loss_normalizing_factor: Any) -> None:
    """None, a positive number or one of NORMALIZING_FACTOR_NAMES."""
    if loss_normalizing_factor is None:
        return
    if isinstance(loss_normalizing_factor, str):
        if loss_normalizing_factor not in NORMALIZING_FACTOR_NAMES:
            raise ValueError(
                f"loss_normalizing_factor must be None, a positive number or one of "
                f"{NORMALIZING_FACTOR_NAMES}, got {loss_normalizing_factor!r}"
            )
        return
    number = _concrete_float(loss_normalizing_factor)
    if number is None and not isinstance(loss_normalizing_factor, jax.core.Tracer):
        raise ValueError(
            f"loss_normalizing_factor must be None, a positive number or one of "
            f"{NORMALIZING_FACTOR_NAMES}, got {loss_normalizing_factor!r}"
        )
    if number is not None and not number > 0:
        raise ValueError(f"loss_normalizing_factor must be > 0 when a number, got {number}")
