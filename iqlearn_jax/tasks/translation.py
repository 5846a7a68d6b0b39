"""WMT22 English→German translation as the SeqIO task ``wmt22_en_de``.

Prompt format (T5's): ``inputs = "translate English to German: {en}"``, ``targets = "{de}"``.
Metric: :func:`iqlearn_jax.metrics.bleu` (sacrebleu corpus BLEU and chrF, default 13a settings). The paper decodes
WMT22 with beam search, beam size 4 and length penalty 0.6.

Splits and files under ``{data_dir}/wmt22_en_de/``:

- ``test``: the WMT22 general test set, ``generaltest2022.en-de.src.en`` with reference A
  ``generaltest2022.en-de.ref.A.de`` (2037 aligned lines; always read from local files).
- ``train`` / ``validation``: ``train.tsv`` / ``validation.tsv``, UTF-8, one pair per line, two tab-separated
  columns ``english<TAB>german``, no header, tabs and newlines inside a segment replaced by spaces
  (``launch/prepare_data.py wmt`` writes them from HF ``wmt/wmt19`` de-en).
  With ``register_tasks.sources = {"wmt22_en_de": "tfds"}`` they come instead from TFDS ``wmt19_translate/de-en``
  (``en`` as source, ``de`` as target; validation = newstest2018).
"""

from __future__ import annotations

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from iqlearn_jax.metrics.task_metrics import bleu
from iqlearn_jax.tasks.registry import TaskOptions, add_text_task, task_builder, tfds_splits
from iqlearn_jax.tasks.sources import (
    LocalDatasetFn,
    LocalSplit,
    iter_parallel,
    iter_tsv,
    resolve_file,
)

TASK_NAME = "wmt22_en_de"
SPLITS = ("train", "validation", "test")
FIELDS = ("en", "de")
TEST_SOURCE = "generaltest2022.en-de.src.en"
TEST_REFERENCE = "generaltest2022.en-de.ref.A.de"
TFDS_NAME = "wmt19_translate/de-en"


def translation_postprocess(output: str, example=None, is_target: bool = False) -> str:
    """SeqIO postprocessor: strips surrounding whitespace."""
    del example, is_target
    return output.strip()


def format_example(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """``{"inputs": "translate English to German: {en}", "targets": de}``."""
    return {
        "inputs": tf.strings.join(["translate English to German: ", ex["en"]]),
        "targets": ex["de"],
    }


def local_dataset_fn(options: TaskOptions) -> LocalDatasetFn:
    directory = options.task_dir(TASK_NAME)
    skip = options.skip_bad_records

    def tsv_reader(split: str):
        def resolve() -> LocalSplit:
            path = resolve_file(
                directory, [f"{split}.tsv"], f"{TASK_NAME}/{split} (english<TAB>german lines)"
            )
            return LocalSplit(
                read=lambda: iter_tsv(path, FIELDS, skip_bad_records=skip), paths=[path]
            )

        return resolve

    def test_reader() -> LocalSplit:
        paths = (
            resolve_file(directory, [TEST_SOURCE], f"{TASK_NAME}/test source"),
            resolve_file(directory, [TEST_REFERENCE], f"{TASK_NAME}/test reference A"),
        )
        return LocalSplit(
            read=lambda: iter_parallel(paths, FIELDS, skip_bad_records=skip), paths=list(paths)
        )

    readers = {
        "train": tsv_reader("train"),
        "validation": tsv_reader("validation"),
        "test": test_reader,
    }
    return LocalDatasetFn(TASK_NAME, readers, FIELDS, options.train_subset)


class _TfdsTrainLocalTest:
    """dataset_fn: train/validation from TFDS ``wmt19_translate/de-en``, test from the local WMT22 files."""

    def __init__(self, options: TaskOptions):
        self.local = local_dataset_fn(options)
        self.splits = tfds_splits(("train", "validation"), options.train_subset)
        self.tfds_data_dir = options.tfds_data_dir
        self.__name__ = f"{TASK_NAME}_tfds_dataset_fn"

    def __call__(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        if split == "test":
            return self.local(split, shuffle_files, seed)
        ds = tfds.load(
            TFDS_NAME,
            split=self.splits[split],
            data_dir=self.tfds_data_dir,
            shuffle_files=shuffle_files,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
        return ds.map(
            lambda ex: {"en": ex["en"], "de": ex["de"]}, num_parallel_calls=tf.data.AUTOTUNE
        )


@task_builder(TASK_NAME)
def build(options: TaskOptions) -> list[str]:
    if options.source(TASK_NAME, ("local", "tfds")) == "tfds":
        dataset_fn = _TfdsTrainLocalTest(options)
    else:
        dataset_fn = local_dataset_fn(options)
    source = seqio.FunctionDataSource(dataset_fn, splits=SPLITS)
    add_text_task(
        TASK_NAME,
        options,
        source,
        seqio.map_over_dataset(format_example),
        [bleu],
        translation_postprocess,
    )
    return [TASK_NAME]
