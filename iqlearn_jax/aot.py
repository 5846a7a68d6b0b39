r"""Ahead-of-time compile of THE train step for a Cloud TPU topology, on a machine without a TPU.

    python -m iqlearn_jax.aot --gin_file=models/t5_1_1_base.gin --gin_file=runs/finetune.gin \
        --gin_file=objectives/iqlearn.gin --gin.TASK_FEATURE_LENGTHS="{'inputs': 1024, 'targets': 256}" \
        --topology=v4:2x2x4 [--gin.NUM_PARTITIONS=2] [--json=/tmp/aot.json]

The model, objective, optimizer, partitioner (mesh + logical rules) and train step come from the same gin
configuration and the same functions as `iqlearn_jax.train` (`train.parse_gin`, the `train.train` bindings,
`trainer.abstract_train_state`, `trainer.build_train_step`); only the devices differ: the mesh is built from the
compile-only devices of the TPU topology (`jax.experimental.topologies`, backed by `libtpu`). Inputs are abstract
(`jax.ShapeDtypeStruct` with shardings): no parameter is materialised. The compiled executable's
`memory_analysis()` gives per-device bytes and `cost_analysis()` the FLOPs and bytes accessed of one device's
program (SPMD: every device runs the same partitioned program).

A "device" is what JAX on that pod would list: one TensorCore on v2/v3 (2 per chip, each with half the chip's
HBM), one chip on v4/v5p (megacore, both TensorCores as one device), one chip on v5e/v6e (a single TensorCore).

Exit status: 0 fits, 1 does not fit in HBM (the message says by how much), 2 bad input (configuration, topology).

libtpu, without a TPU, probes the VM metadata and prints warnings about TPU_ACCELERATOR_TYPE and
TPU_WORKER_HOSTNAMES. Both only describe the attached hardware, which a compile-only topology does not use, so this
module sets them (unless already set) to the topology's accelerator type and `localhost` before libtpu loads, and
sets ALLOW_MULTIPLE_LIBTPU_LOAD=1 so that several compiling processes (tests, sweeps) do not fight over libtpu's
lock file (/tmp/libtpu_lockfile).
"""

from __future__ import annotations

if (
    __name__ == "__main__"
):  # `python -m iqlearn_jax.aot`: run the importable module, so gin binds one copy.
    import sys

    from iqlearn_jax.aot import console_main

    sys.exit(console_main())

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np
from absl import flags, logging

GiB = 1024**3

# HBM per chip in GiB and TensorCores per chip, by JAX's `device_kind`.
CHIP_HBM_GIB: dict[str, float] = {
    "TPU v2": 16.0,
    "TPU v3": 32.0,
    "TPU v4": 32.0,
    "TPU v5 lite": 16.0,  # v5e
    "TPU v5": 95.0,  # v5p
    "TPU v5p": 95.0,
    "TPU v6 lite": 32.0,  # v6e (Trillium)
}
# chip_config_name JAX uses on the real hardware: megacore (one device per chip) where the chip has 2 cores that
# JAX fuses; 'default' elsewhere (v2/v3: one device per core; v5e/v6e: one core per chip).
_MEGACORE_GENERATIONS = ("v4", "v5p")

_TOPOLOGY = flags.DEFINE_string(
    "topology",
    None,
    "TPU topology to compile for, e.g. v4:2x2x4, v3:4x4, v5e:2x2, v5p:2x2x1, v6e:2x2",
)
_CHIP_CONFIG = flags.DEFINE_enum(
    "chip_config",
    None,
    ["default", "megacore"],
    "libtpu chip config; default: megacore on v4/v5p (as JAX on the real pod), default elsewhere",
)
_HBM_GIB = flags.DEFINE_float(
    "hbm_gib", None, "HBM per device in GiB (default: from the table of chip generations)"
)
_JSON = flags.DEFINE_string("json", None, "also write the figures to this JSON file")


class FitError(RuntimeError):
    """The compiled step needs more memory per device than the chip has (exit status 1)."""


