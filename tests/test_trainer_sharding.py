"""Sharded train steps on 8 emulated CPU devices equal the single-device step (real T5 + IQLearn objective)."""

import functools

import jax
import numpy as np
import pytest

from iqlearn_jax import optimizers, trainer
from iqlearn_jax.models import EncoderDecoderModel
from iqlearn_jax.networks.t5 import T5Config, Transformer
from iqlearn_jax.objectives import Objective
from iqlearn_jax.partitioning import Partitioner, standard_logical_axis_rules

BATCH, IN_LEN, OUT_LEN = 8, 12, 10


def tiny_model(dropout: float = 0.0, normalizer="NUM_REAL_TARGET_TOKENS") -> EncoderDecoderModel:
    config = T5Config(
        vocab_size=64,
        emb_dim=32,
        num_heads=4,
        num_encoder_layers=1,
        num_decoder_layers=1,
        head_dim=8,
        mlp_dim=64,
        dropout_rate=dropout,
        dtype="float32",
    )
    objective = Objective(name="iqlearn", lam=0.3, loss_normalizing_factor=normalizer)
    return EncoderDecoderModel(Transformer(config), objective=objective)


def shapes(batch=BATCH):
    return trainer.model_feature_shapes(tiny_model(), {"inputs": IN_LEN, "targets": OUT_LEN}, batch)


def batches(n=3, seed=0):
    """Random SeqIO-shaped batches: EOS (1) then padding at random lengths."""
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        enc = rs.randint(2, 64, size=(BATCH, IN_LEN)).astype(np.int32)
        tgt = rs.randint(2, 64, size=(BATCH, OUT_LEN)).astype(np.int32)
        for row in range(BATCH):
            n_tgt = rs.randint(3, OUT_LEN + 1)
            tgt[row, n_tgt - 1] = 1
            tgt[row, n_tgt:] = 0
            enc[row, rs.randint(4, IN_LEN + 1) :] = 0
        dec_in = np.concatenate([np.zeros((BATCH, 1), np.int32), tgt[:, :-1]], axis=1)
        out.append(
            {
                "encoder_input_tokens": enc,
                "decoder_input_tokens": dec_in,
                "decoder_target_tokens": tgt,
                "decoder_loss_weights": (tgt > 0).astype(np.int32),
            }
        )
    return out


def run(mesh_shape, model, optimizer, num_microbatches=1, steps=3):
    devices = jax.devices()[: mesh_shape[0] * mesh_shape[1]]
    partitioner = Partitioner(mesh_shape=mesh_shape, devices=devices)
    _, shardings = trainer.abstract_train_state(model, optimizer, partitioner, shapes())
    state = trainer.init_train_state(
        model, optimizer, partitioner, shapes(), seed=0, state_shardings=shardings
    )
    step_fn = trainer.build_train_step(model, optimizer, partitioner, shardings, num_microbatches)
    losses = []
    for batch in batches(steps):
        state, metrics = step_fn(state, partitioner.shard_batch(batch))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state), state


def max_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def make_optimizer(opt_name):
    # Adam divides by sqrt(v) + eps: with eps=1e-8, gradients that are exactly 0 on one device and ~1e-10
    # (summation order) on another give different updates, so compare Adam with a larger eps.
    return (
        optimizers.adafactor(1e-2) if opt_name == "adafactor" else optimizers.adamw(1e-2, eps=1e-4)
    )


@functools.cache
def single_device_reference(opt_name):
    losses, state, _ = run((1, 1), tiny_model(), make_optimizer(opt_name))
    return losses, state


@pytest.mark.parametrize(
    "opt_name,meshes",
    [("adafactor", [(8, 1), (4, 2), (2, 4)]), ("adamw", [(2, 4)])],
)
def test_meshes_match_single_device(opt_name, meshes):
    ref_losses, ref_state = single_device_reference(opt_name)
    assert ref_losses[-1] < ref_losses[0]
    for mesh_shape in meshes:
        losses, state, device_state = run(mesh_shape, tiny_model(), make_optimizer(opt_name))
        np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=2e-5)
        assert max_diff(state.params, ref_state.params) < 2e-5, mesh_shape
        assert max_diff(state.opt_state, ref_state.opt_state) < 2e-5, mesh_shape
        assert int(state.step) == 3
        # Model-parallel meshes really shard: the MLP kernels split their 'mlp' axis over 'model'.
        wi = device_state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
        if mesh_shape[1] > 1:
            assert wi.sharding.spec == jax.sharding.PartitionSpec(None, "model")
            assert wi.addressable_shards[0].data.shape == (32, 64 // mesh_shape[1])


def test_gradient_accumulation_equals_full_batch():
    """2 microbatches on a (4, 2) mesh give the single-device full-batch update: per-microbatch losses are
    normalised by their own token counts, so the combination must weight them by tokens."""
    ref_losses, ref_state = single_device_reference("adafactor")
    losses, state, _ = run((4, 2), tiny_model(), make_optimizer("adafactor"), num_microbatches=2)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    assert max_diff(state.params, ref_state.params) < 2e-5


def test_abstract_state_materialises_nothing_and_matches_init():
    model = tiny_model()
    optimizer = optimizers.adafactor(1e-3)
    partitioner = Partitioner(mesh_shape=(4, 2))
    abstract, shardings = trainer.abstract_train_state(model, optimizer, partitioner, shapes())
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    real = trainer.init_train_state(
        model, optimizer, partitioner, shapes(), state_shardings=shardings
    )
    for a, r in zip(jax.tree.leaves(abstract), jax.tree.leaves(real), strict=True):
        assert a.shape == r.shape and a.dtype == r.dtype and a.sharding == r.sharding
    # The compiled step lowers from abstract arguments alone (what the AOT compiler does).
    step_fn = trainer.build_train_step(model, optimizer, partitioner, shardings)
    compiled = step_fn.lower(abstract, trainer.abstract_batch(shapes(), partitioner)).compile()
    assert compiled.cost_analysis() is not None


def test_rules_table_and_batch_sharding():
    rules = dict(standard_logical_axis_rules())
    assert rules["batch"] == "data" and rules["vocab"] == "model" and rules["embed"] is None
    partitioner = Partitioner(num_partitions=2)
    assert dict(partitioner.mesh.shape) == {"data": 4, "model": 2}
    batch = partitioner.shard_batch(batches(1)[0])
    tokens = batch["decoder_target_tokens"]
    assert tokens.shape == (BATCH, OUT_LEN)
    assert tokens.addressable_shards[0].data.shape == (BATCH // 4, OUT_LEN)
    with pytest.raises(ValueError, match="num_partitions=3"):
        Partitioner(num_partitions=3)
    with pytest.raises(ValueError, match="batch_size=6"):
        partitioner.local_batch_size(6)
