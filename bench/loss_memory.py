r"""Peak memory and step time of the train step with the vocabulary-chunked loss vs the full-logits reference.

    python bench/loss_memory.py                                  # CPU memory + CPU time + TPU v4:2x2x1 memory
    python bench/loss_memory.py --vocabs=32128,128256 --topology=none --reps=3

Both steps are THE train step of `iqlearn_jax.trainer.build_train_step` (Adafactor, IQLearn λ = 0.1, dropout 0.1)
on the same model and batch, once with `Objective.vocab_chunk_size=None` (logits [batch, length, vocab] float32)
and once with `vocab_chunk_size=--chunk_size` (iqlearn_jax.chunked_loss). Reported per vocabulary:

  * peak memory of the compiled step from XLA's memory analysis: arguments + outputs − aliased (donated state)
    + temporaries, per device; on this host's CPU backend and, via `iqlearn_jax.aot` (libtpu, compile only, no TPU
    needed), for the TPU topology `--topology` with bfloat16 activations;
  * step time on this host's CPU (--time_vocab only, same batch: median of --reps interleaved steps after warm-up).

The model has T5.1.1-small widths (d_model 512, 6 heads, d_ff 1024, untied `logits_dense`) but 2 + 2 layers (so
that it compiles in minutes on a loaded 2-core machine), at batch 32 × (inputs 128, targets 256): 8192 target tokens
per step (T5X fine-tuning runs hold a few thousand to tens of thousands per device), where the float32 logits (32 MiB
per 1000 vocabulary rows) are a large part of the step. The saving is ≈ a fixed number of logits-sized buffers, so the
ratio depends on tokens per device: `--batch_size` changes it (the TPU topology's devices share the batch). The last line is `chunked/full peak-memory ratio @32k: X.XX; @128k: X.XX; step-time ratio @32k: X.XX`
(CPU memory ratios; the TPU ones are in the table above it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import jax
from step_time import make_batch  # bench/ is sys.path[0] when a bench script runs

from iqlearn_jax import optimizers, trainer
from iqlearn_jax.models import EncoderDecoderModel
from iqlearn_jax.networks.t5 import T5Config, Transformer
from iqlearn_jax.objectives import Objective
from iqlearn_jax.partitioning import Partitioner

MiB = 2**20
T5_1_1_SMALL = dict(
    emb_dim=512, num_heads=6, num_encoder_layers=2, num_decoder_layers=2, head_dim=64, mlp_dim=1024,
    mlp_activations=("gelu", "linear"), logits_via_embedding=False, dropout_rate=0.1,
)  # fmt: skip


def build(vocab: int, chunk: int | None, dtype: str, lam: float) -> EncoderDecoderModel:
    network = Transformer(T5Config(vocab_size=vocab, dtype=dtype, **T5_1_1_SMALL))
    objective = Objective(name="iqlearn", lam=lam, vocab_chunk_size=chunk)
    return EncoderDecoderModel(network, objective=objective)


def compiled_step(model, partitioner: Partitioner, shapes) -> tuple[Any, Any, int]:
    """(compiled step, state shardings, peak bytes per device from XLA's memory analysis)."""
    optimizer = optimizers.adafactor(1e-3)
    abstract, shardings = trainer.abstract_train_state(model, optimizer, partitioner, shapes)
    step = trainer.build_train_step(model, optimizer, partitioner, shardings)
    compiled = step.lower(abstract, trainer.abstract_batch(shapes, partitioner)).compile()
    mem = compiled.memory_analysis()
    peak = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    return compiled, shardings, int(peak)


def time_steps(compiled: dict, states: dict, batch, reps: int, warmup: int) -> tuple[dict, dict]:
    """Median seconds per step of each compiled train step, steps interleaved."""
    times = {name: [] for name in compiled}
    for rep in range(warmup + reps):
        for name, step in compiled.items():
            t0 = time.perf_counter()
            states[name], metrics = step(states[name], batch)
            jax.block_until_ready((states[name], metrics))
            if rep >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, times


def tpu_memory(topology: str, vocab: int, chunk: int, args) -> tuple[int, int] | None:
    """(full, chunked) peak bytes per device of the step compiled for a TPU topology, or None without libtpu."""
    from iqlearn_jax import aot

    ok, why = aot.libtpu_available()
    if not ok:
        print(f"TPU compile skipped: {why}")
        return None
    topo = aot.get_topology(topology)
    partitioner = Partitioner(devices=list(topo.devices))
    shapes = feature_shapes(args)
    out = []
    for c in (None, chunk):
        _, _, peak = compiled_step(build(vocab, c, "bfloat16", args.lam), partitioner, shapes)
        out.append(peak)
    return out[0], out[1]


def feature_shapes(args) -> dict:
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    return trainer.model_feature_shapes(
        build(32128, None, "float32", 0.1), lengths, args.batch_size
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--vocabs",
        default="32128,128256",
        help="comma-separated vocabulary sizes (first ~32k, last ≥128k)",
    )
    p.add_argument("--chunk_size", type=int, default=4096)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--inputs_length", type=int, default=128)
    p.add_argument("--targets_length", type=int, default=256)
    p.add_argument(
        "--time_vocab", type=int, default=32128, help="vocabulary of the CPU step-time comparison"
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument(
        "--topology",
        default="v4:2x2x1",
        help="TPU topology for the AOT memory figures; 'none' skips",
    )
    args = p.parse_args(argv)
    vocabs = [int(v) for v in args.vocabs.split(",")]

    partitioner = Partitioner(devices=jax.local_devices()[:1])
    shapes = feature_shapes(args)
    tokens = args.batch_size * args.targets_length
    print(
        f"T5.1.1-small widths, 2+2 layers (d_model 512, untied head), batch {args.batch_size} x (inputs "
        f"{args.inputs_length}, targets {args.targets_length}) = {tokens} target tokens, IQLearn lam={args.lam}, "
        f"Adafactor, chunk {args.chunk_size}; CPU backend {jax.local_devices()[0].device_kind}, 1 device"
    )
    print(
        "| vocab | where | full logits MiB | full step peak MiB | chunked step peak MiB | chunked/full |"
    )
    print("|---|---|---|---|---|---|")
    cpu_ratio, compiled, states = {}, {}, {}
    optimizer = optimizers.adafactor(1e-3)
    for vocab in vocabs:
        peaks = []
        for name, c in (("full", None), ("chunked", args.chunk_size)):
            model = build(vocab, c, "float32", args.lam)
            step, shardings, peak = compiled_step(model, partitioner, shapes)
            peaks.append(peak)
            if vocab == args.time_vocab:  # the same compiled steps are timed below
                compiled[name] = step
                states[name] = trainer.init_train_state(
                    model, optimizer, partitioner, shapes, 0, shardings
                )
        cpu_ratio[vocab] = peaks[1] / peaks[0]
        logits_mib = tokens * vocab * 4 / MiB
        print(
            f"| {vocab} | CPU (XLA memory analysis) | {logits_mib:.0f} | {peaks[0] / MiB:.0f} | "
            f"{peaks[1] / MiB:.0f} | {cpu_ratio[vocab]:.2f} |",
            flush=True,
        )
        if args.topology != "none":
            tpu = tpu_memory(args.topology, vocab, args.chunk_size, args)
            if tpu is not None:
                print(
                    f"| {vocab} | TPU {args.topology} per device (AOT, bf16 activations) | "
                    f"{logits_mib / 4:.0f} | {tpu[0] / MiB:.0f} | {tpu[1] / MiB:.0f} | {tpu[1] / tpu[0]:.2f} |",
                    flush=True,
                )

    batch = partitioner.shard_batch(
        make_batch(args.batch_size, args.inputs_length, args.targets_length, args.time_vocab)
    )
    medians, times = time_steps(compiled, states, batch, args.reps, args.warmup)
    step_ratio = medians["chunked"] / medians["full"]
    print(
        f"CPU step time @{args.time_vocab} (same batch), {args.warmup} warm-up + {args.reps} interleaved steps: "
        f"full median {1e3 * medians['full']:.0f} ms (min {1e3 * min(times['full']):.0f}), chunked median "
        f"{1e3 * medians['chunked']:.0f} ms (min {1e3 * min(times['chunked']):.0f}); min ratio "
        f"{min(times['chunked']) / min(times['full']):.3f}"
    )
    small, large = vocabs[0], vocabs[-1]
    print(
        f"chunked/full peak-memory ratio @32k: {cpu_ratio[small]:.2f}; @128k: {cpu_ratio[large]:.2f}; "
        f"step-time ratio @32k: {step_ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
