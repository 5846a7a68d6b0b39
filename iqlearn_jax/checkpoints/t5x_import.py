"""Read the parameters of a T5X checkpoint (legacy msgpack+TensorStore or Orbax layout).

Legacy layout (T5X `checkpoints.Checkpointer`, e.g. gs://t5-data/pretrained_models/t5x/*):

    checkpoint_N/
      checkpoint                         msgpack of {'version': 3, 'optimizer': state_dict}
      target.encoder.layers_0.attention.key.kernel/   zarr array (.zarray + gzip chunks)
      ...

`state_dict` is the train state's state dict, `{'target': params, 'state': {...}}`.
Each array written to TensorStore is replaced in the msgpack by its TensorStore
spec (a dict with 'driver': 'zarr', 'kvstore': {'driver': 'file'|'gcs', 'path':
'target.encoder...'}, 'metadata'), the path relative to `checkpoint_N/` (older
specs put 'path' at the top level). Small arrays may be stored inline. Version
< 3 stored bfloat16 as uint16.

Orbax layout: `checkpoint_N/state/` (or a directory that is itself an Orbax
PyTree checkpoint) whose tree holds the params under 'target' (T5X), 'params',
or 'optimizer'/'target'.

Only the parameters are read (optimizer state is skipped in the legacy layout),
and returned as float32 NumPy arrays in a nested dict with T5X names.
"""

from __future__ import annotations

import os
import re

import jax
import ml_dtypes
import numpy as np
import tensorstore as ts
from flax import serialization

from iqlearn_jax.networks.t5 import T5Config, validate_params

_LEGACY_FILE = "checkpoint"


def _is_ts_spec(node) -> bool:
    return isinstance(node, dict) and "driver" in node and "kvstore" in node


def _latest_step_dir(path: str) -> str | None:
    steps = []
    for name in os.listdir(path):
        m = re.fullmatch(r"checkpoint_(\d+)", name)
        if m and os.path.isdir(os.path.join(path, name)):
            steps.append((int(m.group(1)), name))
    return os.path.join(path, max(steps)[1]) if steps else None


def _read_ts_array(spec: dict, ckpt_dir: str, name: str) -> np.ndarray:
    """Opens one TensorStore array referenced by a (relative-path) spec."""
    kvstore = dict(spec.get("kvstore") or {})
    rel = kvstore.get("path") or spec.get("path")
    if not rel:
        raise ValueError(f"TensorStore spec of {name} has no 'path': {spec}")
    if kvstore.get("driver") not in ("file", "gfile", "gcs", None):
        raise ValueError(f"Unsupported TensorStore kvstore driver for {name}: {kvstore}")
    full = rel if os.path.isabs(rel) else os.path.join(ckpt_dir, rel)
    if not os.path.isdir(full):
        raise FileNotFoundError(
            f"Array {name} of the T5X checkpoint {ckpt_dir} refers to {full}, which does not exist."
        )
    open_spec = {"driver": spec.get("driver", "zarr"), "kvstore": {"driver": "file", "path": full}}
    store = ts.open(open_spec, open=True, read=True).result()
    return np.asarray(store.read().result())


def _to_float32(arr, version: int) -> np.ndarray:
    arr = np.asarray(arr)
    if version < 3 and arr.dtype == np.uint16:
        arr = arr.view(ml_dtypes.bfloat16)
    return arr.astype(np.float32)


def _read_legacy(ckpt_dir: str) -> dict:
    with open(os.path.join(ckpt_dir, _LEGACY_FILE), "rb") as f:
        contents = serialization.msgpack_restore(f.read())
    version = int(contents.get("version", 0))
    state = contents.get("optimizer", contents)
    if not isinstance(state, dict) or "target" not in state:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"T5X checkpoint {ckpt_dir}/checkpoint has no 'optimizer'/'target' entry (found {keys})."
        )

    def load(node, prefix):
        if _is_ts_spec(node):
            return _to_float32(_read_ts_array(node, ckpt_dir, prefix), version)
        if isinstance(node, dict):
            return {k: load(v, f"{prefix}/{k}") for k, v in node.items()}
        return _to_float32(node, version)

    return load(state["target"], "target")


def _orbax_tree_metadata(meta):
    meta = getattr(meta, "item_metadata", meta)
    return getattr(meta, "tree", meta)


def _read_orbax(directory: str) -> dict:
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    tree_meta = _orbax_tree_metadata(checkpointer.metadata(directory))
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree_meta)
    tree = checkpointer.restore(directory, restore_args=restore_args)
    for keys in (("target",), ("params",), ("optimizer", "target"), ("state", "params")):
        node = tree
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            tree = node
            break
    else:
        if not (isinstance(tree, dict) and {"encoder", "decoder"} <= set(tree)):
            found = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
            raise ValueError(
                f"Orbax checkpoint {directory} holds no params under 'target', 'params' or "
                f"'optimizer/target' (top-level keys: {found})."
            )
    return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


def import_t5x_checkpoint(path: str, config: T5Config | None = None) -> dict:
    """Reads the parameters of a T5X checkpoint.

    Args:
      path: a `checkpoint_N` directory (legacy: containing the msgpack file
        `checkpoint`; Orbax: containing `state/`), the msgpack file itself, an
        Orbax PyTree directory, or a model directory holding `checkpoint_*`
        subdirectories (the highest step is used).
      config: if given, names and shapes are checked against `Transformer(config)`.

    Returns:
      Nested dict of float32 NumPy arrays with T5X parameter names.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.basename(path) == _LEGACY_FILE:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"T5X checkpoint path {path} does not exist.")
    if not os.path.exists(os.path.join(path, _LEGACY_FILE)) and not os.path.isdir(
        os.path.join(path, "state")
    ):
        latest = _latest_step_dir(path)
        if latest is not None:
            path = latest
    if os.path.exists(os.path.join(path, _LEGACY_FILE)):
        params = _read_legacy(path)
    elif os.path.isdir(os.path.join(path, "state")):
        params = _read_orbax(os.path.join(path, "state"))
    elif os.path.exists(os.path.join(path, "_METADATA")) or os.path.exists(
        os.path.join(path, "_CHECKPOINT_METADATA")
    ):
        params = _read_orbax(path)
    else:
        raise FileNotFoundError(
            f"{path} is not a T5X checkpoint: expected a msgpack file 'checkpoint' (legacy layout), "
            f"a 'state/' Orbax directory, or checkpoint_N subdirectories; found {sorted(os.listdir(path))}."
        )
    if config is not None:
        validate_params(config, params, source=f"T5X checkpoint {path}")
    return params
