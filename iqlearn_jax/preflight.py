"""Checks a training run makes before anything is written to MODEL_DIR.

`train.train` calls, in this order and before MODEL_DIR is created or changed:

1. `check_values`: every configuration value by name, against its type and range (`train.batch_size must be an
   integer >= 1, got 'abc' (str)`);
2. `check_model_dir`: MODEL_DIR is a directory we can write, or can be created (its nearest existing parent is a
   writable directory) — without creating it;
3. `check_first_batches`: the first batch of every split the run reads (train and, if set, eval) is drawn
   through the run's own data pipeline. Local data files are read and validated whole when a split is built, so
   a malformed record anywhere, a non-UTF-8 byte (both named by file and line) or an empty split stops the run
   here.

Every failure is a `ConfigError` (exit status 2) naming the culprit; a fresh MODEL_DIR stays absent.
"""

from __future__ import annotations

import numbers
import os
import pathlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from iqlearn_jax.gin_utils import ConfigError

# name -> (kind, minimum). kind: "int" (integers, bools refused), "int?" (int or None), "str", "str?", "bool".
VALUE_RULES: dict[str, tuple[str, int | None]] = {
    "batch_size": ("int", 1),
    "train_steps": ("int", 1),
    "num_microbatches": ("int", 1),
    "seed": ("int", 0),
    "eval_period": ("int", 1),
    "eval_batches": ("int", 1),
    "log_period": ("int", 1),
    "steps_in_flight": ("int", 1),
    "checkpoint_period": ("int", 1),
    "keep_checkpoints": ("int", 1),
    "stop_after_steps": ("int?", 1),
    "model_dir": ("str", None),
    "mixture_or_task_name": ("str", None),
    "train_split": ("str", None),
    "eval_split": ("str?", None),
    "initial_checkpoint_path": ("str?", None),
    "initial_checkpoint_format": ("str", None),
    "pack": ("bool", None),
    "async_checkpointing": ("bool", None),
    "print_summary": ("bool", None),
    "allow_fresh_start_over_damaged": ("bool", None),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_one(name: str, value: Any, kind: str, minimum: int | None) -> None:
    check_value(f"train.{name}", value, kind, minimum)


def check_value(where: str, value: Any, kind: str, minimum: int | None = None) -> None:
    """Refuses `value` unless it is of `kind` (see VALUE_RULES) and >= `minimum`; the message names `where`."""
    if kind.endswith("?"):
        if value is None:
            return
        kind = kind[:-1]
    if kind == "int":
        if not _is_int(value):
            bound = f" >= {minimum}" if minimum is not None else ""
            raise ConfigError(
                f"{where} must be an integer{bound}, got {value!r} ({type(value).__name__})"
            )
        if minimum is not None and value < minimum:
            raise ConfigError(f"{where} must be an integer >= {minimum}, got {value}")
    elif kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"{where} must be a non-empty string, got {value!r} ({type(value).__name__})"
            )
    elif kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{where} must be True or False, got {value!r} ({type(value).__name__})")


def check_feature_lengths(
    task_feature_lengths: Any, where: str = "train.task_feature_lengths"
) -> dict[str, int]:
    """{'inputs': n, 'targets': m} with every length an integer >= 1."""
    if not isinstance(task_feature_lengths, Mapping) or not task_feature_lengths:
        raise ConfigError(
            f"{where} (TASK_FEATURE_LENGTHS) must be a non-empty dict such as "
            f"{{'inputs': 512, 'targets': 128}}, got {task_feature_lengths!r}"
        )
    for key, length in task_feature_lengths.items():
        if not _is_int(length) or length < 1:
            raise ConfigError(
                f"{where}[{key!r}] (TASK_FEATURE_LENGTHS) must be an integer >= 1, got {length!r}"
            )
    return dict(task_feature_lengths)


