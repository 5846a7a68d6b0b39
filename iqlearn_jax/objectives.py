"""Training objectives as gin-configurable values: which loss of `losses.py`, with which coefficients and schedule.

A model class holds one `Objective` and calls it on the logits it computed:

    loss, metrics = objective(logits, targets, weights, segment_ids=segment_ids, step=step)

New objectives are added with `register_objective`, never by copying a model or a trainer:

    @register_objective("my_loss")
    def _my_loss(objective, logits, targets, weights, segment_ids, step): ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gin
import jax
import jax.numpy as jnp

from iqlearn_jax import loss_checks, losses

Array = jax.Array
ObjectiveFn = Callable[..., tuple[Array, dict[str, Array]]]

_REGISTRY: dict[str, ObjectiveFn] = {}


def register_objective(name: str) -> Callable[[ObjectiveFn], ObjectiveFn]:
    """Decorator registering `fn(objective, logits, targets, weights, segment_ids, step)` under `name`."""

    def decorator(fn: ObjectiveFn) -> ObjectiveFn:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def registered_objectives() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Objective:
    """One training objective with its hyper-parameters.

    Attributes:
      name: a registered objective: "mle", "mle_entropy" or "iqlearn" (see `registered_objectives()`).
      lam: IQLearn TD-regulariser weight λ ≥ 0 (iqlearn only; 0 = MLE).
      gamma: discount γ in [0, 1] (iqlearn).
      beta: entropy bonus β ≥ 0 (mle_entropy).
      label_smoothing, z_loss: as T5X (mle only). z_loss > 0 with lam > 0 is refused: z-loss penalises V², which
        IQLearn uses as the value.
      lam_warmup_steps: train steps of pure MLE before λ switches on (the paper's warm-up); 0 = none.
      loss_normalizing_factor: None (sum), a number, or "NUM_REAL_TARGET_TOKENS" (default, as DESIGN.md §1),
        "NUM_TOTAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE".
      valid_vocab_size: mask logits rows ≥ this out of V (T5's 32128-row embedding holds 32100 pieces).
      eos_id: end-of-sequence id (terminal state).
      vocab_chunk_size: None (default) = the reference path on full [batch, length, vocab] logits; an int C =
        the model computes the output projection and every per-token reduction over vocabulary chunks of at most
        C columns (iqlearn_jax.chunked_loss), never materialising the full logits, forward or backward. Same
        losses, metrics and gradients (float32 rounding apart).
    """

    name: str = "mle"
    lam: float = 0.0
    gamma: float = 1.0
    beta: float = 0.0
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    lam_warmup_steps: int = 0
    loss_normalizing_factor: Any = "NUM_REAL_TARGET_TOKENS"
    valid_vocab_size: int | None = None
    eos_id: int = 1
    vocab_chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.name not in _REGISTRY:
            raise ValueError(
                f"Objective.name must be one of {registered_objectives()}, got {self.name!r}"
            )
        loss_checks.check_range("Objective.lam (IQLEARN_LAMBDA)", self.lam, 0.0, float("inf"))
        loss_checks.check_range("Objective.gamma (IQLEARN_GAMMA)", self.gamma, 0.0, 1.0)
        loss_checks.check_range("Objective.beta (ENTROPY_BETA)", self.beta, 0.0, float("inf"))
        loss_checks.check_range(
            "Objective.label_smoothing", self.label_smoothing, 0.0, 1.0, high_inclusive=False
        )
        loss_checks.check_range("Objective.z_loss", self.z_loss, 0.0, float("inf"))
        loss_checks.check_normalizing_factor(self.loss_normalizing_factor)
        if self.z_loss > 0 and self.lam > 0:
            raise ValueError(
                f"z_loss={self.z_loss} cannot be combined with lam={self.lam}: z-loss penalises V(s)², the "
                "log-partition function that IQLearn uses as the soft value. Set z_loss=0 for IQLearn."
            )
        chunk = self.vocab_chunk_size
        if chunk is not None and (
            isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1
        ):
            raise ValueError(f"vocab_chunk_size must be None or a positive integer, got {chunk!r}")
        if int(self.lam_warmup_steps) != self.lam_warmup_steps or self.lam_warmup_steps < 0:
            raise ValueError(
                f"lam_warmup_steps must be a non-negative integer, got {self.lam_warmup_steps!r}"
            )
        if self.name == "mle" and self.lam > 0:
            raise ValueError(f"lam={self.lam} has no effect with name='mle'; use name='iqlearn'")
        if self.name != "mle" and (self.label_smoothing > 0 or self.z_loss > 0):
            raise ValueError(
                f"label_smoothing={self.label_smoothing} / z_loss={self.z_loss} only apply to name='mle', "
                f"got name={self.name!r}"
            )
        if self.name != "mle_entropy" and self.beta > 0:
            raise ValueError(
                f"beta={self.beta} has no effect with name={self.name!r}; use 'mle_entropy'"
            )

    def lam_at(self, step: Array | int | None) -> Array | float:
        """λ at train step `step`: 0 during the MLE warm-up, `lam` after (and when step is None)."""
        if step is None or self.lam_warmup_steps == 0:
            return self.lam
        return jnp.where(jnp.asarray(step) < self.lam_warmup_steps, 0.0, self.lam)

    def __call__(
        self,
        logits: Array,
        targets: Array,
        weights: Array,
        segment_ids: Array | None = None,
        step: Array | int | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        """Loss and metrics of logits [b, l, v] (an array or a chunked_loss.ChunkedLogits) against targets/weights
        [b, l] (see losses.py)."""
        return _REGISTRY[self.name](self, logits, targets, weights, segment_ids, step)


@register_objective("mle")
def _mle(objective: Objective, logits, targets, weights, segment_ids, step):
    del segment_ids, step
    return losses.mle_loss(
        logits,
        targets,
        weights,
        label_smoothing=objective.label_smoothing,
        z_loss=objective.z_loss,
        loss_normalizing_factor=objective.loss_normalizing_factor,
    )


@register_objective("mle_entropy")
def _mle_entropy(objective: Objective, logits, targets, weights, segment_ids, step):
    del segment_ids, step
    return losses.entropy_regularized_loss(
        logits,
        targets,
        weights,
        beta=objective.beta,
        loss_normalizing_factor=objective.loss_normalizing_factor,
    )


@register_objective("iqlearn")
def _iqlearn(objective: Objective, logits, targets, weights, segment_ids, step):
    lam = objective.lam_at(step)
    loss, metrics = losses.iqlearn_loss(
        logits,
        targets,
        weights,
        lam=lam,
        gamma=objective.gamma,
        eos_id=objective.eos_id,
        segment_ids=segment_ids,
        valid_vocab_size=objective.valid_vocab_size,
        loss_normalizing_factor=objective.loss_normalizing_factor,
    )
    metrics = dict(metrics, lam=jnp.asarray(lam, jnp.float32))
    return loss, metrics
