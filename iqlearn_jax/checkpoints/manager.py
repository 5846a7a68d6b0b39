"""Orbax checkpoints of the train state in MODEL_DIR: save, keep the last K, resume, skip damaged ones.

Layout: MODEL_DIR/checkpoints/<step>/{state, meta}; `state` is the TrainState as a nested dict (step, params,
opt_state, rng) and `meta` a JSON dict with the data position (`batches_consumed`) and run facts. Orbax writes each
checkpoint to a temporary directory and renames it when complete, so a run killed mid-save leaves the previous
checkpoint as the newest complete one.

Resuming (`restore_latest`) tells two failures apart. A *mismatched* checkpoint is readable but holds another
model, optimizer, task or batch size than the configured run (names and shapes compared from Orbax's metadata,
before any array is read): ConfigError (exit 2), nothing moved. A *damaged* one cannot be read: it is moved to
MODEL_DIR/checkpoints_damaged/ with a warning and the previous one is used; if none is left, the run refuses to
start from scratch unless `train.allow_fresh_start_over_damaged=True`.

Initial checkpoints (params only, optimizer state fresh, step 0, from any supported format) are read by
`initial.py`.
"""

from __future__ import annotations

import logging as py_logging
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

from iqlearn_jax import distributed
from iqlearn_jax.gin_utils import ConfigError
from iqlearn_jax.partitioning import replicated_to_host

CHECKPOINTS_SUBDIR = "checkpoints"
DAMAGED_SUBDIR = "checkpoints_damaged"
STATE_ITEM = "state"
# The data iterator's position (iqlearn_jax.data_pipeline), one folder per process.
DATA_ITEM = "data"
# How many differing arrays a mismatch message lists.
MAX_LISTED_DIFFERENCES = 10


class CheckpointMismatchError(ConfigError):
    """A checkpoint (initial, or in MODEL_DIR) whose array names or shapes differ from the configured ones."""


class ResumeMismatchError(ConfigError):
    """MODEL_DIR's checkpoint was saved by a run with another task or batch size."""


class NoUsableCheckpointError(ConfigError):
    """MODEL_DIR has checkpoints but none of them can be restored (and a fresh start was not allowed)."""


class CheckpointFormatError(ConfigError):
    """`initial_checkpoint_path` is not in any format the detector knows."""


