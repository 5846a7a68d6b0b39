"""GSM8k (grade-school math word problems) as the SeqIO task ``gsm8k``.

Prompt format: ``inputs = "question: {question}"``, ``targets = "{answer}"`` where the answer is the full worked
solution, calculator annotations ``<<48/2=24>>`` included (the calculator hook of decoding uses them), ending with
``#### {final answer}``. Metric: :func:`iqlearn_jax.metrics.gsm8k_accuracy` (number after the last ``####``).

Splits: ``train`` (7473) and ``test`` (1319).

Sources (``register_tasks.sources = {"gsm8k": ...}``):

- ``"local"`` (default): ``{data_dir}/gsm8k/{train,test}.jsonl``, JSON Lines with string fields ``question`` and
  ``answer`` (the files of openai/grade-school-math; ``launch/prepare_data.py gsm8k`` writes them from HF).
- ``"tfds"``: the TFDS builder ``gsm8k`` (features ``question`` and ``answer``), downloaded by TFDS on first use.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from iqlearn_jax.metrics.task_metrics import gsm8k_accuracy, gsm8k_postprocess
from iqlearn_jax.tasks.registry import TaskOptions, add_text_task, task_builder, tfds_splits
from iqlearn_jax.tasks.sources import LocalDatasetFn, LocalSplit, iter_jsonl, resolve_file

TASK_NAME = "gsm8k"
SPLITS = ("train", "test")
FIELDS = ("question", "answer")
TFDS_NAME = "gsm8k:1.0.0"


def format_example(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Raw fields -> ``{"inputs": "question: {question}", "targets": answer}`` (tf.string scalars)."""
    return {"inputs": tf.strings.join(["question: ", ex["question"]]), "targets": ex["answer"]}


@seqio.map_over_dataset
def _format(ex):
    return format_example(ex)


def local_dataset_fn(options: TaskOptions) -> LocalDatasetFn:
    directory = options.task_dir(TASK_NAME)

    def split_reader(split: str):
        def resolve() -> LocalSplit:
            path = resolve_file(directory, [f"{split}.jsonl"], f"{TASK_NAME}/{split}")
            return LocalSplit(
                read=lambda: iter_jsonl(
                    path, FIELDS, nonempty=FIELDS, skip_bad_records=options.skip_bad_records
                ),
                paths=[path],
            )

        return resolve

    return LocalDatasetFn(
        TASK_NAME, {s: split_reader(s) for s in SPLITS}, FIELDS, options.train_subset
    )


@task_builder(TASK_NAME)
def build(options: TaskOptions) -> list[str]:
    if options.source(TASK_NAME, ("local", "tfds")) == "tfds":
        source = seqio.TfdsDataSource(
            tfds_name=TFDS_NAME,
            tfds_data_dir=options.tfds_data_dir,
            splits=tfds_splits(SPLITS, options.train_subset),
        )
    else:
        source = seqio.FunctionDataSource(local_dataset_fn(options), splits=SPLITS)
    add_text_task(TASK_NAME, options, source, _format, [gsm8k_accuracy], gsm8k_postprocess)
    return [TASK_NAME]
