"""Device mesh, THE logical-axis rules table, and shardings of params, optimizer state and batches.

Everything that decides where an array lives goes through a `Partitioner`:

    partitioner = Partitioner(num_partitions=2)          # mesh ('data', 'model') = (n_devices / 2, 2)
    param_shardings = partitioner.params_shardings(params_axes, abstract_params)
    batch = partitioner.shard_batch(host_local_numpy_batch)  # global jax.Arrays sharded over 'data'
    with partitioner.activation_context():              # mesh + rules for nn.with_logical_constraint
        compiled = jax.jit(step, in_shardings=..., out_shardings=...)

Logical axis names (DESIGN.md §3): batch, length, embed, mlp, heads, kv, joined_kv, kv_heads, kv_heads_joined,
vocab, relpos_buckets, abspos_buckets. The mapping to mesh axes follows T5X's standard rules (1-D parameter and activation partitioning):
batch → 'data'; vocab, mlp, heads, joined_kv → 'model'; the rest replicated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.core import frozen_dict
from flax.linen import partitioning as nn_partitioning
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from iqlearn_jax.distributed import maybe_initialize_distributed  # noqa: F401 - re-exported (moved)

DATA_AXIS = "data"
MODEL_AXIS = "model"
LogicalRules = Sequence[tuple[str, str | None]]


def standard_logical_axis_rules() -> tuple[tuple[str, str | None], ...]:
    """T5X's standard rules (1-D parameter + 1-D activation partitioning) for mesh axes ('data', 'model')."""
    return (
        ("batch", DATA_AXIS),
        ("vocab", MODEL_AXIS),
        ("mlp", MODEL_AXIS),
        ("heads", MODEL_AXIS),
        ("joined_kv", MODEL_AXIS),
        # Grouped-query attention (networks/llama.py): key/value heads and their joined kernel axis shard on
        # 'model' when the model axis divides them (Partitioner.logical_to_spec replicates otherwise).
        ("kv_heads", MODEL_AXIS),
        ("kv_heads_joined", MODEL_AXIS),
        ("kv", None),
        ("embed", None),
        ("length", None),
        ("relpos_buckets", None),
        ("abspos_buckets", None),
        ("layers", None),
        ("stack", None),
        ("mlp_activations", None),
        # KV-cache axes used by decoding (T5X names).
        ("cache_batch", DATA_AXIS),
        ("cache_heads", MODEL_AXIS),
        ("cache_kv", None),
        ("cache_sequence", None),
    )


