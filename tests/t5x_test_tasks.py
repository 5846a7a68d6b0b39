"""Small SeqIO tasks for the real-T5X tests: the embedded synthetic task, cut to a few examples per split.

`t5x.eval` and `t5x.infer` go through a whole split; the embedded task's splits hold 1000 examples. The T5X
subprocesses import this module through T5X's `MIXTURE_OR_TASK_MODULE` (tests/ on PYTHONPATH).
"""

from __future__ import annotations

import seqio

import iqlearn_jax.tasks.synthetic  # noqa: F401 - registers synthetic_arithmetic_*

SMALL_TASK = "synthetic_arithmetic_1step_small"
EXAMPLES_PER_SPLIT = {"train": 100_000, "validation": 16, "test": 16}


def register_small_copy(name: str, base_name: str, sizes: dict[str, int]) -> seqio.Task:
    """Registers `name`: the task `base_name` with each split cut to its first `sizes[split]` examples."""
    base = seqio.get_mixture_or_task(base_name)

    def dataset_fn(split, shuffle_files, seed=None):
        ds = base.source.get_dataset(split=split, shuffle=shuffle_files, seed=seed)
        return ds.take(sizes[split])

    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            dataset_fn, splits=tuple(sizes), num_input_examples=dict(sizes)
        ),
        preprocessors=base.preprocessors,
        output_features=base.output_features,
        postprocess_fn=base.postprocessor,
        metric_fns=base.metric_fns,
    )


register_small_copy(SMALL_TASK, "synthetic_arithmetic_1step", EXAMPLES_PER_SPLIT)
