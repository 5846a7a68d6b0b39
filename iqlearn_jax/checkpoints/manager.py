"""Orbax checkpoints of the train state in MODEL_DIR: save, keep the last K, resume, skip damaged ones.

Layout: MODEL_DIR/checkpoints/<step>/{state, meta}; `state` is the TrainState as a nested dict (step, params,
opt_state, rng) and `meta` a JSON dict with the data position (`batches_consumed`) and run facts. Orbax writes each
checkpoint to a temporary directory and renames it when complete, so a run killed mid-save leaves the previous
checkpoint as the newest complete one. A checkpoint that fails to restore is moved to
MODEL_DIR/checkpoints_damaged/ with a warning and the previous one is used.

Initial checkpoints (params only, optimizer state fresh, step 0) come from this project's Orbax layout, a T5X
checkpoint or a Hugging Face T5 directory (`load_initial_params`).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import time
from collections.abc import Mapping
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from iqlearn_jax.partitioning import replicated_to_host

CHECKPOINTS_SUBDIR = "checkpoints"
DAMAGED_SUBDIR = "checkpoints_damaged"


class CheckpointMismatchError(ValueError):
    """An initial checkpoint whose parameter names or shapes differ from the model's."""


class TrainCheckpointManager:
    """Saves and restores (TrainState, meta) pairs under MODEL_DIR/checkpoints."""

    def __init__(
        self, model_dir: str | os.PathLike, keep: int = 3, async_save: bool = True
    ) -> None:
        if keep < 1:
            raise ValueError(f"checkpoint keep must be >= 1, got {keep}")
        self.model_dir = pathlib.Path(model_dir).absolute()
        self.directory = self.model_dir / CHECKPOINTS_SUBDIR
        self._keep = keep
        self._async = async_save
        self._manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self._keep,
            create=True,
            enable_async_checkpointing=self._async,
            cleanup_tmp_directories=True,
        )
        return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, state: Any, meta: Mapping[str, Any]) -> None:
        """Saves at `state.step` (a no-op if that step is already saved). Asynchronous when enabled."""
        step = int(replicated_to_host(state.step))
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                meta=ocp.args.JsonSave(dict(meta, step=step, saved_at=time.time())),
            ),
            force=True,
        )
        logging.info("checkpoint for step %d being written to %s", step, self.directory / str(step))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """Newest checkpoint that restores cleanly as (state, meta), or None when there is none.

        Args:
          abstract_state: TrainState of jax.ShapeDtypeStruct with shardings (from trainer.abstract_train_state);
            the restored arrays get those shardings.
        """
        target = flax.serialization.to_state_dict(abstract_state)
        for step in reversed(self.all_steps()):
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                    ),
                )
                state = flax.serialization.from_state_dict(abstract_state, restored["state"])
                meta = dict(restored["meta"])
                if int(replicated_to_host(state.step)) != step:
                    raise ValueError(
                        f"state.step={int(state.step)} differs from directory step {step}"
                    )
                _check_finite(state.params, f"checkpoint step {step}")
                logging.info("restored checkpoint step %d from %s", step, self.directory)
                return state, meta
            except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
                moved = self._quarantine(step)
                logging.warning(
                    "checkpoint at step %d in %s is damaged (%s: %s); moved it to %s and falling back "
                    "to the previous checkpoint",
                    step,
                    self.directory,
                    type(e).__name__,
                    str(e).splitlines()[0][:300] if str(e) else "",
                    moved,
                )
        return None

    def _quarantine(self, step: int) -> pathlib.Path | None:
        """Moves a damaged step directory aside (never deletes it) so it is neither restored nor overwritten."""
        source = self.directory / str(step)
        if jax.process_index() != 0 or not source.exists():
            self._manager.reload()
            return None
        dest_dir = self.model_dir / DAMAGED_SUBDIR
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{step}-{int(time.time())}"
        shutil.move(str(source), str(dest))
        self._manager.reload()
        return dest


def _check_finite(params: Any, source: str) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if leaf.is_fully_addressable and not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(f"{source}: parameter {jax.tree_util.keystr(path)} holds NaN or Inf")


