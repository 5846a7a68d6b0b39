"""T5X model classes whose training loss is one of this project's objectives (the optional t5x adapter).

t5x is not on PyPI; install it from git (`pip install -e '.[t5x]'`) to use this module (this project's tests install
the vendored copy with tests/install_test_extras.sh). The classes subclass T5X's own `EncoderDecoderModel` /
`DecoderOnlyModel` and change only `loss_fn`: logits are computed once by T5X's `_compute_logits`, then `Objective`
(objectives.py) turns them into the loss. T5X's metrics (accuracy, timing, packing statistics) are kept, and every
objective metric is added as `objective/<name>`. `t5x.train`, `t5x.eval` and `t5x.infer` run unchanged with the
model-only gin files in gin_configs/t5x/ plus T5X's run files (t5x/configs/runs/finetune.gin, eval.gin, infer.gin);
each gin file starts with the three commands. The loss is already normalised per target token, so T5X's
`loss_per_*_target_token(s)` metrics divide it once more: read `loss` / `objective/*` instead.

Inside T5X the loss function does not see the train step, so the λ warm-up (`Objective.lam_warmup_steps`) cannot be
applied there: such an objective is refused with an error (warm up with a first MLE run instead).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from iqlearn_jax.objectives import Objective

try:
    from t5x import metrics as t5x_metrics
    from t5x import models as t5x_models
except ImportError as error:  # pragma: no cover - exercised by tests/test_t5x_compat.py without t5x
    raise ImportError(
        "iqlearn_jax.t5x_compat needs t5x, which is not on PyPI: install it with "
        "`pip install -e '.[t5x]'` from this repository, i.e. iqlearn_jax[t5x] "
        "(or `pip install git+https://github.com/google-research/t5x`)."
    ) from error


def _accepts(fn: Any, name: str) -> bool:
    return name in inspect.signature(fn).parameters


class _ObjectiveLossMixin:
    """Replaces T5X's cross-entropy `loss_fn` by `self.objective` on the same logits."""

    objective: Objective

    def _init_objective(self, objective: Objective | None, kwargs: dict[str, Any]) -> None:
        objective = objective or Objective()
        if objective.lam_warmup_steps:
            raise ValueError(
                f"Objective.lam_warmup_steps={objective.lam_warmup_steps}: T5X's loss_fn does not receive the train "
                "step, so the λ warm-up cannot run inside t5x.train. Use lam_warmup_steps=0 there."
            )
        if getattr(objective, "vocab_chunk_size", None) is not None:
            raise ValueError(
                f"Objective.vocab_chunk_size={objective.vocab_chunk_size}: T5X's network returns full logits, so the "
                "vocabulary-chunked loss of this project's models cannot run inside t5x.train. Use None there."
            )
        for name in ("label_smoothing", "z_loss", "loss_normalizing_factor"):
            if kwargs.get(name) not in (None, 0, 0.0):
                raise ValueError(
                    f"{name}={kwargs[name]!r} given to the T5X model: set it on the Objective instead "
                    f"(objectives.Objective.{name})."
                )
        self.objective = objective

    def loss_fn(
        self,
        params: Any,
        batch: Mapping[str, jnp.ndarray],
        dropout_rng: jax.Array | None,
        flax_mutables: Any = None,
    ) -> tuple[jnp.ndarray, dict[str, Any]]:
        """Loss and T5X metrics of `batch`; the objective's own metrics appear as `objective/<name>`."""
        if flax_mutables is not None and _accepts(self._compute_logits, "flax_mutables"):
            logits = self._compute_logits(params, batch, dropout_rng, flax_mutables=flax_mutables)
        else:
            logits = self._compute_logits(params, batch, dropout_rng)
        targets = batch["decoder_target_tokens"]
        weights = batch.get("decoder_loss_weights")
        if weights is None:
            weights = (targets > 0).astype(jnp.float32)
        loss, objective_metrics = self.objective(
            logits, targets, weights, segment_ids=batch.get("decoder_segment_ids")
        )
        kwargs: dict[str, Any] = {}
        if _accepts(self._compute_metrics, "segment_ids"):
            segment_ids = {
                key[: -len("_segment_ids")]: value
                for key, value in batch.items()
                if key.endswith("_segment_ids")
            }
            kwargs["segment_ids"] = segment_ids or None
        metrics = self._compute_metrics(
            logits=logits, targets=targets, mask=weights, loss=loss, z_loss=None, **kwargs
        )
        metrics = dict(metrics)
        for name, value in objective_metrics.items():
            metrics[f"objective/{name}"] = t5x_metrics.AveragePerStep(total=value)
        return loss, metrics


class IQLearnEncoderDecoderModel(_ObjectiveLossMixin, t5x_models.EncoderDecoderModel):
    """T5X `EncoderDecoderModel` trained with `objective` (mle, mle_entropy or iqlearn)."""

    def __init__(self, *args: Any, objective: Objective | None = None, **kwargs: Any):
        self._init_objective(objective, kwargs)
        super().__init__(*args, **kwargs)


class IQLearnDecoderOnlyModel(_ObjectiveLossMixin, t5x_models.DecoderOnlyModel):
    """T5X `DecoderOnlyModel` (causal or prefix LM) trained with `objective`; prompt tokens carry weight 0."""

    def __init__(self, *args: Any, objective: Objective | None = None, **kwargs: Any):
        self._init_objective(objective, kwargs)
        super().__init__(*args, **kwargs)
