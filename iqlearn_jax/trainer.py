"""Train state and the pure train / eval steps, jitted with shardings in ONE place (`build_train_step`).

The same functions serve the training loop (`iqlearn_jax.train`), the ahead-of-time compiler (`iqlearn_jax.aot`)
and the benchmarks; there is no second copy of the step:

    shapes = model_feature_shapes(model, task_feature_lengths, batch_size)          # {feature: (shape, dtype)}
    abstract_state, state_shardings = abstract_train_state(model, optimizer, partitioner, shapes)
    step_fn = build_train_step(model, optimizer, partitioner, state_shardings, num_microbatches=2)
    compiled = step_fn.lower(abstract_state, abstract_batch(shapes, partitioner)).compile()   # no params needed
    state = init_train_state(model, optimizer, partitioner, shapes, seed=0)                  # real, sharded
    state, metrics = step_fn(state, partitioner.shard_batch(numpy_batch))

A model is anything with T5X's interface: `get_initial_variables(rng, input_shapes, input_types)` → {'params',
'params_axes'}, `loss_fn(params, batch, dropout_rng, step=None)` → (scalar loss, metrics dict of scalars) and
`eval_fn(params, batch)` → (loss, metrics).

Algorithms with their own step or several networks (online IQLearn, GAIL; `iqlearn_jax.algorithms`) pass
`algorithm=` to the same functions: the algorithm says how the params / optimizer state are laid out (one model
params tree, or a dict keyed by network name) and supplies the pure step; placement and jit stay here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import frozen_dict
from jax.sharding import NamedSharding, PartitionSpec

from iqlearn_jax.partitioning import Partitioner

FeatureShapes = Mapping[str, tuple[tuple[int, ...], Any]]


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position.

    step: int32 scalar, number of optimizer updates applied so far.
    params: parameter tree (float32): the model's, or for several networks (GAIL) a dict {network name: model
      params tree} including frozen networks (GAIL's 'reference'), see `iqlearn_jax.algorithms`.
    opt_state: optax state (for several networks a dict over the trainable network names).
    rng: raw uint32[2] PRNG key; the dropout key of step s is fold_in(rng, s), so it never changes.
    nonfinite_step: int32 scalar, -1 while every step so far had a finite loss and grad_norm; else the first
      (1-based) step whose loss or grad_norm was NaN/Inf (`guard_nonfinite`). A checkpointed state always has -1.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    nonfinite_step: jax.Array


# ---- shapes -------------------------------------------------------------------------------------------------
def model_feature_shapes(
    model: Any,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    pack: bool = False,
    feature_converter_cls: Any = None,
) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{model feature: ((batch, length), numpy dtype)} as the model's SeqIO feature converter produces them."""
    import seqio

    cls = feature_converter_cls or getattr(
        model, "FEATURE_CONVERTER_CLS", seqio.EncDecFeatureConverter
    )
    converter = cls(pack=pack)
    lengths = converter.get_model_feature_lengths(dict(task_feature_lengths))
    features = dict(converter.MODEL_FEATURES)
    if pack:
        features.update(getattr(converter, "PACKING_FEATURE_DTYPES", {}))
    out = {}
    for name, feature in features.items():
        dtype = getattr(feature, "dtype", feature)
        dtype = np.dtype(getattr(dtype, "as_numpy_dtype", dtype))
        out[name] = ((batch_size, int(lengths[name])), dtype)
    return out