# ---- topology -------------------------------------------------------------------------------------------------
_TOPOLOGY_RE = re.compile(r"^(v[0-9]+[a-z]*):([0-9]+(?:x[0-9]+)*)$")


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
    """'v4:2x2x4' -> ('v4', (2, 2, 4)); raises ValueError naming the expected form."""
    match = _TOPOLOGY_RE.match(name or "")
    if not match:
        raise ValueError(
            f"--topology={name!r} is not a TPU topology name; expected GENERATION:AxBxC, e.g. "
            "v4:2x2x4, v3:4x4, v5e:2x2, v5p:2x2x1, v6e:2x2"
        )
    return match.group(1), tuple(int(d) for d in match.group(2).split("x"))


def accelerator_type(topology: str) -> str:
    """Cloud TPU accelerator type of a topology ('v4:2x2x4' -> 'v4-32'): cores for v2-v4/v5p, chips for v5e/v6e."""
    generation, dims = parse_topology(topology)
    chips = math.prod(dims)
    if generation in ("v5e", "v5litepod"):
        return f"v5litepod-{chips}"
    if generation == "v6e":
        return f"v6e-{chips}"
    return f"{generation}-{2 * chips}"


def configure_libtpu_env(topology: str) -> None:
    """Environment for a compile-only libtpu on a host without TPUs (must run before libtpu first loads)."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type(topology))
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def libtpu_available() -> tuple[bool, str]:
    """(True, version) when libtpu can be imported, else (False, reason)."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        return False, f"libtpu is not installed ({e}); pip install 'iqlearn_jax[tpu]'"
    try:
        from importlib import metadata

        return True, metadata.version("libtpu")
    except Exception:  # noqa: BLE001 - version is informational only
        return True, "unknown"


@dataclasses.dataclass(frozen=True)
class TopologyInfo:
    """Compile-only devices of a TPU topology and their HBM.

    devices: what JAX on that pod would list (see the module docstring for what one device is).
    hbm_per_device: bytes of HBM of one device (chip HBM / devices per chip).
    """

    name: str
    devices: tuple[Any, ...]
    device_kind: str
    num_chips: int
    devices_per_chip: int
    chip_config: str
    hbm_per_device: int


def get_topology(
    name: str, chip_config: str | None = None, hbm_gib: float | None = None
) -> TopologyInfo:
    """The compile-only devices of `name` (e.g. 'v4:2x2x4'), via libtpu; no TPU needed."""
    generation, _ = parse_topology(name)
    ok, why = libtpu_available()
    if not ok:
        raise RuntimeError(why)
    configure_libtpu_env(name)
    from jax.experimental import topologies

    chip_config = chip_config or ("megacore" if generation in _MEGACORE_GENERATIONS else "default")
    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=name, chip_config_name=chip_config
        )
    except Exception as e:  # noqa: BLE001 - libtpu raises JaxRuntimeError / ValueError for unknown names
        raise ValueError(f"libtpu cannot describe topology {name!r} ({chip_config}): {e}") from e
    devices = tuple(desc.devices)
    kind = devices[0].device_kind
    chips = {tuple(getattr(d, "coords", (d.id,))) for d in devices}
    per_chip = len(devices) // max(len(chips), 1)
    if hbm_gib is None:
        if kind not in CHIP_HBM_GIB:
            raise ValueError(
                f"unknown HBM size of device kind {kind!r} (known: {sorted(CHIP_HBM_GIB)}); pass --hbm_gib"
            )
        hbm = int(CHIP_HBM_GIB[kind] * GiB) // per_chip
    else:
        hbm = int(hbm_gib * GiB)
    return TopologyInfo(name, devices, kind, len(chips), per_chip, chip_config, hbm)


