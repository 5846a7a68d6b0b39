r"""Time to put the training data back at batch N on resume: replaying N batches vs restoring the iterator state.

    python bench/resume_time.py                       # synthetic task, batch 16, N = 200 and 1000
    python bench/resume_time.py --batches=1000,4000 --batch_size=32

The pipeline is the training loop's (`data_pipeline.TrainIterator` over a SeqIO task: source, tokenisation,
shuffle, feature conversion, batching, prefetch). For each N:

- replay (before: what a restart did until now): build the pipeline with `.skip(N)`, read its first batch;
- restore (now): build the pipeline, read back its tf.data iterator state (saved after N batches by the
  checkpoint's 'data' item writer, `TrainIterator.save`), read its first batch; checked equal to the replayed one.

Both timings include building the pipeline and filling its shuffle buffer (after a first, untimed build that pays
TensorFlow's one-time set-up); `fresh start` (build + first batch at position 0) is that common part.

Last line: `resume at batch N: replay X.XX s, restore Y.YY s (replay/restore Z.Z)` for the largest N.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from etils import epath

from iqlearn_jax.data_pipeline import TrainIterator, get_dataset
from iqlearn_jax.models import EncoderDecoderModel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="synthetic_arithmetic_1step")
    parser.add_argument("--batches", default="200,1000", help="comma-separated N")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--inputs_length", type=int, default=112)
    parser.add_argument("--targets_length", type=int, default=80)
    args = parser.parse_args(argv)

    from iqlearn_jax.tasks import register_tasks

    register_tasks()
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}

    def make():
        return get_dataset(
            EncoderDecoderModel, args.task, "train", lengths, args.batch_size, (0, 1), 0,
            shuffle=True, repeat=True,
        )  # fmt: skip

    print(f"task {args.task}, batch {args.batch_size}, lengths {lengths}")
    t0 = time.perf_counter()
    next(
        TrainIterator(make)
    )  # TensorFlow's and SeqIO's one-time set-up, so that neither timing pays it
    print(
        f"first pipeline built and read in {time.perf_counter() - t0:.1f} s (one-time set-up, not counted)"
    )
    line = ""
    for n in (int(x) for x in args.batches.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            source = TrainIterator(make)
            for _ in range(n):
                next(source)
            source.save(epath.Path(tmp))
            size = sum(f.stat().st_size for f in pathlib.Path(tmp).rglob("*") if f.is_file())

            t0 = time.perf_counter()
            next(TrainIterator(make))
            fresh = time.perf_counter() - t0

            t0 = time.perf_counter()
            replayed = TrainIterator(lambda n=n: make().skip(n))
            first_replayed = next(replayed)
            replay = time.perf_counter() - t0

            t0 = time.perf_counter()
            restored = TrainIterator(make)
            assert restored.restore(epath.Path(tmp))
            first_restored = next(restored)
            restore = time.perf_counter() - t0
        for k in first_replayed:
            np.testing.assert_array_equal(first_replayed[k], first_restored[k])
        print(
            f"N={n:>6d}: replay {replay:7.2f} s | restore {restore:5.2f} s | fresh start {fresh:5.2f} s | state "
            f"{size / 2**20:.1f} MiB | same next batch: yes"
        )
        line = (
            f"resume at batch {n}: replay {replay:.2f} s, restore {restore:.2f} s "
            f"(replay/restore {replay / restore:.1f})"
        )
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