def abstract_batch(
    shapes: FeatureShapes, partitioner: Partitioner
) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of a global batch, sharded over 'data'."""
    return {
        k: jax.ShapeDtypeStruct(s, d, sharding=partitioner.sharding(partitioner.batch_spec(len(s))))
        for k, (s, d) in shapes.items()
    }


def _input_shapes_and_types(shapes: FeatureShapes) -> tuple[dict, dict]:
    return {k: tuple(s) for k, (s, _) in shapes.items()}, {
        k: jnp.dtype(d) for k, (_, d) in shapes.items()
    }


def _unfreeze(tree: Any) -> Any:
    return frozen_dict.unfreeze(tree) if isinstance(tree, frozen_dict.FrozenDict) else tree


# ---- state ----------------------------------------------------------------------------------------------------
def _init_fn(
    model: Any,
    optimizer: optax.GradientTransformation,
    shapes: FeatureShapes,
    seed: int,
    algorithm: Any = None,
):
    input_shapes, input_types = _input_shapes_and_types(shapes)

    def init(seed_array: jax.Array) -> TrainState:
        key = jax.random.PRNGKey(seed_array)
        init_rng, train_rng = jax.random.split(key)
        if algorithm is None:
            variables = model.get_initial_variables(init_rng, input_shapes, input_types)
            params = _unfreeze(variables["params"])
            opt_state = optimizer.init(params)
        else:
            params = algorithm.init_params(model, init_rng, input_shapes, input_types)
            opt_state = algorithm.init_opt_state(optimizer, params)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=opt_state,
            rng=train_rng,
            nonfinite_step=jnp.full((), -1, jnp.int32),
        )

    return init


def params_axes(model: Any, shapes: FeatureShapes, algorithm: Any = None) -> Any:
    """The model's `params_axes` tree (the algorithm's, shaped like its params), computed abstractly."""
    input_shapes, input_types = _input_shapes_and_types(shapes)
    variables = jax.eval_shape(
        lambda: model.get_initial_variables(jax.random.PRNGKey(0), input_shapes, input_types)
    )
    if "params_axes" not in variables:
        raise ValueError(
            "model.get_initial_variables returned no 'params_axes' (T5X's param_with_axes)"
        )
    if algorithm is not None:
        return algorithm.params_axes(variables["params_axes"])
    return variables["params_axes"]


def train_state_shardings(
    model: Any,
    optimizer: optax.GradientTransformation,
    partitioner: Partitioner,
    abstract_state: TrainState,
    shapes: FeatureShapes,
    algorithm: Any = None,
) -> TrainState:
    """NamedShardings for every leaf of the train state (params by logical axes, optimizer state alike)."""
    param_specs = partitioner.params_specs(
        params_axes(model, shapes, algorithm), abstract_state.params
    )
    if algorithm is None:
        opt_specs = partitioner.optimizer_state_specs(optimizer, abstract_state.params, param_specs)
    else:
        opt_specs = algorithm.opt_state_specs(
            partitioner, optimizer, abstract_state.params, param_specs
        )
    specs = TrainState(
        step=PartitionSpec(),
        params=param_specs,
        opt_state=opt_specs,
        rng=PartitionSpec(),
        nonfinite_step=PartitionSpec(),
    )
    return jax.tree.map(partitioner.sharding, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def abstract_train_state(
    model: Any,
    optimizer: optax.GradientTransformation,
    partitioner: Partitioner,
    shapes: FeatureShapes,
    seed: int = 0,
    algorithm: Any = None,
) -> tuple[TrainState, TrainState]:
    """(abstract state of ShapeDtypeStructs carrying their shardings, state shardings) via jax.eval_shape."""
    abstract = jax.eval_shape(_init_fn(model, optimizer, shapes, seed, algorithm), np.int32(seed))
    shardings = train_state_shardings(model, optimizer, partitioner, abstract, shapes, algorithm)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return abstract, shardings


def init_train_state(
    model: Any,
    optimizer: optax.GradientTransformation,
    partitioner: Partitioner,
    shapes: FeatureShapes,
    seed: int = 0,
    state_shardings: TrainState | None = None,
    algorithm: Any = None,
) -> TrainState:
    """Initialises params and optimizer state directly into their shardings (jit with out_shardings)."""
    if state_shardings is None:
        _, state_shardings = abstract_train_state(
            model, optimizer, partitioner, shapes, seed, algorithm
        )
    init = _init_fn(model, optimizer, shapes, seed, algorithm)
    with partitioner.activation_context():
        return jax.jit(init, out_shardings=state_shardings)(np.int32(seed))


# ---- steps ----------------------------------------------------------------------------------------------------
def _microbatch_weight_mode(model: Any) -> str:
    """How per-microbatch losses combine into the full-batch loss, from the objective's normaliser."""
    factor = getattr(
        getattr(model, "objective", None), "loss_normalizing_factor", "NUM_REAL_TARGET_TOKENS"
    )
    if factor == "NUM_REAL_TARGET_TOKENS":
        return "tokens"  # L = Σ S_i / Σ n_i = Σ (n_i / N) L_i
    if factor is None or isinstance(factor, int | float):
        return "sum"  # L = Σ S_i / c = Σ L_i
    return "mean"  # equal-size microbatches: L = mean_i L_i