# ---- the figures -----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class AotReport:
    """Per-device memory (bytes) and per-device cost of one compiled train step.

    total = arguments + outputs - aliased (donated state reuses its input buffers) + temporaries + generated code.
    flops / bytes_accessed: XLA's cost analysis of one device's partitioned program; total_flops = flops × devices.
    """

    topology: str
    device_kind: str
    num_devices: int
    num_chips: int
    devices_per_chip: int
    mesh_shape: dict[str, int]
    objective: str
    batch_size: int
    feature_lengths: dict[str, int]
    num_microbatches: int
    activation_dtype: str
    num_params: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    generated_code_bytes: int
    total_bytes: int
    hbm_bytes: int
    flops: float
    bytes_accessed: float
    total_flops: float
    fits: bool
    libtpu_version: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fit_message(self) -> str:
        used, hbm = self.total_bytes / GiB, self.hbm_bytes / GiB
        if self.fits:
            return f"fits: {used:.2f} GiB of {hbm:.2f} GiB HBM per device ({100 * used / hbm:.1f}%)"
        over = used - hbm
        return (
            f"does not fit: the step needs {used:.2f} GiB per device but a {self.device_kind} device has "
            f"{hbm:.2f} GiB HBM: over by {over:.2f} GiB ({100 * over / hbm:.1f}% more than HBM). Use more model "
            "parallelism (--gin.NUM_PARTITIONS), microbatches (--gin.NUM_MICROBATCHES) or a smaller batch."
        )

    def format(self) -> str:
        def gib(x: float) -> str:
            return f"{x / GiB:10.3f} GiB"

        mesh = " x ".join(f"{k}={v}" for k, v in self.mesh_shape.items())
        lines = [
            f"topology {self.topology}: {self.num_devices} x {self.device_kind} devices on {self.num_chips} chips "
            f"({self.devices_per_chip} per chip), mesh {mesh}, libtpu {self.libtpu_version}",
            f"objective {self.objective}, batch {self.batch_size}, lengths {self.feature_lengths}, "
            f"microbatches {self.num_microbatches}, activations {self.activation_dtype}, "
            f"{self.num_params / 1e6:.1f}M params",
            "per-device memory:",
            f"  arguments      {gib(self.argument_bytes)}",
            f"  outputs        {gib(self.output_bytes)}",
            f"  aliased        {gib(self.alias_bytes)}  (donated train state, counted once)",
            f"  temporaries    {gib(self.temp_bytes)}",
            f"  code           {gib(self.generated_code_bytes)}",
            f"  total          {gib(self.total_bytes)}  of {gib(self.hbm_bytes)} HBM "
            f"({100 * self.total_bytes / self.hbm_bytes:.1f}%)",
            f"per-device step cost: {self.flops / 1e12:.4f} TFLOP, {self.bytes_accessed / GiB:.3f} GiB accessed "
            f"(whole step on all devices: {self.total_flops / 1e12:.3f} TFLOP)",
            self.fit_message(),
        ]
        return "\n".join(lines)


