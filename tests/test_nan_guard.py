"""The NaN/Inf guard inside the step (trainer.guard_nonfinite) and steps in flight (metrics read by the host only
at log / evaluation / checkpoint points): an injected NaN stops the run naming the step, no checkpoint of that
or a later step exists, the earlier ones are intact."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from iqlearn_jax import optimizers, step_metrics, trainer
from iqlearn_jax import train as train_lib
from iqlearn_jax.models import EncoderDecoderModel
from iqlearn_jax.networks.t5 import T5Config, Transformer
from iqlearn_jax.objectives import Objective


def test_guard_keeps_state_records_first_bad_step():
    """A toy state: the bad step (NaN batch) leaves params / opt_state / rng untouched, later good steps too."""
    optimizer = optax.adam(0.1)
    params = {"w": jnp.arange(3.0)}

    def step_fn(state, batch):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum((p["w"] - batch["x"]) ** 2))(
            state.params
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    step = jax.jit(trainer.guard_nonfinite(step_fn))
    state = trainer.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
        rng=jax.random.PRNGKey(0), nonfinite_step=jnp.full((), -1, jnp.int32),
    )  # fmt: skip
    good = {"x": jnp.ones(3)}
    state, _ = step(state, good)
    assert int(state.nonfinite_step) == -1 and int(state.step) == 1
    before = jax.device_get(state)
    state, metrics = step(state, {"x": jnp.array([1.0, jnp.nan, 1.0])})
    assert not np.isfinite(float(metrics["loss"]))
    state, metrics = step(state, good)  # finite again, but the run is already marked
    assert np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 3 and int(state.nonfinite_step) == 2
    after = jax.device_get(state.replace(step=before.step, nonfinite_step=before.nonfinite_step))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)


def _small_model(nan_from_step=None):
    config = T5Config(vocab_size=384, emb_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                      head_dim=16, mlp_dim=64, dropout_rate=0.0)  # fmt: skip
    model = EncoderDecoderModel(Transformer(config), objective=Objective(name="iqlearn", lam=0.1))
    if nan_from_step is None:
        return model
    from test_trainer_loop import NaNAfter

    return NaNAfter(model, nan_from_step)


def _run(tmp_path, model, optimizer, log_period, monkeypatch):
    fetches = []
    original = step_metrics.PendingMetrics.fetch

    def counting_fetch(self):
        fetches.append(len(self))
        return original(self)

    monkeypatch.setattr(step_metrics.PendingMetrics, "fetch", counting_fetch)
    with pytest.raises(train_lib.NonFiniteLossError) as raised:
        train_lib.train(
            model=model, model_dir=str(tmp_path), mixture_or_task_name="synthetic_arithmetic_1step",
            task_feature_lengths={"inputs": 48, "targets": 32}, batch_size=8, train_steps=12,
            optimizer=optimizer, checkpoint_period=2, log_period=log_period, eval_period=1000,
            async_checkpointing=False, eval_split=None,
        )  # fmt: skip
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    return str(raised.value), saved, fetches


def _assert_intact(tmp_path, steps):
    for s in steps:
        restored = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / str(s) / "state")
        assert int(restored["step"]) == s and int(restored["nonfinite_step"]) == -1
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored["params"]))


def test_nan_loss_with_steps_in_flight(tmp_path, monkeypatch):
    """log_period=4, checkpoints every 2 steps, loss NaN from step 5: the host reads metrics at steps 2, 4 (and
    not in between) and at the checkpoint point 6, where it stops naming step 5; checkpoints 2 and 4 only."""
    message, saved, fetches = _run(
        tmp_path, _small_model(nan_from_step=5), optimizers.adamw(1e-3), 4, monkeypatch
    )
    assert "non-finite loss=nan at step 5" in message, message
    assert saved == [2, 4]
    assert fetches == [2, 2, 2]  # steps 1-2, 3-4, 5-6: one host read per checkpoint / log point
    _assert_intact(tmp_path, saved)


def test_nan_learning_rate_is_caught_by_the_state_check(tmp_path, monkeypatch):
    """A NaN learning rate at step 4 (loss and grad_norm still finite) makes the updated params NaN: the guard
    keeps the old ones; with log_period=3 and checkpoints every 2 steps the host reads at steps 2, 3 and 4 and
    stops there naming step 4; no checkpoint of step 4 or later exists."""
    schedule = lambda step: jnp.where(step == 3, jnp.nan, 1e-3)  # noqa: E731 - step 4 runs with state.step 3
    message, saved, fetches = _run(
        tmp_path, _small_model(), optimizers.adamw(schedule), 3, monkeypatch
    )
    assert "non-finite parameters or optimizer state after step 4" in message, message
    assert "loss=" in message  # the (finite) values of that step are named too
    assert saved == [2] and fetches == [2, 1, 1]
    _assert_intact(tmp_path, saved)