def check_values(values: Mapping[str, Any]) -> None:
    """Type and range of each `train.train` argument named in VALUE_RULES (others are skipped)."""
    for name, value in values.items():
        if name == "task_feature_lengths":
            check_feature_lengths(value)
        elif name in VALUE_RULES:
            _check_one(name, value, *VALUE_RULES[name])
    if "initial_checkpoint_format" in values:
        from iqlearn_jax.checkpoints.initial import INITIAL_CHECKPOINT_FORMATS

        known = ["auto", *(name for name, _, _ in INITIAL_CHECKPOINT_FORMATS)]
        if values["initial_checkpoint_format"] not in known:
            raise ConfigError(
                f"train.initial_checkpoint_format must be one of {known}, "
                f"got {values['initial_checkpoint_format']!r}"
            )


def model_vocab_size(model: Any) -> int | None:
    """Embedding rows of the model's network (`model.module.config.vocab_size`), None when it does not say."""
    size = getattr(getattr(getattr(model, "module", None), "config", None), "vocab_size", None)
    return size if _is_int(size) else None


def check_task_features(task_name: str, task_feature_lengths: Mapping[str, int]) -> None:
    """Every output feature of the task has a length in task_feature_lengths."""
    import seqio

    features = sorted(seqio.get_mixture_or_task(task_name).output_features)
    missing = [f for f in features if f not in task_feature_lengths]
    if missing:
        raise ConfigError(
            f"train.task_feature_lengths {dict(task_feature_lengths)} has no length for {missing} of task "
            f"{task_name!r} (its features: {features})"
        )


def check_vocabulary(task_name: str, model: Any) -> None:
    """The model's embedding has a row for every token id of the task's vocabularies (loads the vocabularies)."""
    import seqio

    rows = model_vocab_size(model)
    for name, feature in seqio.get_mixture_or_task(task_name).output_features.items():
        needed = getattr(feature.vocabulary, "vocab_size", None)
        if rows is not None and _is_int(needed) and rows < needed:
            raise ConfigError(
                f"the model's vocabulary has {rows} entries (VOCAB_SIZE), fewer than the {needed} token ids of "
                f"task {task_name!r} feature {name!r} ({type(feature.vocabulary).__name__}); set VOCAB_SIZE >= "
                f"{needed}"
            )


def _run_layout() -> dict[str, bool]:
    """What a run writes inside MODEL_DIR, from the modules that write it: name -> whether it is a directory."""
    from iqlearn_jax.checkpoints.manager import CHECKPOINTS_SUBDIR, DAMAGED_SUBDIR
    from iqlearn_jax.observability import METRICS_FILE, TENSORBOARD_SUBDIR

    return {
        CHECKPOINTS_SUBDIR: True,
        DAMAGED_SUBDIR: True,
        TENSORBOARD_SUBDIR: True,
        METRICS_FILE: False,
        "config.gin": False,
    }


def _check_run_layout(path: pathlib.Path) -> None:
    """Refuses a MODEL_DIR where something the run writes exists as the wrong kind of entry."""
    for name, is_dir in _run_layout().items():
        entry = path / name
        if entry.exists() and entry.is_dir() != is_dir:
            expected = "a directory" if is_dir else "a file"
            raise ConfigError(
                f"MODEL_DIR {str(path)!r} holds {name!r}, which is not {expected} as a run writes it: "
                "is this the MODEL_DIR of a run?"
            )


def check_model_dir(model_dir: str) -> pathlib.Path:
    """Absolute MODEL_DIR path, refused when it cannot be written; an absent MODEL_DIR is NOT created here."""
    path = pathlib.Path(model_dir).expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"MODEL_DIR {str(path)!r} exists and is not a directory")
        _check_run_layout(path)
        try:
            probe = path / f".write_probe_{uuid.uuid4().hex}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"MODEL_DIR {str(path)!r} is not writable: {e.strerror or e}") from e
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(
            f"MODEL_DIR {str(path)!r} is not writable: {str(parent)!r} is not a directory"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"MODEL_DIR {str(path)!r} is not writable: cannot create it in {str(parent)!r} "
            "(permission denied)"
        )
    return path