def _cost(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# The two forms XLA:TPU uses: "Used 45.2G of 15.48G hbm. Exceeded hbm capacity by 29.7G." and
# "the total memory required for HLO temporaries (137.70G) exceeds available HBM (15.75G)".
_XLA_OOM_PATTERNS = (
    re.compile(r"Used ([0-9.]+)([KMGT]?) of ([0-9.]+)([KMGT]?) hbm"),
    re.compile(r"\(([0-9.]+)([KMGT]?)\) exceeds available HBM \(([0-9.]+)([KMGT]?)\)"),
)


def _compiler_oom_message(error: Exception, topo: TopologyInfo) -> str | None:
    """The fit message when XLA:TPU itself refuses to compile for lack of HBM (None for other errors)."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
        return None
    first = text.strip().splitlines()[0][:400]
    advice = "Use more model parallelism (--gin.NUM_PARTITIONS), microbatches (--gin.NUM_MICROBATCHES) or a smaller batch."
    for pattern in _XLA_OOM_PATTERNS:
        match = pattern.search(text)
        if match:
            need = float(match.group(1)) * _UNITS[match.group(2)] / GiB
            have = float(match.group(3)) * _UNITS[match.group(4)] / GiB
            return (
                f"does not fit: the step needs at least {need:.2f} GiB per device but a {topo.device_kind} device "
                f"has {have:.2f} GiB usable HBM: over by {need - have:.2f} GiB "
                f"({100 * (need - have) / have:.1f}% more than HBM). {advice} [XLA: {first}]"
            )
    return f"does not fit: the XLA:TPU compiler ran out of HBM on {topo.device_kind}. {advice} [XLA: {first}]"


# ---- building the step through the training code ---------------------------------------------------------------
_TOPOLOGY_DEVICES: tuple[Any, ...] = ()


@gin.configurable("iqlearn_aot_topology_devices")
def topology_devices() -> list[Any]:
    """The compile-only devices of the topology being compiled for (bound as the Partitioner's devices)."""
    if not _TOPOLOGY_DEVICES:
        raise RuntimeError("no TPU topology selected (iqlearn_jax.aot.build_and_compile sets it)")
    return list(_TOPOLOGY_DEVICES)


def _activation_dtype_for_tpu() -> str:
    """Rebinds network configs whose activation dtype is 'auto' to bfloat16 (what 'auto' means on a TPU: the
    compiling host's CPU backend would otherwise resolve it to float32). Returns the dtype in effect."""
    found = "float32"
    for selector in ("T5Config", "DecoderOnlyConfig"):
        try:
            bound = gin.get_bindings(selector).get("dtype")
        except (ValueError, KeyError):
            continue
        if bound == "auto":
            with gin.unlock_config():
                gin.bind_parameter(f"{selector}.dtype", "bfloat16")
            bound = "bfloat16"
        if bound is not None:
            found = str(bound)
    return found


def build_and_compile(topo: TopologyInfo, libtpu_version: str = "unknown") -> AotReport:
    """Compiles the train step configured in gin (already parsed) for `topo` and returns its figures.

    Reads the same bindings as `iqlearn_jax.train.train`: model, optimizer, learning_rate_fn, partitioner,
    task_feature_lengths, batch_size, num_microbatches, pack, seed.
    """
    from iqlearn_jax import optimizers, partitioning, trainer
    from iqlearn_jax import train as train_lib

    activation_dtype = _activation_dtype_for_tpu()
    global _TOPOLOGY_DEVICES
    _TOPOLOGY_DEVICES = tuple(topo.devices)
    with (
        gin.unlock_config()
    ):  # a reference, evaluated when gin builds the Partitioner (values would be copied)
        gin.parse_config(
            "iqlearn_jax.partitioning.Partitioner.devices = @iqlearn_aot_topology_devices()"
        )
    bindings = gin.get_bindings(train_lib.train)
    missing = [
        k
        for k in ("model", "task_feature_lengths", "batch_size")
        if bindings.get(k) in (None, gin.REQUIRED)
    ]
    if missing:
        raise train_lib.ConfigError(
            f"train.train.{missing[0]} is required but not set (bind it in a gin file or --gin.train.train.{missing[0]}=...)"
        )
    model = bindings["model"]
    batch_size = int(bindings["batch_size"])
    lengths = dict(bindings["task_feature_lengths"])
    num_microbatches = int(bindings.get("num_microbatches", 1))
    learning_rate_fn = bindings.get("learning_rate_fn")
    optimizer = bindings.get("optimizer")
    if optimizer is None:  # train.train's documented default
        learning_rate_fn = learning_rate_fn or optimizers.warmup_constant(1e-4, 2000)
        optimizer = optimizers.adafactor(learning_rate_fn)
    partitioner = bindings.get("partitioner") or partitioning.Partitioner()
    if set(partitioner.mesh.devices.flat) != set(topo.devices):
        raise train_lib.ConfigError(
            "the configured partitioner does not use the topology's devices"
        )
    if batch_size % num_microbatches or (batch_size // num_microbatches) % partitioner.data_size:
        raise train_lib.ConfigError(
            f"batch_size={batch_size} must split into num_microbatches={num_microbatches} microbatches "
            f"divisible by the data-parallel size {partitioner.data_size} (mesh {dict(partitioner.mesh.shape)})"
        )

    shapes = trainer.model_feature_shapes(
        model, lengths, batch_size, pack=bool(bindings.get("pack", False))
    )
    abstract_state, shardings = trainer.abstract_train_state(
        model, optimizer, partitioner, shapes, int(bindings.get("seed", 0))
    )
    step = trainer.build_train_step(
        model, optimizer, partitioner, shardings, num_microbatches, learning_rate_fn
    )
    lowered = step.lower(abstract_state, trainer.abstract_batch(shapes, partitioner))
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA raises JaxRuntimeError
        message = _compiler_oom_message(e, topo)
        if message is not None:
            raise FitError(message) from e
        raise

    mem = compiled.memory_analysis()
    cost = _cost(compiled)
    total = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
        + mem.generated_code_size_in_bytes
    )
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(abstract_state.params))
    objective = getattr(getattr(model, "objective", None), "name", "unknown")
    flops = float(cost.get("flops", 0.0))
    return AotReport(
        topology=topo.name,
        device_kind=topo.device_kind,
        num_devices=len(topo.devices),
        num_chips=topo.num_chips,
        devices_per_chip=topo.devices_per_chip,
        mesh_shape={str(k): int(v) for k, v in partitioner.mesh.shape.items()},
        objective=str(objective),
        batch_size=batch_size,
        feature_lengths={k: int(v) for k, v in lengths.items()},
        num_microbatches=num_microbatches,
        activation_dtype=activation_dtype,
        num_params=num_params,
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        generated_code_bytes=int(mem.generated_code_size_in_bytes),
        total_bytes=int(total),
        hbm_bytes=int(topo.hbm_per_device),
        flops=flops,
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        total_flops=flops * len(topo.devices),
        fits=total <= topo.hbm_per_device,
        libtpu_version=libtpu_version,
    )


# ---- CLI ------------------------------------------------------------------------------------------------------
# Macros of runs/finetune.gin that only the training loop reads (output folder, data): harmless placeholders
# here, so a run configuration compiles without them. Bindings given on the command line win.
_PLACEHOLDER_BINDINGS = ("MODEL_DIR = '/nonexistent/aot'", "MIXTURE_OR_TASK_NAME = 'aot_unused'")


def run(
    topology: str,
    gin_files: Sequence[str],
    gin_bindings: Sequence[str],
    gin_search_paths: Sequence[str] = (),
    chip_config: str | None = None,
    hbm_gib: float | None = None,
) -> AotReport:
    """Parses gin like `iqlearn_jax.train`, compiles for `topology`, returns the report (raises on errors)."""
    from iqlearn_jax import train as train_lib

    ok, version = libtpu_available()
    if not ok:
        raise RuntimeError(version)
    topo = get_topology(topology, chip_config, hbm_gib)
    train_lib.parse_gin(gin_files, [*_PLACEHOLDER_BINDINGS, *gin_bindings], gin_search_paths)
    return build_and_compile(topo, version)


def main(argv: Sequence[str]) -> int:
    from iqlearn_jax import train as train_lib

    if len(argv) > 1:
        print(f"iqlearn-aot: error: unexpected arguments {list(argv[1:])}", file=sys.stderr)
        return 2
    if not _TOPOLOGY.value:
        print(
            "iqlearn-aot: error: --topology is required (e.g. --topology=v4:2x2x4)", file=sys.stderr
        )
        return 2
    try:
        report = run(
            _TOPOLOGY.value,
            train_lib._GIN_FILE.value,  # noqa: SLF001 - the same flags as iqlearn-train
            train_lib._GIN_BINDINGS.value,  # noqa: SLF001
            train_lib._GIN_SEARCH_PATHS.value,  # noqa: SLF001
            _CHIP_CONFIG.value,
            _HBM_GIB.value,
        )
    except FitError as e:
        print(f"iqlearn-aot: {e}", file=sys.stderr)
        _write_json({"topology": _TOPOLOGY.value, "fits": False, "error": str(e)})
        return 1
    except (train_lib.ConfigError, ValueError, TypeError, RuntimeError) as e:
        print(f"iqlearn-aot: error: {e}", file=sys.stderr)
        return 2
    print(report.format(), flush=True)
    _write_json(report.to_dict())
    if not report.fits:
        print(f"iqlearn-aot: {report.fit_message()}", file=sys.stderr)
        return 1
    return 0


def _write_json(data: Mapping[str, Any]) -> None:
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(data, f, indent=2)


def console_main() -> int:
    """Entry point of `iqlearn-aot` and `python -m iqlearn_jax.aot`."""
    from iqlearn_jax import train  # noqa: F401  (defines --gin_file / --gin_bindings / --gin_search_paths)
    from iqlearn_jax.gin_utils import run_cli

    logging.set_verbosity(logging.WARNING)
    return run_cli(
        main, quiet_tpu=False
    )  # configure_libtpu_env sets the TPU variables for the topology