def make_train_step(
    model: Any,
    optimizer: optax.GradientTransformation,
    num_microbatches: int = 1,
    learning_rate_fn: Callable[[Any], Any] | None = None,
    microbatch_sharding: Any = None,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure train step `(state, batch) -> (new_state, metrics)`.

    With `num_microbatches` M > 1 the batch [B, ...] is split into M microbatches of B/M examples (example j goes
    to microbatch j mod M, so every data shard contributes to every microbatch) and the gradients are combined so
    the update equals the full-batch one: weighted by real target tokens for the default NUM_REAL_TARGET_TOKENS
    normaliser, summed for a fixed normaliser, averaged otherwise. Metrics: the model's (combined the same way)
    plus grad_norm, and learning_rate when `learning_rate_fn` is given.
    """
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
    mode = _microbatch_weight_mode(model)

    def grad_fn(params, batch, rng, step):
        (loss, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
            params, batch, rng, step=step
        )
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in dict(metrics).items()}
        metrics["loss"] = jnp.asarray(loss, jnp.float32)
        return grads, metrics

    def step_fn(state: TrainState, batch: Mapping[str, jax.Array]):
        dropout_rng = jax.random.fold_in(state.rng, state.step)
        batch = dict(batch)
        if num_microbatches == 1:
            grads, metrics = grad_fn(state.params, batch, dropout_rng, state.step)
        else:
            size = next(iter(batch.values())).shape[0]
            if size % num_microbatches:
                raise ValueError(
                    f"batch size {size} is not divisible by num_microbatches={num_microbatches}"
                )

            def split(x):
                x = x.reshape((size // num_microbatches, num_microbatches) + x.shape[1:])
                x = jnp.swapaxes(x, 0, 1)
                if microbatch_sharding is not None:
                    x = jax.lax.with_sharding_constraint(x, microbatch_sharding(x.ndim))
                return x

            micro = jax.tree.map(split, batch)
            tokens = jnp.sum(micro["decoder_loss_weights"] > 0, axis=tuple(range(1, 3))).astype(
                jnp.float32
            )
            if mode == "tokens":
                weights = tokens / jnp.maximum(jnp.sum(tokens), 1.0)
            elif mode == "sum":
                weights = jnp.ones((num_microbatches,), jnp.float32)
            else:
                weights = jnp.full((num_microbatches,), 1.0 / num_microbatches, jnp.float32)

            def body(carry, inputs):
                acc_grads, acc_metrics = carry
                index, mb, w = inputs
                grads, metrics = grad_fn(
                    state.params, mb, jax.random.fold_in(dropout_rng, index), state.step
                )
                acc_grads = jax.tree.map(lambda a, g: a + w * g, acc_grads, grads)
                acc_metrics = {
                    k: acc_metrics[k] + (v if k.startswith("num_") else w * v)
                    for k, v in metrics.items()
                }
                return (acc_grads, acc_metrics), None

            zero_grads = jax.tree.map(jnp.zeros_like, state.params)
            metric_shapes = jax.eval_shape(
                lambda: grad_fn(
                    state.params, jax.tree.map(lambda x: x[0], micro), dropout_rng, state.step
                )
            )[1]
            zero_metrics = {k: jnp.zeros(v.shape, v.dtype) for k, v in metric_shapes.items()}
            (grads, metrics), _ = jax.lax.scan(
                body,
                (zero_grads, zero_metrics),
                (jnp.arange(num_microbatches), micro, weights),
            )
        grad_norm = optax.global_norm(grads)
        updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = grad_norm.astype(jnp.float32)
        if learning_rate_fn is not None:
            metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
        new_state = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt_state)
        return new_state, metrics

    return step_fn


GUARDED_METRICS = ("loss", "grad_norm")


def guard_nonfinite(
    step_fn: Callable[[Any, Mapping[str, jax.Array]], tuple[Any, dict[str, jax.Array]]],
) -> Callable[[Any, Mapping[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]:
    """Wraps any algorithm's pure step `(state, batch) -> (new_state, metrics)` with the NaN/Inf guard.

    The state needs `step` and `nonfinite_step` (int32 scalars) and `.replace`; the metrics need 'loss' and
    'grad_norm'. When either is NaN/Inf, or any floating-point array of the updated state (params, optimizer
    state: e.g. after a NaN learning rate), or an earlier step already was bad (`state.nonfinite_step >= 0`),
    every other field of the state (params, optimizer state(s), rng, ...) stays as it was: only `step` advances,
    and `nonfinite_step` records the first bad step (1-based, = the new `step`). The host reads `nonfinite_step`
    when it reads metrics (log, evaluation and checkpoint points), so no per-step host sync is needed. Cost: one
    fused elementwise pass over the state (the isfinite reduction and the select).
    """

    def all_finite(tree: Any) -> jax.Array:
        checks = [
            jnp.all(jnp.isfinite(x))
            for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
        ]
        return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)

    def guarded(state: Any, batch: Mapping[str, jax.Array]) -> tuple[Any, dict[str, jax.Array]]:
        new_state, metrics = step_fn(state, batch)
        finite = all_finite([metrics[k] for k in GUARDED_METRICS]) & all_finite(
            new_state.replace(step=None, nonfinite_step=None)
        )
        accept = finite & (state.nonfinite_step < 0)
        kept = jax.tree.map(lambda new, old: jnp.where(accept, new, old), new_state, state)
        first_bad = jnp.where(
            (state.nonfinite_step < 0) & ~finite, new_state.step, state.nonfinite_step
        )
        kept = kept.replace(step=new_state.step, nonfinite_step=first_bad.astype(jnp.int32))
        return kept, metrics

    return guarded


def make_eval_step(model: Any) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """The pure eval step `(params, batch) -> metrics` (no dropout); metrics include 'loss'."""

    def eval_fn(params, batch):
        loss, metrics = model.eval_fn(params, dict(batch))
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in dict(metrics).items()}
        metrics["loss"] = jnp.asarray(loss, jnp.float32)
        return metrics

    return eval_fn


class PartitionedStep:
    """A jitted step that traces and runs with the partitioner's mesh and logical rules in scope."""

    def __init__(self, fn: Callable, partitioner: Partitioner, **jit_kwargs: Any) -> None:
        self.partitioner = partitioner
        self.jitted = jax.jit(fn, **jit_kwargs)

    def __call__(self, *args: Any) -> Any:
        with self.partitioner.activation_context():
            return self.jitted(*args)

    def lower(self, *args: Any) -> Any:
        """`jax.jit(...).lower` on abstract (ShapeDtypeStruct) or real arguments; `.compile()` the result."""
        with self.partitioner.activation_context():
            return self.jitted.lower(*args)


def build_train_step(
    model: Any,
    optimizer: optax.GradientTransformation,
    partitioner: Partitioner,
    state_shardings: TrainState,
    num_microbatches: int = 1,
    learning_rate_fn: Callable[[Any], Any] | None = None,
    donate_state: bool = True,
    algorithm: Any = None,
) -> PartitionedStep:
    """THE jitted train step: in_shardings (state, batch over 'data'), out_shardings (state, replicated
    metrics), state donated. With `algorithm`, its pure step (`algorithm.make_step`) instead of the offline one.
    Every step is wrapped in `guard_nonfinite`: a NaN/Inf loss or grad_norm leaves the state as it was (only
    `step` advances) and records the step in `state.nonfinite_step`."""
    batch_sharding = partitioner.sharding(PartitionSpec("data"))
    replicated = partitioner.replicated()

    def microbatch_sharding(ndim: int) -> NamedSharding:
        return partitioner.sharding(PartitionSpec(None, "data", *([None] * (ndim - 2))))

    make = make_train_step if algorithm is None else algorithm.make_step
    fn = guard_nonfinite(
        make(model, optimizer, num_microbatches, learning_rate_fn, microbatch_sharding)
    )
    return PartitionedStep(
        fn,
        partitioner,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,) if donate_state else (),
    )


def build_eval_step(model: Any, partitioner: Partitioner, params_shardings: Any) -> PartitionedStep:
    """THE jitted eval step: (params, batch) → replicated metrics."""
    return PartitionedStep(
        make_eval_step(model),
        partitioner,
        in_shardings=(params_shardings, partitioner.sharding(PartitionSpec("data"))),
        out_shardings=partitioner.replicated(),
    )