# ---- initial checkpoints --------------------------------------------------------------------------------------
def detect_format(path: str | os.PathLike) -> str:
    """'hf' (config.json + weights), 'orbax' (this project's MODEL_DIR / checkpoints / step dir) or 't5x'."""
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"initial checkpoint path {str(p)!r} does not exist")
    if (p / "config.json").exists():
        return "hf"
    if (p / CHECKPOINTS_SUBDIR).is_dir() or (p / "state").is_dir() and (p / "meta").is_dir():
        return "orbax"
    if p.is_dir() and any(c.name.isdigit() and (c / "state").is_dir() for c in p.iterdir()):
        return "orbax"
    return "t5x"


def _orbax_state_dir(path: pathlib.Path) -> pathlib.Path:
    if (path / "state").is_dir():
        return path / "state"
    root = path / CHECKPOINTS_SUBDIR if (path / CHECKPOINTS_SUBDIR).is_dir() else path
    steps = sorted(
        int(c.name) for c in root.iterdir() if c.name.isdigit() and (c / "state").is_dir()
    )
    if not steps:
        raise FileNotFoundError(f"no Orbax checkpoint (<step>/state) under {str(path)!r}")
    return root / str(steps[-1]) / "state"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    else:
        out[prefix] = tree
    return out


def check_params_match(params: Any, abstract_params: Any, source: str) -> None:
    """Raises CheckpointMismatchError naming missing / unexpected parameters and shape mismatches."""
    expected = {
        k: tuple(v.shape)
        for k, v in _flatten(flax.serialization.to_state_dict(abstract_params)).items()
    }
    found = {
        k: tuple(np.shape(v)) for k, v in _flatten(flax.serialization.to_state_dict(params)).items()
    }
    problems = [
        f"parameter {k}: model shape {expected[k]}, checkpoint shape {found[k]}"
        for k in sorted(expected.keys() & found.keys())
        if expected[k] != found[k]
    ]
    problems += [
        f"missing parameter {k} (model shape {expected[k]})"
        for k in sorted(expected.keys() - found.keys())
    ]
    problems += [
        f"unexpected parameter {k} (shape {found[k]})"
        for k in sorted(found.keys() - expected.keys())
    ]
    if problems:
        more = f"\n  ... and {len(problems) - 15} more" if len(problems) > 15 else ""
        raise CheckpointMismatchError(
            f"initial checkpoint {source!r} does not match the model ({len(problems)} problems):\n  "
            + "\n  ".join(problems[:15])
            + more
        )


def load_initial_params(
    path: str | os.PathLike, abstract_params: Any, params_shardings: Any, fmt: str = "auto"
) -> Any:
    """Params from an initial checkpoint, checked against the model and placed with `params_shardings`.

    Args:
      path: this project's MODEL_DIR (or its checkpoints/ or a step directory), a T5X checkpoint directory
        (legacy or Orbax layout), or a Hugging Face T5 directory (config.json + safetensors).
      abstract_params: the model's params as ShapeDtypeStructs (names and shapes to match).
      params_shardings: NamedShardings shaped like the params.
      fmt: 'auto', 'orbax', 't5x' or 'hf'.
    """
    path = pathlib.Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "orbax":
        restored = ocp.StandardCheckpointer().restore(_orbax_state_dir(path).absolute())
        params = restored["params"]
    elif fmt == "t5x":
        from iqlearn_jax.checkpoints import import_t5x_checkpoint

        params = import_t5x_checkpoint(str(path))
    elif fmt == "hf":
        from iqlearn_jax.checkpoints import import_hf_t5

        _, params = import_hf_t5(str(path))
    else:
        raise ValueError(f"initial checkpoint format must be auto, orbax, t5x or hf, got {fmt!r}")
    params = flax.serialization.to_state_dict(params)
    if set(params) == {"params"}:
        params = params["params"]
    check_params_match(params, abstract_params, str(path))
    params = jax.tree.map(
        lambda x, a: np.asarray(x, dtype=a.dtype),
        params,
        flax.serialization.to_state_dict(abstract_params),
    )
    params = flax.serialization.from_state_dict(abstract_params, params)
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx]),
        params,
        params_shardings,
    )