class _OrbaxManager(ocp.CheckpointManager):
    """Orbax's CheckpointManager that never asks jax's preemption sync point.

    Orbax asks `multihost_utils.reached_preemption_sync_point(step)` when saving and, on process 0, again from its
    save_finalize thread with the step just committed, while the train loop is already further on. jax's sync
    manager keeps only the last step it was given and reports that one when a preemption notice arrives: process 0
    then reports a step it has passed, the agreed stop step (largest reported + 1) can be one it has already passed,
    and the other processes stop and save at it alone (the checkpoint is lost, the job hangs until killed). The
    train loop (`preemption.PreemptionGuard`) is the only caller; saves are forced, so Orbax uses the answer only
    for its statistics.
    """

    def reached_preemption(self, step: int) -> bool:
        return False


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
        return _OrbaxManager(
            self.directory, options=options, item_names=("state", "meta", DATA_ITEM)
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(
        self, state: Any, meta: Mapping[str, Any], data: Any = None, step: int | None = None
    ) -> None:
        """Saves at `step` (default: read from `state.step`, which waits for the device); a no-op if that step is
        already saved. Asynchronous when enabled, except `data` (a data_pipeline.TrainIterator, item 'data'),
        whose position is written before this returns."""
        step = int(replicated_to_host(state.step)) if step is None else int(step)
        if step in self._manager.all_steps():
            return
        items = dict(
            state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
            meta=ocp.args.JsonSave(dict(meta, step=step, saved_at=time.time())),
        )
        if data is not None:
            from iqlearn_jax.data_pipeline import DataIteratorSave

            items[DATA_ITEM] = DataIteratorSave(data)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        logging.info("checkpoint for step %d being written to %s", step, self.directory / str(step))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def restore_data(self, step: int, iterator: Any) -> bool:
        """Restores `iterator` (a data_pipeline.TrainIterator) to its position at checkpoint `step`.

        Returns False when that checkpoint has no usable data item (saved before data checkpointing, by a
        pipeline tf.data cannot checkpoint, with another process count, or unreadable): the caller replays.
        """
        if not (self.directory / str(step) / DATA_ITEM).is_dir():
            return False
        from iqlearn_jax.data_pipeline import DataIteratorRestore

        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{DATA_ITEM: DataIteratorRestore(iterator)})
            )
        except Exception as e:  # noqa: BLE001 - unreadable or another process count: replaying is still exact
            logging.warning("data position of checkpoint %d not restored: %s", step, _first_line(e))
            return False
        return bool(restored[DATA_ITEM])

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def restore_latest(
        self,
        abstract_state: Any,
        expected_meta: Mapping[str, Any] | None = None,
        allow_fresh_start: bool = False,
    ) -> tuple[Any, dict[str, Any]] | None:
        """Newest checkpoint that restores cleanly as (state, meta), or None when there is none.

        Each checkpoint, newest first, is first compared with the configured run: its stored tree (names and
        shapes of every array, from Orbax's metadata) against `abstract_state`, and its saved meta against
        `expected_meta`. A difference is a *mismatch* (another model, optimizer, task or batch size): it raises
        `CheckpointMismatchError` / `ResumeMismatchError` (ConfigError, exit 2) and nothing is moved. A checkpoint
        that cannot be read (metadata or arrays unreadable, incomplete, step disagreeing with its directory, NaN/Inf
        parameters) is *damaged*: the next older one is tried, and the damaged ones newer than the restored one
        are moved to MODEL_DIR/checkpoints_damaged/ (never deleted). When checkpoints exist but none restores,
        nothing is moved and `NoUsableCheckpointError` is raised, unless `allow_fresh_start` (then the damaged
        ones are moved aside and None is returned: the caller starts from scratch).

        Args:
          abstract_state: TrainState of jax.ShapeDtypeStruct with shardings (from trainer.abstract_train_state);
            the restored arrays get those shardings.
          expected_meta: run facts that must equal the saved meta (e.g. task, batch_size); a key absent from a
            saved meta is not compared.
          allow_fresh_start: see above.
        """
        target = flax.serialization.to_state_dict(abstract_state)
        damaged: list[tuple[int, str]] = []
        restored_pair = None
        for step in reversed(self.all_steps()):
            try:
                saved_specs = self._saved_specs(step)
            except Exception as e:  # noqa: BLE001 - unreadable metadata: this checkpoint is damaged
                damaged.append((step, _first_line(e)))
                continue
            check_state_matches(saved_specs, target, self.directory / str(step))
            try:
                meta = self._restore_meta(step)
            except Exception as e:  # noqa: BLE001
                damaged.append((step, _first_line(e)))
                continue
            check_meta_matches(meta, expected_meta or {}, self.directory / str(step))
            try:
                with _quiet_orbax_failures():
                    restored = self._manager.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                        ),
                    )
                state = flax.serialization.from_state_dict(abstract_state, restored["state"])
                if int(replicated_to_host(state.step)) != step:
                    raise ValueError(
                        f"state.step={int(replicated_to_host(state.step))} differs from directory step {step}"
                    )
                _check_finite(state.params, f"checkpoint step {step}")
                failure = None
            except Exception as e:  # noqa: BLE001 - any failure to read a matching checkpoint means damage
                failure = _first_line(e)
            # Each process reads (and checks) its own shards: damage seen by any process counts for all of them.
            if distributed.any_process(failure is not None):
                damaged.append((step, failure or "damaged (seen by another process)"))
                continue
            restored_pair = (state, dict(restored["meta"]))
            break
        if restored_pair is None and damaged and not allow_fresh_start:
            listing = "; ".join(f"step {s}: {why}" for s, why in damaged)
            raise NoUsableCheckpointError(
                f"MODEL_DIR {str(self.model_dir)!r} has {len(damaged)} checkpoint(s) and none can be restored "
                f"({listing}). Nothing was moved. To set them aside and train from scratch in this MODEL_DIR, "
                "pass --gin.train.train.allow_fresh_start_over_damaged=True (or use a new MODEL_DIR)."
            )
        for step, why in damaged:
            moved = self._quarantine(step)
            logging.warning(
                "checkpoint at step %d in %s is damaged (%s); moved it to %s",
                step,
                self.directory,
                why,
                moved,
            )
        if restored_pair is not None:
            logging.info(
                "restored checkpoint step %d from %s", restored_pair[1].get("step"), self.directory
            )
        return restored_pair

    def _saved_specs(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """{'params/…/kernel': (shape, dtype)} of a saved state item, from Orbax's metadata (no array is read)."""
        metadata = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / STATE_ITEM)
        tree = getattr(metadata, "tree", metadata)
        return tree_specs(tree)

    def _restore_meta(self, step: int) -> dict[str, Any]:
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"] or {})

    def _quarantine(self, step: int) -> pathlib.Path | None:
        """Moves a damaged step directory aside (never deletes it) so it is neither restored nor overwritten."""
        source, dest = self.directory / str(step), None
        if jax.process_index() == 0 and source.exists():
            dest_dir = self.model_dir / DAMAGED_SUBDIR
            dest_dir.mkdir(parents=True, exist_ok=True)
            dest = dest_dir / f"{step}-{int(time.time())}"
            shutil.move(str(source), str(dest))
        distributed.barrier(f"quarantine_{step}")  # every process sees the move before it reloads
        self._manager.reload()
        return dest


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def tree_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{'params/encoder/…/kernel': (shape, dtype name)} of every leaf of a (state-dict) tree of arrays,
    ShapeDtypeStructs or Orbax ArrayMetadata."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = getattr(leaf, "shape", None)
        shape = tuple(np.shape(leaf)) if shape is None else tuple(shape)
        dtype = getattr(leaf, "dtype", None)
        out["/".join(_key_name(k) for k in path)] = (shape, str(np.dtype(dtype)) if dtype else "?")
    return out


