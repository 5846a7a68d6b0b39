"""The training data: SeqIO datasets of model features, and a train iterator whose position is checkpointed.

`TrainIterator` wraps a tf.data pipeline (SeqIO task -> feature converter -> batch -> prefetch) and yields numpy
batches. Its state (every op's position, the shuffle buffer's contents and RNG, the prefetch buffer) is saved
with tf.data iterator checkpointing (`tf.train.Checkpoint(iterator=...)`) as the Orbax item 'data' of each
train checkpoint, through `DataIteratorHandler`: one file set per process (`process_<i>-of-<n>/`), so every
host restores its own shard's position. Resuming costs one read of that state, whatever the step; the resumed
run sees exactly the batches the uninterrupted run would have seen (bit-identical training).

A source tf.data cannot checkpoint (`Dataset.from_generator`, e.g. local files above the streaming threshold)
is detected at the first save: the item then holds an `UNSUPPORTED` note and resuming falls back to replaying
`batches_consumed` batches (`TrainIterator.skip`), with a warning. Ops with external state (py_function in
a source) are saved without that state (`ExternalStatePolicy.IGNORE`): sources must be pure functions of the
position, as every task of this project is.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

UNSUPPORTED_NOTE = "UNSUPPORTED"
_FILE_PREFIX = "iterator"


def get_dataset(
    model: Any,
    task_name: str,
    split: str,
    task_feature_lengths: Mapping[str, int],
    local_batch_size: int,
    shard_info: tuple[int, int],
    seed: int,
    shuffle: bool,
    repeat: bool,
    pack: bool = False,
):
    """Batched SeqIO dataset (tf.data) of the model's features for this host: [local_batch_size, length]."""
    import seqio

    converter_cls = getattr(model, "FEATURE_CONVERTER_CLS", seqio.EncDecFeatureConverter)
    ds = seqio.get_dataset(
        task_name,
        task_feature_lengths=dict(task_feature_lengths),
        dataset_split=split,
        shuffle=shuffle,
        num_epochs=None if repeat else 1,
        feature_converter=converter_cls(pack=pack),
        shard_info=seqio.ShardInfo(index=shard_info[0], num_shards=shard_info[1]),
        use_cached=False,
        seed=seed,
    )
    return ds.batch(local_batch_size, drop_remainder=True)


def process_dir(directory: pathlib.Path | epath.Path) -> epath.Path:
    """This process's folder inside a 'data' item: process_<index>-of-<count>."""
    return epath.Path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}"


class TrainIterator(Iterator[dict[str, np.ndarray]]):
    """Numpy batches from `make_dataset()` (a tf.data.Dataset), prefetched, with a checkpointable position.

    `batches` counts the batches this iterator has yielded since the start of training (restored by `restore`,
    advanced by `skip`).
    """

    def __init__(self, make_dataset: Callable[[], Any], prefetch: int = 2) -> None:
        self._make_dataset = make_dataset
        self._prefetch = prefetch
        self.batches = 0
        self.checkpointable = True
        self._iterator = self._new_iterator(0)

    def _new_iterator(self, skip: int) -> Any:
        import tensorflow as tf

        ds = self._make_dataset()
        if skip:
            ds = ds.skip(skip)
        options = tf.data.Options()
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
        return iter(ds.prefetch(self._prefetch).with_options(options))

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self.batches += 1
        return {k: v._numpy() for k, v in batch.items()}  # noqa: SLF001 - zero-copy, as as_numpy_iterator

    def skip(self, batches: int) -> None:
        """Replays: positions the pipeline after `batches` batches by reading and dropping them (O(batches))."""
        self._iterator = self._new_iterator(batches)
        self.batches = batches

    def save(self, directory: epath.Path) -> None:
        """Writes this process's iterator state under `directory` (a note instead when tf.data cannot)."""
        import tensorflow as tf

        target = process_dir(directory)
        target.mkdir(parents=True, exist_ok=True)
        (target / "batches").write_text(str(self.batches))
        if self.checkpointable:
            try:
                tf.train.Checkpoint(iterator=self._iterator).write(str(target / _FILE_PREFIX))
                return
            except (tf.errors.UnimplementedError, tf.errors.FailedPreconditionError) as e:
                self.checkpointable = False
                self._why = str(e).strip().splitlines()[0][:300]
                logging.warning(
                    "the data pipeline cannot be checkpointed (%s): a resumed run will replay the consumed "
                    "batches instead",
                    self._why,
                )
        (target / UNSUPPORTED_NOTE).write_text(getattr(self, "_why", "not checkpointable") + "\n")

    def restore(self, directory: epath.Path) -> bool:
        """Restores this process's iterator state from `directory`; False when it holds only the UNSUPPORTED note.

        Raises FileNotFoundError when this process has no state there (e.g. saved with another process count).
        """
        import tensorflow as tf

        source = process_dir(directory)
        if not (source / "batches").exists():
            raise FileNotFoundError(
                f"no data-iterator state for process {jax.process_index()} of {jax.process_count()} in "
                f"{str(directory)!r} (saved with another process count?)"
            )
        if (source / UNSUPPORTED_NOTE).exists():
            return False
        tf.train.Checkpoint(iterator=self._iterator).read(
            str(source / _FILE_PREFIX)
        ).assert_consumed()
        self.batches = int((source / "batches").read_text())
        return True


# ---- Orbax item 'data' ----------------------------------------------------------------------------------------
class DataIteratorHandler(ocp.CheckpointHandler):
    """Orbax handler for a `TrainIterator`: each process writes and reads its own process_<i>-of-<n>/ folder.

    Synchronous: the position is captured inside `save`, before the training loop draws the next batch.
    """

    def save(self, directory: epath.Path, args: DataIteratorSave) -> None:
        args.iterator.save(directory)

    def restore(self, directory: epath.Path, args: DataIteratorRestore | None = None) -> bool:
        if args is None or args.iterator is None:
            raise ValueError("restoring the data item needs DataIteratorRestore(iterator)")
        return args.iterator.restore(directory)


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
    iterator: TrainIterator


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
    iterator: TrainIterator | None = None
