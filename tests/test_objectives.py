"""The gin-configurable Objective: registry, validation, λ warm-up and the gin objective files."""

from __future__ import annotations

import gin
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO_ROOT
from loss_reference import iqlearn_reference, mle_reference
from test_losses import make_batch

from iqlearn_jax import objectives


def test_objectives_dispatch_to_the_right_loss():
    logits, targets, weights, segments = make_batch(seed=20)
    x, y, w, s = (jnp.asarray(a) for a in (logits, targets, weights, segments))
    iq = objectives.Objective(name="iqlearn", lam=0.5, gamma=0.9)
    loss, metrics = iq(x, y, w, segment_ids=s)
    ref = iqlearn_reference(
        logits,
        targets,
        weights,
        lam=0.5,
        gamma=0.9,
        segment_ids=segments,
        factor="NUM_REAL_TARGET_TOKENS",
    )
    np.testing.assert_allclose(loss, ref["loss"], rtol=2e-5)
    assert float(metrics["lam"]) == 0.5
    ent = objectives.Objective(name="mle_entropy", beta=0.1)
    np.testing.assert_allclose(
        ent(x, y, w)[0],
        mle_reference(logits, targets, weights, beta=0.1, factor="NUM_REAL_TARGET_TOKENS"),
        rtol=2e-5,
    )


def test_lambda_warmup_is_pure_mle_before_and_iqlearn_after():
    logits, targets, weights, _ = make_batch(seed=21)
    x, y, w = (jnp.asarray(a) for a in (logits, targets, weights))
    iq = objectives.Objective(name="iqlearn", lam=0.5, lam_warmup_steps=10)
    mle = objectives.Objective(name="mle")
    np.testing.assert_allclose(iq(x, y, w, step=jnp.int32(3))[0], mle(x, y, w)[0], rtol=1e-6)
    after = objectives.Objective(name="iqlearn", lam=0.5)(x, y, w)[0]
    np.testing.assert_allclose(iq(x, y, w, step=jnp.int32(10))[0], after, rtol=1e-6)
    np.testing.assert_allclose(iq(x, y, w, step=None)[0], after, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="iqlearn", lam=0.1, z_loss=1e-4), "z_loss"),
        (dict(name="gail"), "name"),
        (dict(name="iqlearn", lam=-1.0), "lam"),
        (dict(name="iqlearn", lam=1.0, gamma=1.2), "gamma"),
        (dict(name="mle_entropy", beta=-0.5), "beta"),
        (dict(name="mle", loss_normalizing_factor="TOKENS"), "loss_normalizing_factor"),
        (dict(name="iqlearn", lam=0.1, lam_warmup_steps=-3), "lam_warmup_steps"),
        (dict(name="mle", lam=0.1), "lam"),
    ],
)
def test_bad_objective_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        objectives.Objective(**kwargs)


@pytest.mark.parametrize("name", ["mle", "mle_entropy", "iqlearn"])
def test_gin_objective_files_build_an_objective(name):
    gin.clear_config()
    try:
        gin.parse_config_file(str(REPO_ROOT / "gin_configs" / "objectives" / f"{name}.gin"))
        objective = gin.query_parameter("%OBJECTIVE").scoped_configurable_fn()
        assert isinstance(objective, objectives.Objective) and objective.name == name
        first_line = (
            (REPO_ROOT / "gin_configs" / "objectives" / f"{name}.gin").read_text().splitlines()[0]
        )
        assert first_line.startswith("#")
    finally:
        gin.clear_config()
