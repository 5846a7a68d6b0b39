"""Import of T5X checkpoints: legacy (msgpack + TensorStore zarr) and Orbax layouts.

The legacy checkpoint is written here with tensorstore and flax msgpack directly,
following T5X's documented layout (t5x/checkpoints.py): `checkpoint_N/checkpoint`
holds msgpack {'version': 3, 'optimizer': {'target': params, 'state': ...}} where
each array is replaced by a zarr TensorStore spec with a path relative to
`checkpoint_N/` ('target.encoder.layers_0.attention.key.kernel', gzip chunks).
"""

import os

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from flax import serialization

from iqlearn_jax.checkpoints import import_t5x_checkpoint, validate_params
from iqlearn_jax.networks.t5 import T5Config, flatten_params, param_shapes, unflatten_params

CONFIG = T5Config(
    vocab_size=64,
    emb_dim=16,
    num_heads=2,
    num_encoder_layers=2,
    num_decoder_layers=1,
    head_dim=8,
    mlp_dim=24,
)


def _random_params(config, seed=0):
    rng = np.random.RandomState(seed)
    return unflatten_params(
        {k: rng.randn(*s).astype(np.float32) for k, s in param_shapes(config).items()}
    )


def _write_zarr(ckpt_dir, name, arr, dtype="float32"):
    rel = name.replace("/", ".")
    metadata = {"compressor": {"id": "gzip"}, "shape": list(arr.shape), "chunks": list(arr.shape)}
    spec = {
        "driver": "zarr",
        "dtype": dtype,
        "kvstore": {"driver": "file", "path": os.path.join(ckpt_dir, rel)},
        "metadata": metadata,
    }
    store = ts.open(spec, create=True, open=True).result()
    store.write(arr).result()
    # The msgpack keeps the spec with the path relative to the checkpoint directory.
    return {**spec, "kvstore": {"driver": "file", "path": rel}}


def _write_legacy(model_dir, params, step=1000, inline=(), bf16=()):
    ckpt_dir = os.path.join(model_dir, f"checkpoint_{step}")
    os.makedirs(ckpt_dir)
    flat = flatten_params(params)
    target = {}
    for name, arr in flat.items():
        if name in inline:
            target[name] = arr  # small arrays may live in the msgpack itself
        elif name in bf16:
            target[name] = _write_zarr(
                ckpt_dir, f"target/{name}", arr.astype(ml_dtypes.bfloat16), "bfloat16"
            )
        else:
            target[name] = _write_zarr(ckpt_dir, f"target/{name}", arr)
    # Adafactor-like optimizer state; one factored second moment in TensorStore too.
    kernel = "encoder/layers_0/attention/query/kernel"
    state = {
        "step": np.int32(step),
        "param_states": {
            "encoder": {
                "layers_0": {
                    "attention": {
                        "query": {
                            "kernel": {
                                "v_row": _write_zarr(
                                    ckpt_dir,
                                    f"state/param_states/{kernel}/v_row",
                                    np.ones(flat[kernel].shape[0], np.float32),
                                )
                            }
                        }
                    }
                }
            }
        },
    }
    contents = {
        "version": 3,
        "optimizer": {"target": unflatten_params(target), "state": state},
    }
    with open(os.path.join(ckpt_dir, "checkpoint"), "wb") as f:
        f.write(serialization.msgpack_serialize(contents))
    return ckpt_dir


def _assert_params_equal(got, want):
    got, want = flatten_params(got), flatten_params(want)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == np.float32, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_legacy_layout_loads(tmp_path):
    params = _random_params(CONFIG)
    bf16 = "decoder/layers_0/mlp/wo/kernel"
    ckpt_dir = _write_legacy(
        str(tmp_path), params, inline=("encoder/encoder_norm/scale",), bf16=(bf16,)
    )
    assert os.path.isdir(os.path.join(ckpt_dir, "target.encoder.layers_0.attention.key.kernel"))
    want = flatten_params(params)
    want[bf16] = want[bf16].astype(ml_dtypes.bfloat16).astype(np.float32)
    want = unflatten_params(want)
    # The step directory, the msgpack file itself, or the model directory (latest step).
    for path in (ckpt_dir, os.path.join(ckpt_dir, "checkpoint"), str(tmp_path)):
        _assert_params_equal(import_t5x_checkpoint(path, config=CONFIG), want)


def test_orbax_layout_loads(tmp_path):
    params = _random_params(CONFIG, seed=1)
    state = {"target": params, "state": {"step": np.int32(7)}}
    ocp.PyTreeCheckpointer().save(str(tmp_path / "checkpoint_7" / "state"), state)
    _assert_params_equal(import_t5x_checkpoint(str(tmp_path / "checkpoint_7"), CONFIG), params)
    _assert_params_equal(import_t5x_checkpoint(str(tmp_path), CONFIG), params)
    ocp.PyTreeCheckpointer().save(str(tmp_path / "plain"), {"params": params})
    _assert_params_equal(import_t5x_checkpoint(str(tmp_path / "plain")), params)


def test_mismatched_shape_names_path_and_shapes(tmp_path):
    flat = flatten_params(_random_params(CONFIG))
    name = "decoder/layers_0/encoder_decoder_attention/value/kernel"
    flat[name] = np.zeros((16, 12), np.float32)
    del flat["encoder/layers_1/mlp/wi_1/kernel"]
    flat["encoder/layers_1/mlp/wi/kernel"] = np.zeros((16, 24), np.float32)
    ckpt_dir = _write_legacy(str(tmp_path), unflatten_params(flat))
    with pytest.raises(ValueError) as err:
        import_t5x_checkpoint(ckpt_dir, config=CONFIG)
    message = str(err.value)
    assert f"parameter {name}: expected shape (16, 16), found (16, 12)" in message
    assert "missing parameter encoder/layers_1/mlp/wi_1/kernel" in message
    assert "unexpected parameter encoder/layers_1/mlp/wi/kernel" in message
    assert ckpt_dir in message


def test_validate_params_accepts_initialised_params():
    from iqlearn_jax.networks.t5 import Transformer

    dummy = np.ones((1, 3), np.int32)
    variables = jax.eval_shape(
        lambda: Transformer(CONFIG).init(jax.random.PRNGKey(0), dummy, dummy, dummy)
    )
    validate_params(CONFIG, variables["params"])


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a T5X checkpoint"):
        import_t5x_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_t5x_checkpoint(str(tmp_path / "nope"))
