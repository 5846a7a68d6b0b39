"""Runs the `iqlearn_jax.train` CLI (tests/test_multiprocess.py starts it as each process of a job).

With IQLEARN_TEST_EMULATE_SHARDS=N (one process only) every SeqIO dataset this process asks for is replaced by the
N per-host shards (SeqIO `ShardInfo(i, N)`, each batched at IQLEARN_TEST_EMULATE_BATCH / N examples) concatenated
batch by batch: the process then sees exactly the global batches of an N-process run (process i's rows at block
i), so its results can be compared with that run. A line on stderr says each time the substitution happened.
"""

import os
import sys


def _emulate_shards(n: int, global_batch: int) -> None:
    import seqio
    import tensorflow as tf

    original = seqio.get_dataset
    per_host = global_batch // n

    def get_dataset(*args, **kwargs):
        shard = kwargs.get("shard_info")
        if shard is None or (shard.index, shard.num_shards) != (0, 1):
            return original(*args, **kwargs)
        parts = [
            original(
                *args, **{**kwargs, "shard_info": seqio.ShardInfo(index=i, num_shards=n)}
            ).batch(per_host, drop_remainder=True)
            for i in range(n)
        ]

        def concat(*xs):
            return {k: tf.concat([x[k] for x in xs], axis=0) for k in xs[0]}

        print(f"multiprocess_driver: emulating {n} data shards", file=sys.stderr, flush=True)
        return tf.data.Dataset.zip(tuple(parts)).map(concat).unbatch()

    seqio.get_dataset = get_dataset


if __name__ == "__main__":
    shards = int(os.environ.get("IQLEARN_TEST_EMULATE_SHARDS", "0"))
    if shards > 1:
        _emulate_shards(shards, int(os.environ["IQLEARN_TEST_EMULATE_BATCH"]))
    from iqlearn_jax.train import console_main

    sys.exit(console_main())