# ---- data ------------------------------------------------------------------------------------------------------
def split_files(task_name: str, split: str) -> list[str]:
    """The local files a split of a task (or of each task of a mixture) reads; [] when unknown."""
    import seqio

    from iqlearn_jax.tasks.sources import LocalDatasetFn

    try:
        task = seqio.get_mixture_or_task(task_name)
        tasks = task.tasks if isinstance(task, seqio.Mixture) else [task]
        files: list[str] = []
        for t in tasks:
            fn = getattr(t.source, "_dataset_fn", None)
            if isinstance(fn, LocalDatasetFn):
                files.extend(fn._split(split).paths)  # noqa: SLF001
        return files
    except Exception:  # noqa: BLE001 - only used to enrich a message
        return []


def _data_error_types() -> tuple[type[BaseException], ...]:
    import tensorflow as tf

    from iqlearn_jax.tasks.sources import DataError

    return (DataError, ValueError, OSError, UnicodeError, KeyError, tf.errors.OpError)


def check_first_batches(
    get_dataset: Callable[..., Any],
    model: Any,
    task_name: str,
    splits: Sequence[tuple[str, bool]],
    task_feature_lengths: Mapping[str, int],
    local_batch_size: int,
    shard_info: tuple[int, int],
    seed: int,
    pack: bool = False,
) -> None:
    """Draws the first batch of each (split, repeats) through `get_dataset` (the run's own pipeline).

    A split that repeats (train) needs at least one example; one that does not (eval) needs a full batch.
    """
    for split, repeat in splits:
        try:
            ds = get_dataset(
                model, task_name, split, task_feature_lengths, local_batch_size, shard_info, seed,
                shuffle=False, repeat=repeat, pack=pack,
            )  # fmt: skip
            first = next(iter(ds.take(1).as_numpy_iterator()), None)
        except _data_error_types() as e:
            message = str(getattr(e, "message", "") or e).strip()
            raise ConfigError(
                f"cannot read split {split!r} of task {task_name!r}: {type(e).__name__}: {message}"
            ) from e
        if first is None:
            files = split_files(task_name, split)
            where = f" (read from {', '.join(files)})" if files else ""
            if repeat:
                raise ConfigError(
                    f"split {split!r} of task {task_name!r} is empty: it has no example{where}"
                )
            raise ConfigError(
                f"split {split!r} of task {task_name!r} has fewer than {local_batch_size} examples per host, "
                f"not one batch{where}; set train.eval_split=None to train without validation"
            )


# ---- initial checkpoint -----------------------------------------------------------------------------------------
def checkpoint_steps(model_dir: pathlib.Path) -> list[int]:
    """Steps of the checkpoints in MODEL_DIR/checkpoints (complete or not), oldest first."""
    from iqlearn_jax.checkpoints.manager import CHECKPOINTS_SUBDIR

    folder = model_dir / CHECKPOINTS_SUBDIR
    return (
        sorted(int(c.name) for c in folder.glob("*") if c.name.isdigit()) if folder.is_dir() else []
    )


def initial_checkpoint_unused(initial_checkpoint_path: str | None, model_dir: pathlib.Path) -> bool:
    """True when MODEL_DIR already has checkpoints (the run resumes from them).

    With `initial_checkpoint_path` set, that case prints one note saying the initial checkpoint is not used; a
    path that does not exist is refused even then (a typo would otherwise surface only in a later fresh run).
    """
    steps = checkpoint_steps(model_dir)
    if not steps or not initial_checkpoint_path:
        return bool(steps)
    import sys

    import jax

    if not pathlib.Path(initial_checkpoint_path).exists():
        raise ConfigError(
            f"train.initial_checkpoint_path {initial_checkpoint_path!r} does not exist. MODEL_DIR already has "
            f"checkpoints (newest step {steps[-1]}), so it would not be used: remove the binding to resume, "
            "or fix the path"
        )
    if jax.process_index() == 0:
        print(
            f"note: MODEL_DIR {str(model_dir)!r} already has checkpoints (newest step {steps[-1]}): resuming "
            f"from them; train.initial_checkpoint_path {initial_checkpoint_path!r} is not used",
            file=sys.stderr,
            flush=True,
        )
    return True