def create_mesh(
    num_partitions: int = 1,
    mesh_shape: Sequence[int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A Mesh with axes ('data', 'model').

    Args:
      num_partitions: model-parallel size; data parallelism fills the remaining devices.
      mesh_shape: explicit (data, model) shape; overrides `num_partitions`. Its product must equal the device count.
      devices: devices to use (default: all global devices).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if mesh_shape is None:
        if num_partitions < 1 or n % num_partitions:
            raise ValueError(
                f"num_partitions={num_partitions} must be a positive divisor of the device count {n}"
            )
        mesh_shape = (n // num_partitions, num_partitions)
    mesh_shape = tuple(int(s) for s in mesh_shape)
    if len(mesh_shape) != 2 or int(np.prod(mesh_shape)) != n:
        raise ValueError(
            f"mesh_shape={mesh_shape} must be (data, model) with product equal to the device count {n}"
        )
    try:
        from jax.experimental import mesh_utils

        device_array = mesh_utils.create_device_mesh(mesh_shape, devices=devices)
    except Exception:  # CPU or unusual topologies: plain row-major order is fine.
        device_array = np.asarray(devices, dtype=object).reshape(mesh_shape)
    return Mesh(device_array, (DATA_AXIS, MODEL_AXIS))


def _unfreeze(tree: Any) -> Any:
    return frozen_dict.unfreeze(tree) if isinstance(tree, frozen_dict.FrozenDict) else tree


def _axes_names(axes: Any) -> tuple[str | None, ...]:
    """Logical names from a flax `AxisMetadata` (params_axes leaf) or a plain tuple / PartitionSpec."""
    names = getattr(axes, "names", axes)
    return tuple(names)


def _is_axes_leaf(x: Any) -> bool:
    return (
        hasattr(x, "names")
        or isinstance(x, PartitionSpec)
        or (isinstance(x, tuple) and all(isinstance(n, str | type(None)) for n in x))
    )


def params_axes_to_logical(params_axes: Mapping[str, Any]) -> Any:
    """T5X `params_axes` ({..., 'kernel_axes': AxisMetadata}) → tree shaped like params with tuples of names."""

    def strip(tree: Any) -> Any:
        if _is_axes_leaf(tree):
            return _axes_names(tree)
        out = {}
        for key, value in tree.items():
            name = key[: -len("_axes")] if key.endswith("_axes") else key
            out[name] = strip(value)
        return out

    return strip(_unfreeze(params_axes))


@gin.configurable
class Partitioner:
    """Mesh + logical rules → NamedShardings; the only place that knows how arrays are laid out.

    Attributes:
      mesh: the ('data', 'model') mesh.
      rules: logical-axis rules, (logical name, mesh axis or None) pairs.
    """

    def __init__(
        self,
        num_partitions: int = 1,
        mesh_shape: Sequence[int] | None = None,
        logical_axis_rules: LogicalRules | None = None,
        devices: Sequence[jax.Device] | None = None,
        mesh: Mesh | None = None,
    ) -> None:
        self.mesh = mesh if mesh is not None else create_mesh(num_partitions, mesh_shape, devices)
        self.rules = tuple(logical_axis_rules or standard_logical_axis_rules())

    @property
    def data_size(self) -> int:
        return self.mesh.shape[DATA_AXIS]

    @property
    def model_size(self) -> int:
        return self.mesh.shape[MODEL_AXIS]

    # ---- logical names → specs -------------------------------------------------------------------------
    def logical_to_spec(
        self, names: Sequence[str | None], shape: Sequence[int] | None = None
    ) -> PartitionSpec:
        """PartitionSpec for one array; a mesh axis that does not divide its dimension falls back to replication."""
        spec = list(nn_partitioning.logical_to_mesh_axes(tuple(names), self.rules))
        if shape is not None:
            if len(shape) != len(spec):
                raise ValueError(
                    f"logical axes {tuple(names)} have {len(spec)} names but the array has shape {tuple(shape)}"
                )
            for i, axis in enumerate(spec):
                if axis is not None and shape[i] % self.mesh.shape[axis]:
                    logging.log_first_n(
                        logging.WARNING,
                        "dimension %d (size %d) of axes %s not divisible by mesh axis %r (size %d): replicated",
                        10,
                        i,
                        shape[i],
                        tuple(names),
                        axis,
                        self.mesh.shape[axis],
                    )
                    spec[i] = None
        return PartitionSpec(*spec)

    def sharding(self, spec: PartitionSpec) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def params_specs(self, params_axes: Mapping[str, Any], abstract_params: Any) -> Any:
        """PartitionSpecs shaped like `abstract_params` from T5X-style `params_axes`."""
        logical = params_axes_to_logical(params_axes)
        abstract_params = _unfreeze(abstract_params)
        flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
        specs = []
        for path, leaf in flat_params:
            node = logical
            try:
                for entry in path:
                    node = node[entry.key]
            except (KeyError, TypeError) as e:
                raise ValueError(
                    f"params_axes has no logical axes for parameter {jax.tree_util.keystr(path)}"
                ) from e
            specs.append(self.logical_to_spec(node, leaf.shape))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract_params), specs)

    def params_shardings(self, params_axes: Mapping[str, Any], abstract_params: Any) -> Any:
        return jax.tree.map(self.sharding, self.params_specs(params_axes, abstract_params))

    def optimizer_state_specs(
        self, optimizer: optax.GradientTransformation, abstract_params: Any, param_specs: Any
    ) -> Any:
        """Specs for `optimizer.init(params)`: params-shaped leaves follow their parameter.

        A leaf with the parameter's shape takes the parameter's spec; a factored moment (Adafactor's row/column
        statistics: the parameter's shape with one dimension removed) takes the spec without that dimension;
        anything else (counters, placeholders) is replicated.
        """
        abstract_params = _unfreeze(abstract_params)
        abstract_state = jax.eval_shape(optimizer.init, abstract_params)

        def leaf_spec(state_leaf: Any, param: Any, spec: PartitionSpec) -> PartitionSpec:
            shape = tuple(getattr(state_leaf, "shape", ()))
            pshape = tuple(param.shape)
            pspec = tuple(spec) + (None,) * (len(pshape) - len(tuple(spec)))
            if shape == pshape:
                return PartitionSpec(*pspec)
            if len(shape) == len(pshape) - 1:
                for i in reversed(range(len(pshape))):
                    if pshape[:i] + pshape[i + 1 :] == shape:
                        return PartitionSpec(*(pspec[:i] + pspec[i + 1 :]))
            return PartitionSpec()

        specs = optax.tree_map_params(
            optimizer,
            leaf_spec,
            abstract_state,
            abstract_params,
            param_specs,
            transform_non_params=lambda _: PartitionSpec(),
            is_leaf=lambda x: isinstance(x, PartitionSpec),
        )
        return specs

    # ---- batches ---------------------------------------------------------------------------------------
    def batch_spec(self, ndim: int) -> PartitionSpec:
        """Batch arrays [batch, ...]: leading axis over 'data', the rest replicated."""
        return PartitionSpec(DATA_AXIS, *([None] * (ndim - 1)))

    def batch_shardings(self, batch: Mapping[str, Any]) -> dict[str, NamedSharding]:
        return {k: self.sharding(self.batch_spec(np.ndim(v))) for k, v in batch.items()}

    def data_shards(self) -> tuple[int, int, int]:
        """(index, count, k): this process's input shard, the number of distinct shards, data rows per process.

        A process feeds the batch rows its devices hold (in mesh order; `jax.make_array_from_process_local_data`
        maps them to its rows of the global batch, contiguous or not). Processes holding the same set of 'data'
        rows feed the same shard: with model parallelism across processes (e.g. mesh (1, 8) over 2 processes)
        there is one shard and both processes read it; with data parallelism only, one shard per process. Shards
        are numbered by their first row; every process must hold the same number of rows, sets equal or disjoint.
        """
        if getattr(self, "_data_shards", None) is not None:
            return self._data_shards
        data_axis = self.mesh.axis_names.index(DATA_AXIS)
        held: dict[int, set[int]] = {}
        for idx, device in np.ndenumerate(self.mesh.devices):
            held.setdefault(device.process_index, set()).add(int(idx[data_axis]))
        distinct = sorted({frozenset(rows) for rows in held.values()}, key=min)
        sizes = {len(rows) for rows in distinct}
        if len(sizes) != 1 or sum(len(rows) for rows in distinct) != self.data_size:
            raise ValueError(
                f"mesh {dict(self.mesh.shape)} gives processes the 'data' rows "
                f"{ {p: sorted(r) for p, r in sorted(held.items())} }: every process must hold the same number of "
                "rows, and two processes the same rows or none in common"
            )
        mine = frozenset(held[jax.process_index()])
        self._data_shards = (distinct.index(mine), len(distinct), len(mine))
        return self._data_shards

    def local_batch_size(self, global_batch_size: int) -> int:
        """Examples this host feeds per step; checks that the batch splits evenly over the data axis."""
        if global_batch_size % self.data_size:
            raise ValueError(
                f"batch_size={global_batch_size} must be divisible by the data-parallel size {self.data_size}"
            )
        return global_batch_size // self.data_shards()[1]

    def shard_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Host-local numpy arrays [local_batch, ...] → global jax.Arrays [global_batch, ...] sharded over 'data'."""
        count = self.data_shards()[1]
        out = {}
        for key, value in local_batch.items():
            value = np.asarray(value)
            global_shape = (value.shape[0] * count,) + value.shape[1:]
            out[key] = jax.make_array_from_process_local_data(
                self.sharding(self.batch_spec(value.ndim)), value, global_shape
            )
        return out

    def shard_info(self) -> tuple[int, int]:
        """(index, count) of this host's shard of the input data (SeqIO `ShardInfo`); see `data_shards`."""
        index, count, _ = self.data_shards()
        return index, count

    # ---- activations -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def activation_context(self) -> Iterator[None]:
        """Mesh + rules in scope, so `nn.with_logical_constraint` inside the network constrains activations."""
        with jax.set_mesh(self.mesh), nn_partitioning.axis_rules(self.rules):
            yield


def put_tree(tree: Any, shardings: Any) -> Any:
    """Places a host tree of arrays with the given shardings (single- or multi-host)."""
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
        tree,
        shardings,
    )


def replicated_to_host(tree: Any) -> Any:
    """Numpy copy of replicated jax.Arrays (metrics, step); unlike jax.device_get it also works on multi-host."""
    return jax.tree.map(
        lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x),
        tree,
    )


def global_to_host(tree: Any) -> Any:
    """Fully replicated numpy copy of a tree of (possibly sharded, multi-host) jax.Arrays."""
    from jax.experimental import multihost_utils

    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(lambda x: np.asarray(jnp.asarray(x)), tree)