def state_differences(
    saved: Mapping[str, tuple[tuple[int, ...], str]],
    expected: Mapping[str, tuple[tuple[int, ...], str]],
) -> list[str]:
    """Shape differences, then arrays only configured, then arrays only saved; parameters before optimizer state."""

    def order(name: str) -> tuple[bool, str]:
        return (not name.startswith("params"), name)

    out = [
        f"{k}: checkpoint {saved[k][0]}, configured {expected[k][0]}"
        for k in sorted(saved.keys() & expected.keys(), key=order)
        if saved[k][0] != expected[k][0]
    ]
    out += [
        f"{k}: configured {expected[k][0]}, not in the checkpoint"
        for k in sorted(expected.keys() - saved.keys(), key=order)
    ]
    out += [
        f"{k}: checkpoint {saved[k][0]}, not in the configured state"
        for k in sorted(saved.keys() - expected.keys(), key=order)
    ]
    return out


def check_state_matches(
    saved_specs: Mapping[str, tuple[tuple[int, ...], str]], target: Any, where: pathlib.Path
) -> None:
    """Raises CheckpointMismatchError naming the first differing arrays (shapes on both sides)."""
    expected = tree_specs(target)
    problems = state_differences(saved_specs, expected)
    if problems:
        more = (
            f"\n  ... and {len(problems) - MAX_LISTED_DIFFERENCES} more"
            if len(problems) > MAX_LISTED_DIFFERENCES
            else ""
        )
        raise CheckpointMismatchError(
            f"checkpoint {str(where)!r} does not match the configured model/optimizer "
            f"({len(problems)} differing arrays):\n  "
            + "\n  ".join(problems[:MAX_LISTED_DIFFERENCES])
            + more
            + "\nNothing in MODEL_DIR was changed. Train the changed model in a new MODEL_DIR, or run with the "
            "configuration this MODEL_DIR was trained with (its config.gin)."
        )
    cast = sorted(
        k for k in saved_specs.keys() & expected.keys() if saved_specs[k][1] != expected[k][1]
    )
    if cast:
        logging.warning(
            "checkpoint %s: %d arrays are stored as another dtype and will be cast (e.g. %s: %s -> %s)",
            where, len(cast), cast[0], saved_specs[cast[0]][1], expected[cast[0]][1],
        )  # fmt: skip


def check_meta_matches(
    saved: Mapping[str, Any], expected: Mapping[str, Any], where: pathlib.Path
) -> None:
    """Raises ResumeMismatchError when a saved run fact (task, batch size, ...) differs from this run's."""
    for key, value in expected.items():
        if key in saved and saved[key] != value:
            raise ResumeMismatchError(
                f"cannot resume: checkpoint {str(where)!r} was saved by a run with {key}={saved[key]!r}, this "
                f"run has {key}={value!r} (the saved data position counts that run's batches). Nothing in "
                f"MODEL_DIR was changed. Use a new MODEL_DIR, or set {key} back to {saved[key]!r}."
            )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _quiet_orbax_failures:
    """Silences asyncio's "Exception ignored in coroutine" / "Task exception was never retrieved" reports that a
    failed Orbax restore leaves behind (one per array: hundreds of lines); the failure itself is still raised."""

    def __enter__(self) -> None:
        import sys

        self._unraisable = sys.unraisablehook
        sys.unraisablehook = lambda args: None
        self._asyncio_level = py_logging.getLogger("asyncio").level
        py_logging.getLogger("asyncio").setLevel(py_logging.CRITICAL)

    def __exit__(self, *exc: Any) -> None:
        import gc
        import sys

        gc.collect()  # abandoned coroutines report while being collected: do it while silenced
        sys.unraisablehook = self._unraisable
        py_logging.getLogger("asyncio").setLevel(self._asyncio_level)


def _check_finite(params: Any, source: str) -> None:
    """Raises naming the first parameter with NaN/Inf among the shards this process holds (one replica of each:
    over all processes every element is checked once; the caller agrees across processes)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if isinstance(leaf, jax.Array):
            parts = [s.data for s in leaf.addressable_shards if s.replica_id == 0]
        else:
            parts = [leaf]
        if not all(np.all(np.isfinite(np.asarray(x))) for x in parts):
            raise ValueError(f"{source}: parameter {jax.tree_util.keystr(path)} holds NaN or Inf")


# ---- initial checkpoints --------------------------------------------------------------------------------------
