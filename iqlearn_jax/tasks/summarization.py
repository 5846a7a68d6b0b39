"""Summarisation tasks ``xsum`` (BBC extreme summarisation) and ``tldr`` (Reddit TL;DR, OpenAI filtered).

Metric of both: :func:`iqlearn_jax.metrics.rouge` (ROUGE-1/2/Lsum F-measure, rouge-score with stemming).

**xsum** — prompt ``inputs = "summarize: {document}"``, ``targets = "{summary}"``. Splits train/validation/test.

- ``"local"`` source (default): ``{data_dir}/xsum/{split}.jsonl``, JSON Lines with string fields ``document``
  (sentences joined by newlines; may be empty) and ``summary`` (non-empty), plus ``id`` (ignored). Validation falls
  back to ``xsum_validation_sample1000.jsonl`` (1000 official validation pairs) when ``validation.jsonl`` is absent;
  full ``train.jsonl``/``validation.jsonl``/``test.jsonl`` come from ``launch/prepare_data.py xsum``.
- ``"tfds"`` source: TFDS builder ``xsum`` (features ``document``/``summary``). It needs a manual download:
  prepare it once with ``tfds build xsum --manual_dir=DIR --data_dir=TFDS_DIR`` and set
  ``register_tasks.tfds_data_dir = TFDS_DIR``.

**tldr** — prompt (the OpenAI/TRL one) ``inputs = "SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:"``,
``targets = "{summary}"``. Splits train/validation/test, local files only (there is no TFDS builder):
``{data_dir}/tldr/{split}.jsonl`` with string fields ``subreddit``, ``title``, ``instruction`` (the post),
``gold_response`` (the reference TL;DR, non-empty) and ``instruction_id`` (ignored). The test split falls back to
``tldr_filtered_test_sample500.jsonl`` (500 posts) when ``test.jsonl`` is absent.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from iqlearn_jax.metrics.task_metrics import rouge
from iqlearn_jax.tasks.registry import TaskOptions, add_text_task, task_builder, tfds_splits
from iqlearn_jax.tasks.sources import LocalDatasetFn, LocalSplit, iter_jsonl, resolve_file

SPLITS = ("train", "validation", "test")

XSUM = "xsum"
XSUM_FIELDS = ("document", "summary")
XSUM_FILES = {
    "train": ["train.jsonl"],
    "validation": ["validation.jsonl", "xsum_validation_sample1000.jsonl"],
    "test": ["test.jsonl"],
}
XSUM_TFDS_NAME = "xsum:1.1.0"

TLDR = "tldr"
TLDR_FIELDS = ("subreddit", "title", "instruction", "gold_response")
TLDR_FILES = {
    "train": ["train.jsonl"],
    "validation": ["validation.jsonl"],
    "test": ["test.jsonl", "tldr_filtered_test_sample500.jsonl"],
}


def summary_postprocess(output: str, example=None, is_target: bool = False) -> str:
    """SeqIO postprocessor: strips surrounding whitespace."""
    del example, is_target
    return output.strip()


def format_xsum(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """``{"inputs": "summarize: {document}", "targets": summary}``."""
    return {"inputs": tf.strings.join(["summarize: ", ex["document"]]), "targets": ex["summary"]}


def format_tldr(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """The OpenAI/TRL TL;DR prompt and the reference summary."""
    prompt = tf.strings.join(
        [
            "SUBREDDIT: r/",
            ex["subreddit"],
            "\nTITLE: ",
            ex["title"],
            "\nPOST: ",
            ex["instruction"],
            "\nTL;DR:",
        ]
    )
    return {"inputs": prompt, "targets": tf.strings.strip(ex["gold_response"])}


def _local_fn(task: str, options: TaskOptions, files, fields, nonempty) -> LocalDatasetFn:
    directory = options.task_dir(task)

    def split_reader(split: str):
        def resolve() -> LocalSplit:
            path = resolve_file(directory, files[split], f"{task}/{split}")
            return LocalSplit(
                read=lambda: iter_jsonl(
                    path, fields, nonempty=nonempty, skip_bad_records=options.skip_bad_records
                ),
                paths=[path],
            )

        return resolve

    return LocalDatasetFn(
        task, {split: split_reader(split) for split in files}, fields, options.train_subset
    )


def xsum_local_dataset_fn(options: TaskOptions) -> LocalDatasetFn:
    return _local_fn(XSUM, options, XSUM_FILES, XSUM_FIELDS, nonempty=("summary",))


def tldr_local_dataset_fn(options: TaskOptions) -> LocalDatasetFn:
    return _local_fn(TLDR, options, TLDR_FILES, TLDR_FIELDS, nonempty=("gold_response",))


@task_builder(XSUM)
def build_xsum(options: TaskOptions) -> list[str]:
    if options.source(XSUM, ("local", "tfds")) == "tfds":
        source = seqio.TfdsDataSource(
            tfds_name=XSUM_TFDS_NAME,
            tfds_data_dir=options.tfds_data_dir,
            splits=tfds_splits(SPLITS, options.train_subset),
        )
    else:
        source = seqio.FunctionDataSource(xsum_local_dataset_fn(options), splits=SPLITS)
    add_text_task(
        XSUM, options, source, seqio.map_over_dataset(format_xsum), [rouge], summary_postprocess
    )
    return [XSUM]


@task_builder(TLDR)
def build_tldr(options: TaskOptions) -> list[str]:
    options.source(TLDR, ("local",))
    source = seqio.FunctionDataSource(tldr_local_dataset_fn(options), splits=SPLITS)
    add_text_task(
        TLDR, options, source, seqio.map_over_dataset(format_tldr), [rouge], summary_postprocess
    )
    return [TLDR]
