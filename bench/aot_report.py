r"""TPU-side counterpart of the paper's Table 1: per-device memory and FLOPs of the MLE, MLE+entropy and IQLearn train
steps of T5.1.1 base / large / XL, compiled ahead of time for TPU topologies on a machine without a TPU.

    python bench/aot_report.py                              # everything (resumes: finished compiles are kept)
    python bench/aot_report.py --models=base --topologies=v4:2x2x4
    python bench/aot_report.py --table_only                 # just rebuild the table from the saved JSON

Every figure comes from `python -m iqlearn_jax.aot ... --json=...` (one subprocess per compile: the CLI users run,
the same train step as `iqlearn_jax.train`). JSON files go to bench/results/aot/, the markdown table to
bench/results/aot_report.md (and stdout). Settings: the paper's batch sizes (32, 32, 16), inputs 512 / targets 128
tokens, Adafactor (runs/finetune.gin), dropout 0.1, bfloat16 activations, float32 parameters, one microbatch.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "aot"
TABLE = REPO / "bench" / "results" / "aot_report.md"
GiB = 1024**3

LENGTHS = {"inputs": 512, "targets": 128}
# name -> (gin file, paper batch size)
MODELS = {
    "base": ("models/t5_1_1_base.gin", 32),
    "large": ("models/t5_1_1_large.gin", 32),
    "xl": ("models/t5_1_1_xl.gin", 16),
}
OBJECTIVES = ("mle", "mle_entropy", "iqlearn")
TOPOLOGIES = ("v3:4x4", "v4:2x2x4")
# Model-parallel size per (model, topology): data-parallel where it fits, XL split so that it fits in HBM
# (and so that its batch of 16 divides the data-parallel size).
NUM_PARTITIONS = {("xl", "v3:4x4"): 4, ("xl", "v4:2x2x4"): 2}


def result_path(model: str, topology: str, objective: str) -> pathlib.Path:
    return RESULTS / f"{model}_{topology.replace(':', '_')}_{objective}.json"


def compile_one(model: str, topology: str, objective: str, timeout: int) -> dict:
    gin_file, batch = MODELS[model]
    out = result_path(model, topology, objective)
    cmd = [
        sys.executable,
        "-m",
        "iqlearn_jax.aot",
        f"--gin_file={gin_file}",
        "--gin_file=runs/finetune.gin",
        f"--gin_file=objectives/{objective}.gin",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS!r}",
        f"--gin.BATCH_SIZE={batch}",
        f"--gin.NUM_PARTITIONS={NUM_PARTITIONS.get((model, topology), 1)}",
        f"--topology={topology}",
        f"--json={out}",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.time() - t0
    if proc.returncode not in (0, 1) or not out.exists():
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    data = json.loads(out.read_text())
    data["compile_seconds"] = round(seconds, 1)
    out.write_text(json.dumps(data, indent=2))
    return data


def _fmt_gib(x: float) -> str:
    return f"{x / GiB:.2f}"


def build_table() -> str:
    rows = [
        "| model | topology (mesh data×model) | batch | objective | arguments GiB | temporaries GiB | total GiB "
        "(% of HBM) | TFLOP / device | memory ÷ MLE | FLOPs ÷ MLE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    missing = []
    for model in MODELS:
        for topology in TOPOLOGIES:
            found = {}
            for objective in OBJECTIVES:
                path = result_path(model, topology, objective)
                if path.exists():
                    found[objective] = json.loads(path.read_text())
                else:
                    missing.append(f"{model} {topology} {objective}")
            mle = found.get("mle")
            for objective, r in found.items():
                if "total_bytes" not in r:
                    rows.append(
                        f"| {model} | {topology} | {MODELS[model][1]} | {objective} | – | – | "
                        f"{r.get('error', 'does not fit')} | – | – | – |"
                    )
                    continue
                mesh = f"{r['mesh_shape']['data']}×{r['mesh_shape']['model']}"
                if mle and "total_bytes" in mle:
                    mem_ratio = f"{r['total_bytes'] / mle['total_bytes']:.4f}"
                    flop_ratio = f"{r['flops'] / mle['flops']:.4f}"
                else:
                    mem_ratio = flop_ratio = "–"
                rows.append(
                    f"| {model} ({r['num_params'] / 1e6:.0f}M) | {topology} ({mesh}, {r['device_kind']}) | "
                    f"{r['batch_size']} | {objective} | {_fmt_gib(r['argument_bytes'])} | "
                    f"{_fmt_gib(r['temp_bytes'])} | {_fmt_gib(r['total_bytes'])} "
                    f"({100 * r['total_bytes'] / r['hbm_bytes']:.0f}% of {r['hbm_bytes'] / GiB:.0f}) | "
                    f"{r['flops'] / 1e12:.3f} | {mem_ratio} | {flop_ratio} |"
                )
    notes = [
        "",
        f"Inputs {LENGTHS['inputs']} / targets {LENGTHS['targets']} tokens, Adafactor, dropout 0.1, bfloat16 "
        "activations, float32 parameters; per-device figures from XLA:TPU (`memory_analysis`, `cost_analysis`) of "
        "the compiled train step. total = arguments + outputs − donated (aliased) + temporaries + code. A v3 "
        "device is one TensorCore (16 GiB, 2 per chip); a v4 device is one chip (megacore, 32 GiB).",
    ]
    if missing:
        notes.append(
            f"Not yet compiled: {', '.join(missing)} (run bench/aot_report.py to fill in)."
        )
    return "\n".join(rows + notes) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument(
        "--force", action="store_true", help="recompile even when a JSON result exists"
    )
    parser.add_argument("--table_only", action="store_true")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per compile")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for model in args.models.split(","):
            for topology in args.topologies.split(","):
                for objective in args.objectives.split(","):
                    if result_path(model, topology, objective).exists() and not args.force:
                        continue
                    t0 = time.time()
                    r = compile_one(model, topology, objective, args.timeout)
                    status = "fits" if r.get("fits") else "DOES NOT FIT"
                    print(
                        f"{model} {topology} {objective}: {status}, "
                        f"total {r.get('total_bytes', 0) / GiB:.2f} GiB, {r.get('flops', 0) / 1e12:.3f} TFLOP "
                        f"({time.time() - t0:.0f}s)",
                        flush=True,
                    )
                    TABLE.write_text(build_table())
    table = build_table()
    TABLE.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
