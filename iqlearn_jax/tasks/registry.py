"""Idempotent, gin-configurable registration of the SeqIO tasks.

Each task module declares a *builder* with :func:`task_builder`; a builder receives the current
:class:`TaskOptions` and (re)registers its SeqIO task(s). Builders run once when their module is imported, with
default options (data under ``IQLEARN_DATA_DIR``, T5's vocabulary, loaded lazily: nothing is read or downloaded at
import), and again on every call to :func:`register_tasks`, which a training binary calls after parsing gin::

    register_tasks.vocabulary = "byte"           # or "t5", a .model path, @seqio.SentencePieceVocabulary()
    register_tasks.data_dir = "/data/iqlearn"    # default: $IQLEARN_DATA_DIR, else ../shared/data
    register_tasks.train_subset_count = 1000     # or train_subset_fraction = 0.1; train_subset_seed = 0
    register_tasks.sources = {"gsm8k": "tfds"}   # per task: "local" (default) or "tfds" where it exists
    register_tasks.skip_bad_records = True

Re-registration replaces a task of the same name (SeqIO refuses duplicates), so importing twice or calling
:func:`register_tasks` repeatedly is safe.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import gin
import seqio
from absl import logging

from iqlearn_jax.tasks.sources import Subset
from iqlearn_jax.tasks.vocab import DEFAULT_EXTRA_IDS, VocabularySpec, get_vocabulary

DATA_DIR_ENV = "IQLEARN_DATA_DIR"


def default_data_dir() -> str:
    """``$IQLEARN_DATA_DIR``, else ``../shared/data`` beside the repository checkout (whether or not it exists)."""
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV]
    return str(pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data")


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """Everything a task builder needs; built by :func:`register_tasks`."""

    data_dir: str
    vocabulary: seqio.Vocabulary
    skip_bad_records: bool = False
    train_subset: Subset = Subset()
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tfds_data_dir: str | None = None

    def task_dir(self, task: str) -> str:
        return os.path.join(self.data_dir, task)

    def source(self, task: str, allowed: Sequence[str] = ("local",)) -> str:
        """The source kind chosen for ``task`` (default "local"), checked against ``allowed``."""
        kind = self.sources.get(task, "local")
        if kind not in allowed:
            raise ValueError(f"task {task!r} has no source {kind!r}; choose one of {list(allowed)}")
        return kind

    def output_features(self) -> dict[str, seqio.Feature]:
        return {
            "inputs": seqio.Feature(self.vocabulary, add_eos=True),
            "targets": seqio.Feature(self.vocabulary, add_eos=True),
        }


Builder = Callable[[TaskOptions], Sequence[str]]
_BUILDERS: dict[str, Builder] = {}
_OPTIONS: TaskOptions | None = None


def current_options() -> TaskOptions:
    """The options of the last registration (defaults before any :func:`register_tasks` call)."""
    global _OPTIONS
    if _OPTIONS is None:
        _OPTIONS = TaskOptions(data_dir=default_data_dir(), vocabulary=get_vocabulary("t5"))
    return _OPTIONS


def task_builder(name: str) -> Callable[[Builder], Builder]:
    """Decorator: declares a builder and runs it at once with the current options."""

    def decorate(builder: Builder) -> Builder:
        _BUILDERS[name] = builder
        builder(current_options())
        return builder

    return decorate


def add_task(name: str, **kwargs) -> seqio.Task:
    """``seqio.TaskRegistry.add`` that first removes a task of the same name (idempotent re-registration)."""
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, **kwargs)


@gin.configurable
def register_tasks(
    data_dir: str | None = None,
    vocabulary: VocabularySpec = "t5",
    extra_ids: int = DEFAULT_EXTRA_IDS,
    skip_bad_records: bool = False,
    train_subset_count: int | None = None,
    train_subset_fraction: float | None = None,
    train_subset_seed: int | None = None,
    sources: Mapping[str, str] | None = None,
    tfds_data_dir: str | None = None,
) -> list[str]:
    """(Re)registers every declared task with these options; returns the registered task names.

    Args:
      data_dir: folder holding one sub-folder per task (gsm8k/, xsum/, tldr/, wmt22_en_de/); default
        :func:`default_data_dir`.
      vocabulary: see :func:`iqlearn_jax.tasks.vocab.get_vocabulary`; ``extra_ids`` applies to SentencePiece.
      skip_bad_records: skip (and log the number of) malformed records instead of raising.
      train_subset_count / train_subset_fraction: keep only this many / this fraction of the train records
        (the dataset-size ablation); ``train_subset_seed`` picks a seeded random subset instead of the first ones.
      sources: per-task source kind, e.g. ``{"gsm8k": "tfds", "xsum": "tfds", "wmt22_en_de": "tfds"}``.
      tfds_data_dir: TFDS data directory for "tfds" sources (xsum must be prepared there with its manual dir).
    """
    unknown = sorted(set(sources or {}) - set(_BUILDERS))
    if unknown:
        raise ValueError(
            f"sources names unknown task(s) {unknown}; known tasks: {sorted(_BUILDERS)}"
        )
    options = TaskOptions(
        data_dir=data_dir or default_data_dir(),
        vocabulary=get_vocabulary(vocabulary, extra_ids=extra_ids),
        skip_bad_records=skip_bad_records,
        train_subset=Subset(
            count=train_subset_count, fraction=train_subset_fraction, seed=train_subset_seed
        ),
        sources=dict(sources or {}),
        tfds_data_dir=tfds_data_dir,
    )
    return apply_options(options)


def apply_options(options: TaskOptions) -> list[str]:
    """Re-runs every builder with ``options`` (e.g. to restore :func:`current_options` saved earlier).

    If a builder rejects the options, every task is registered again with the previous options and the error is
    re-raised, so the registry is never left half-updated.
    """
    global _OPTIONS
    previous = current_options()
    names: list[str] = []
    try:
        for builder in _BUILDERS.values():
            names.extend(builder(options))
    except Exception:
        for builder in _BUILDERS.values():
            builder(previous)
        raise
    _OPTIONS = options
    logging.info("registered tasks %s (data_dir=%s)", names, options.data_dir)
    return names


def tfds_splits(splits: Sequence[str], subset: Subset) -> dict[str, str]:
    """TFDS split strings, with the train subset as a slice (TFDS sources support first-k subsets only)."""
    out = {split: split for split in splits}
    if "train" in out and not subset.is_full:
        if subset.seed is not None:
            raise ValueError(
                f"TFDS sources take the first records as the train subset; train_subset_seed={subset.seed} is "
                "only supported by local sources (set it to None)"
            )
        if subset.count is not None:
            out["train"] = f"train[:{subset.count}]"
        else:
            percent = 100.0 * subset.fraction
            if abs(percent - round(percent)) > 1e-9:
                raise ValueError(
                    f"TFDS sources need a whole-percent train_subset_fraction, got {subset.fraction}"
                )
            out["train"] = f"train[:{int(round(percent))}%]"
    return out


def add_text_task(
    name: str,
    options: TaskOptions,
    source: seqio.DataSource,
    format_fn: Callable,
    metric_fns: Sequence[Callable],
    postprocess_fn: Callable | None = None,
) -> seqio.Task:
    """Registers a text-to-text task: ``format_fn`` maps raw fields to 'inputs'/'targets' strings, then SeqIO
    tokenizes them (keeping '*_pretokenized' copies), caches, and appends EOS after trimming."""
    return add_task(
        name,
        source=source,
        output_features=options.output_features(),
        preprocessors=[
            format_fn,
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        postprocess_fn=postprocess_fn,
        metric_fns=list(metric_fns),
    )
