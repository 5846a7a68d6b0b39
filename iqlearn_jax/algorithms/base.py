"""Training algorithms: which networks a run holds, how each is initialised and placed, and its pure step.

The trainer (`iqlearn_jax.trainer`) stays the ONE place that builds the train state and jits the step; it asks the
run's `Algorithm` for the pieces that differ:

    networks      None: `TrainState.params` is the model's plain parameter tree (offline objectives, online
                  IQLearn; checkpoints unchanged). A tuple of names: params is a dict {name: model params tree}
                  and opt_state a dict {name: optimizer state} over the *trainable* names only (a frozen network,
                  e.g. GAIL's reference policy, lives in params and is never updated).
    init_params / params_axes / init_opt_state / opt_state_specs   the state, placed by the same logical rules
    make_step     the pure `(TrainState, batch) -> (TrainState, metrics)`; metrics always hold 'loss' and
                  'grad_norm' (and per network '<name>_loss', '<name>_grad_norm' for several networks)
    policy_params the model params used for evaluation / decoding
    fill_from_initial   the state's params with every network the algorithm initialises from an initial
                  checkpoint filled from it

New algorithms are added with `register_algorithm` and selected in gin with `train.train.algorithm = @Name()`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax
from flax.core import frozen_dict

_REGISTRY: dict[str, type] = {}

# Distinct fold_in constants of the step key fold_in(state.rng, state.step): the offline dropout key IS that step
# key (so an algorithm that adds online samples never changes it); sampling and the policy batch's dropout use
# their own streams. Large constants keep clear of gradient-accumulation folds (0 .. num_microbatches - 1).
SAMPLING_STREAM = 0x53414D50  # "SAMP"
POLICY_DROPOUT_STREAM = 0x504F4C49  # "POLI"
VALUE_DROPOUT_STREAM = 0x56414C55  # "VALU"
DISCRIMINATOR_DROPOUT_STREAM = 0x44495343  # "DISC"


def register_algorithm(name: str) -> Callable[[type], type]:
    """Class decorator: register an `Algorithm` subclass under `name` (also its gin name)."""

    def decorator(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"algorithm {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorator


def registered_algorithms() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_algorithm(name: str, **kwargs: Any) -> Algorithm:
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; registered: {registered_algorithms()}")
    return _REGISTRY[name](**kwargs)


def unfreeze(tree: Any) -> Any:
    return frozen_dict.unfreeze(tree) if isinstance(tree, frozen_dict.FrozenDict) else tree


class Algorithm:
    """The offline algorithm (one network, the model's objective on the data batch); base of all others."""

    name = "offline"
    networks: tuple[str, ...] | None = None
    trainable: tuple[str, ...] = ()
    requires_initial_checkpoint = False

    # ---- configuration checks (Python, before MODEL_DIR is touched) ----------------------------------------
    def bind(
        self,
        model: Any,
        task_feature_lengths: Mapping[str, int],
        *,
        num_microbatches: int = 1,
        pack: bool = False,
    ) -> Algorithm:
        """Checks the configuration against the run and returns the algorithm ready to build (may be self).

        Raises ValueError naming the bad value.
        """
        del model, task_feature_lengths, num_microbatches, pack
        return self

    # ---- state ----------------------------------------------------------------------------------------------
    def init_params(
        self, model: Any, rng: jax.Array, input_shapes: Mapping, input_types: Mapping
    ) -> Any:
        variables = model.get_initial_variables(rng, input_shapes, input_types)
        return self.expand(unfreeze(variables["params"]))

    def expand(self, model_params: Any) -> Any:
        """The algorithm's params from one model params tree (every network a copy of it)."""
        if self.networks is None:
            return model_params
        return {name: model_params for name in self.networks}

    def params_axes(self, model_axes: Any) -> Any:
        """The algorithm's `params_axes` tree from the model's."""
        return self.expand(unfreeze(model_axes))

    def optimizer_for(self, optimizer: optax.GradientTransformation, network: str) -> Any:
        """The optimizer of one trainable network (default: the run's optimizer for all)."""
        del network
        return optimizer

    def init_opt_state(self, optimizer: optax.GradientTransformation, params: Any) -> Any:
        if self.networks is None:
            return optimizer.init(params)
        return {n: self.optimizer_for(optimizer, n).init(params[n]) for n in self.trainable}

    def opt_state_specs(
        self,
        partitioner: Any,
        optimizer: optax.GradientTransformation,
        abstract_params: Any,
        specs: Any,
    ) -> Any:
        if self.networks is None:
            return partitioner.optimizer_state_specs(optimizer, abstract_params, specs)
        return {
            n: partitioner.optimizer_state_specs(
                self.optimizer_for(optimizer, n), abstract_params[n], specs[n]
            )
            for n in self.trainable
        }

    def policy_params(self, params: Any) -> Any:
        """The model params tree that evaluation and decoding use."""
        return params if self.networks is None else params["policy"]

    def fill_from_initial(self, params: Any, initial_model_params: Any) -> Any:
        """`params` with every network initialised from the initial checkpoint replaced by (a copy of) it."""
        del params
        return self.expand(initial_model_params)

    # ---- the step -------------------------------------------------------------------------------------------
    def make_step(
        self,
        model: Any,
        optimizer: optax.GradientTransformation,
        num_microbatches: int = 1,
        learning_rate_fn: Callable[[Any], Any] | None = None,
        microbatch_sharding: Any = None,
    ) -> Callable:
        from iqlearn_jax import trainer

        return trainer.make_train_step(
            model, optimizer, num_microbatches, learning_rate_fn, microbatch_sharding
        )


register_algorithm("offline")(Algorithm)


# ---- used by the training loop (iqlearn_jax.train) --------------------------------------------------------------
def prepare(
    algorithm: Algorithm | None,
    model: Any,
    task_feature_lengths: Mapping[str, int],
    *,
    num_microbatches: int,
    pack: bool,
    initial_checkpoint_path: str | None,
    model_dir: str | None,
) -> Algorithm | None:
    """The run's algorithm bound to its model and task (None = offline), checked before MODEL_DIR is written.

    Raises ConfigError naming the bad value; reads MODEL_DIR only to see whether it already holds a checkpoint.
    """
    from iqlearn_jax.gin_utils import ConfigError

    if algorithm is None:
        return None
    if not isinstance(algorithm, Algorithm):
        raise ConfigError(
            f"train.algorithm must be an iqlearn_jax.algorithms.Algorithm, got {algorithm!r}"
        )
    try:
        bound = algorithm.bind(
            model, task_feature_lengths, num_microbatches=num_microbatches, pack=pack
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if bound.requires_initial_checkpoint and not initial_checkpoint_path:
        resuming = False
        if model_dir:
            ckpts = pathlib.Path(model_dir).expanduser() / "checkpoints"
            resuming = ckpts.is_dir() and any(c.name.isdigit() for c in ckpts.iterdir())
        if not resuming:
            raise ConfigError(
                f"{type(bound).__name__} initialises its networks from an initial checkpoint, but "
                "train.initial_checkpoint_path is not set (got None); point it at an MLE-trained MODEL_DIR, "
                f"a T5X or a Hugging Face checkpoint, or set {type(bound).__name__}.require_initial_checkpoint "
                "= False to start from random weights"
            )
    return bound


def policy_view(algorithm: Algorithm | None, tree: Any) -> Any:
    """The model-params part of a params-shaped tree (params, shardings, abstract params) for eval/decoding."""
    return tree if algorithm is None else algorithm.policy_params(tree)


def fill_from_initial(
    algorithm: Algorithm | None, initial_model_params: Any, shardings: Any
) -> Any:
    """The state's params from an initial checkpoint's model params: every network the algorithm initialises
    from it gets its own copy (distinct buffers, placed with `shardings`, the state's params shardings)."""
    if algorithm is None or algorithm.networks is None:
        return initial_model_params
    copies = jax.jit(algorithm.expand, out_shardings=shardings)(initial_model_params)
    return jax.tree.map(lambda x: x.copy(), copies)
