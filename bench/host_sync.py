r"""How long the host waits for the device per train step: reading metrics every step vs steps in flight.

    python bench/host_sync.py                        # T5.1.1-tiny sizes on the synthetic task, 40 steps x 8 rounds
    python bench/host_sync.py --steps=400 --log_period=100 --rounds=4

Both modes run THE train step (`trainer.build_train_step`, NaN/Inf guard inside) on batches from the real input
pipeline (`data_pipeline.TrainIterator` over `synthetic_arithmetic_1step`), with the host work of the training
loop (next batch, `shard_batch`, token count, dispatch):

- `sync`  (before, the old loop): after each step the host reads the metrics (`replicated_to_host`, floats) and
  checks them for NaN/Inf, so it waits for every step before it prepares the next batch;
- `in-flight` (after, `iqlearn_jax.train` now): the metrics stay on the device (`step_metrics.PendingMetrics`), the
  host reads them and `state.nonfinite_step` every `--log_period` steps only.

The modes alternate over `--rounds` in ABBA order (sync, in-flight, in-flight, sync, ...) after a compile/warm-up,
so machine noise hits both; the steps/s ratio is the median over rounds of in-flight/sync of the same round. Reported per mode (median over rounds): steps/s; the fraction of wall time the host spends blocked reading
metrics from the device (each such wait drains the device's queue: it idles until the host dispatches again);
and, separately, the back-pressure wait of the in-flight bound (`PendingMetrics.max_in_flight`: the host is
ahead and waits while the device still works through queued steps, so the device does not idle).
Last line: `host-blocked fraction: sync X.XX -> in-flight Y.YY; steps/s: A.A -> B.B (in-flight/sync X.XX, ...)`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import numpy as np

from iqlearn_jax import optimizers, trainer
from iqlearn_jax.data_pipeline import TrainIterator, get_dataset
from iqlearn_jax.models import EncoderDecoderModel
from iqlearn_jax.networks.t5 import T5Config, Transformer
from iqlearn_jax.objectives import Objective
from iqlearn_jax.observability import check_finite
from iqlearn_jax.partitioning import Partitioner, replicated_to_host
from iqlearn_jax.step_metrics import PendingMetrics, raise_if_nonfinite

TASK = "synthetic_arithmetic_1step"
T5_1_1_TINY = dict(
    vocab_size=384, emb_dim=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, head_dim=16,
    mlp_dim=128, mlp_activations=("gelu", "linear"), logits_via_embedding=False, dropout_rate=0.0,
)  # fmt: skip


def count_tokens(batch: dict[str, np.ndarray]) -> int:
    return int(
        np.sum(batch["encoder_input_tokens"] > 0) + np.sum(batch["decoder_target_tokens"] > 0)
    )


def run_round(mode, state, step_fn, partitioner, data, steps, log_period):
    """`steps` train steps in `mode`; returns (state, wall s, s blocked at metric reads, s of back-pressure)."""
    blocked = 0.0
    pending = PendingMetrics()
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        local = next(data)
        state, metrics = step_fn(state, partitioner.shard_batch(local))
        tokens = count_tokens(local)  # the loop's host work per step (ProgressMeter's tokens/s)
        if mode == "sync":
            t = time.perf_counter()
            host = {k: float(v) for k, v in replicated_to_host(metrics).items()}
            blocked += time.perf_counter() - t
            check_finite(i, host)
        else:
            pending.add(i, metrics, tokens)
            if i % log_period == 0 or i == steps:
                fetched = pending.fetch()
                t = time.perf_counter()
                raise_if_nonfinite(state, fetched)
                blocked += time.perf_counter() - t
    jax.block_until_ready(state)
    wall = time.perf_counter() - t0
    return state, wall, blocked + pending.read_seconds, pending.backpressure_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per mode (ABBA order)")
    parser.add_argument(
        "--log_period", type=int, default=100, help="in-flight mode: steps between reads"
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--inputs_length", type=int, default=48)
    parser.add_argument("--targets_length", type=int, default=32)
    args = parser.parse_args(argv)

    from iqlearn_jax.tasks import register_tasks

    register_tasks()
    model = EncoderDecoderModel(
        Transformer(T5Config(**T5_1_1_TINY)), objective=Objective(name="iqlearn", lam=0.1)
    )
    optimizer = optimizers.adamw(1e-3)
    partitioner = Partitioner()
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    shapes = trainer.model_feature_shapes(model, lengths, args.batch_size)
    _, shardings = trainer.abstract_train_state(model, optimizer, partitioner, shapes)
    state = trainer.init_train_state(model, optimizer, partitioner, shapes, 0, shardings)
    step_fn = trainer.build_train_step(model, optimizer, partitioner, shardings)
    data = TrainIterator(
        lambda: get_dataset(
            model, TASK, "train", lengths, partitioner.local_batch_size(args.batch_size),
            partitioner.shard_info(), 0, shuffle=True, repeat=True,
        )
    )  # fmt: skip
    state, *_ = run_round("sync", state, step_fn, partitioner, data, 20, args.log_period)  # compile

    results: dict[str, list[tuple[float, float, float]]] = {"sync": [], "in-flight": []}
    for i in range(args.rounds):
        for mode in list(results)[:: 1 if i % 2 == 0 else -1]:  # ABBA: drift in load hits both
            state, wall, blocked, backpressure = run_round(
                mode, state, step_fn, partitioner, data, args.steps, args.log_period
            )
            results[mode].append((args.steps / wall, blocked / wall, backpressure / wall))
    paired = [b[0] / a[0] for a, b in zip(results["sync"], results["in-flight"], strict=True)]
    print(
        f"backend {jax.default_backend()} ({jax.device_count()} device(s)), T5.1.1-tiny, batch "
        f"{args.batch_size}, lengths {lengths}, {args.steps} steps x {args.rounds} rounds per mode"
    )
    summary = {}
    for mode, rows in results.items():
        rate = statistics.median(r for r, _, _ in rows)
        frac = statistics.median(f for _, f, _ in rows)
        back = statistics.median(b for _, _, b in rows)
        summary[mode] = (rate, frac)
        rates = ", ".join(f"{r:.1f}" for r, _, _ in rows)
        print(
            f"{mode:>9}: {rate:7.1f} steps/s (rounds: {rates}); host blocked at metric reads "
            f"{100 * frac:5.1f}% of wall; back-pressure wait (device busy with queued steps) {100 * back:5.1f}%"
        )
    (r0, f0), (r1, f1) = summary["sync"], summary["in-flight"]
    ratio = statistics.median(paired)
    print(
        f"in-flight/sync steps/s per round (adjacent pairs): {', '.join(f'{x:.2f}' for x in paired)}"
    )
    print(
        f"host-blocked fraction: sync {f0:.2f} -> in-flight {f1:.2f}; steps/s: {r0:.1f} -> {r1:.1f} "
        f"(in-flight/sync {ratio:.2f}, median of paired rounds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
