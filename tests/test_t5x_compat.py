"""The optional t5x adapter: a clear install hint without t5x; the real model class when t5x is installed."""

from __future__ import annotations

import importlib
import sys

import pytest
from conftest import REPO_ROOT


def _t5x_available() -> bool:
    try:
        importlib.import_module("t5x.models")
    except Exception:  # noqa: BLE001 - any failure means the adapter cannot be exercised
        return False
    return True


@pytest.mark.skipif(
    _t5x_available(), reason="t5x is installed: the missing-t5x path cannot be exercised"
)
def test_import_without_t5x_names_the_install_command():
    sys.modules.pop("iqlearn_jax.t5x_compat", None)
    with pytest.raises(ImportError, match=r"iqlearn_jax\[t5x\]"):
        importlib.import_module("iqlearn_jax.t5x_compat")


def test_t5x_gin_file_starts_with_its_command_and_binds_the_adapter():
    text = (REPO_ROOT / "gin_configs" / "t5x" / "iqlearn_t5_1_1_base.gin").read_text()
    assert text.startswith("# ") and "python -m t5x.train" in text.splitlines()[1]
    assert "MODEL = @t5x_compat.IQLearnEncoderDecoderModel()" in text


@pytest.mark.skipif(
    not _t5x_available(), reason="t5x (git-only, optional extra [t5x]) is not installed"
)
def test_adapter_loss_equals_objective_on_t5x_logits():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import seqio
    from t5x import adafactor
    from t5x.examples.t5 import network

    from iqlearn_jax import objectives, t5x_compat

    config = network.T5Config(
        vocab_size=64,
        dtype="float32",
        emb_dim=16,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        head_dim=8,
        mlp_dim=32,
        mlp_activations=("gelu", "linear"),
        dropout_rate=0.0,
        logits_via_embedding=False,
    )
    objective = objectives.Objective(name="iqlearn", lam=0.5)
    model = t5x_compat.IQLearnEncoderDecoderModel(
        module=network.Transformer(config),
        input_vocabulary=seqio.PassThroughVocabulary(64),
        output_vocabulary=seqio.PassThroughVocabulary(64),
        optimizer_def=adafactor.Adafactor(),
        objective=objective,
    )
    shapes = {"encoder_input_tokens": (2, 6), "decoder_input_tokens": (2, 5)}
    params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
    rng = np.random.default_rng(0)
    targets = rng.integers(2, 64, size=(2, 5)).astype(np.int32)
    targets[:, -1] = 1
    batch = {
        "encoder_input_tokens": rng.integers(2, 64, size=(2, 6)).astype(np.int32),
        "decoder_input_tokens": np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], 1),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones((2, 5), np.float32),
    }
    loss, metrics = model.loss_fn(params, batch, None)
    logits = model._compute_logits(params, batch, None)
    expected, _ = objective(
        logits, jnp.asarray(targets), jnp.asarray(batch["decoder_loss_weights"])
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert "objective/td_term" in metrics
