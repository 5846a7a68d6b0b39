"""Multi-process start-up: decides whether and how to call `jax.distributed.initialize`, before JAX touches a device.

Every process of a job runs the same command; `maybe_initialize_distributed()` reads the environment and picks the
first matching way the job was launched:

| launch | what is read | initialisation |
|---|---|---|
| by hand | `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` | all three passed explicitly (jax itself reads only the address) |
| SLURM (`srun`) | `SLURM_NTASKS` > 1 and jax's SLURM variables | `jax.distributed.initialize()`, jax's SLURM detection |
| Open MPI (`mpirun`) | `OMPI_COMM_WORLD_SIZE` > 1 with `OMPI_MCA_orte_hnp_uri` | `jax.distributed.initialize()`, jax's Open MPI detection |
| Cloud TPU VM pod slice | jax found a TPU VM (libtpu + TPU chips) and the slice has > 1 worker | `jax.distributed.initialize()`, jax's TPU detection |
| anything else | — | none: one process |

`IQLEARN_DISTRIBUTED=1` forces the no-argument `jax.distributed.initialize()` (jax's own detection; what
launch/tpu_vm.sh sets on TPU VMs), `IQLEARN_DISTRIBUTED=0` forbids initialisation. Partial or malformed settings raise
`ConfigError` (exit status 2) naming the missing or bad variable.

TPU worker count, in jax's own order of sources (jax/_src/clusters/cloud_tpu_cluster.py): `TPU_PROCESS_ADDRESSES`
or `TPU_WORKER_HOSTNAMES` (set by GKE), then `MEGASCALE_NUM_SLICES` (multislice), then the GCE metadata server's
instance attribute `worker-network-endpoints` (one comma-separated entry per worker of a TPU VM slice). What was
verified here (no TPU at hand): the variables and attributes jax 0.10.2's detection reads, by reading that file;
what is assumed: that a plain `gcloud compute tpus tpu-vm create` VM serves `worker-network-endpoints` (jax's
`GceTpuCluster` relies on the same attribute, and on `agent-worker-number` for the process id).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging

from iqlearn_jax.gin_utils import ConfigError

COORDINATOR = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES = "JAX_NUM_PROCESSES"
PROCESS_ID = "JAX_PROCESS_ID"
MODE = "IQLEARN_DISTRIBUTED"
# Variables jax's SlurmCluster needs (jax/_src/clusters/slurm_cluster.py); srun sets them for each task.
SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)
_METADATA_URL = "http://{host}/computeMetadata/v1/instance/attributes/{key}"


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """How this process joins the job.

    Attributes:
      kind: 'single', 'manual', 'slurm', 'ompi', 'tpu' or 'forced' (IQLEARN_DISTRIBUTED=1).
      initialize_kwargs: arguments for `jax.distributed.initialize` (None: do not initialise).
      reason: one line naming what was detected, for the log.
    """

    kind: str
    initialize_kwargs: dict[str, Any] | None
    reason: str


def _int_var(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env[name].strip()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} must be an integer >= {minimum}") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be an integer >= {minimum}")
    return value


def _check_address(address: str) -> str:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{COORDINATOR}={address!r} must be HOST:PORT of process 0 (e.g. 10.0.0.2:1234), with a port "
            "in 1..65535"
        )
    return address.strip()


def _manual_plan(env: Mapping[str, str]) -> LaunchPlan:
    missing = [v for v in (COORDINATOR, NUM_PROCESSES, PROCESS_ID) if not env.get(v, "").strip()]
    if missing:
        raise ConfigError(
            f"a hand-launched multi-process job needs {COORDINATOR}, {NUM_PROCESSES} and {PROCESS_ID} on every "
            f"process; missing: {', '.join(missing)}"
        )
    address = _check_address(env[COORDINATOR])
    num = _int_var(env, NUM_PROCESSES, 1)
    pid = _int_var(env, PROCESS_ID, 0)
    if pid >= num:
        raise ConfigError(f"{PROCESS_ID}={pid} must be in 0..{num - 1} ({NUM_PROCESSES}={num})")
    kwargs = {"coordinator_address": address, "num_processes": num, "process_id": pid}
    return LaunchPlan("manual", kwargs, f"{COORDINATOR}={address}, process {pid} of {num}")


def _slurm_plan(env: Mapping[str, str]) -> LaunchPlan | None:
    if "SLURM_NTASKS" not in env or "SLURM_JOB_ID" not in env:
        return None
    if _int_var(env, "SLURM_NTASKS", 1) <= 1:
        return None
    missing = [v for v in SLURM_VARS if v not in env]
    if missing:
        raise ConfigError(
            f"SLURM_NTASKS={env['SLURM_NTASKS']} but {', '.join(missing)} not set: start every task with "
            "`srun` (inside sbatch), which sets them, or launch by hand with "
            f"{COORDINATOR}/{NUM_PROCESSES}/{PROCESS_ID}"
        )
    return LaunchPlan(
        "slurm",
        {},
        f"SLURM job {env['SLURM_JOB_ID']}, task {env['SLURM_PROCID']} of {env['SLURM_NTASKS']}",
    )


def _ompi_plan(env: Mapping[str, str]) -> LaunchPlan | None:
    if "OMPI_COMM_WORLD_SIZE" not in env or _int_var(env, "OMPI_COMM_WORLD_SIZE", 1) <= 1:
        return None
    size, rank = env["OMPI_COMM_WORLD_SIZE"], env.get("OMPI_COMM_WORLD_RANK", "?")
    if "OMPI_MCA_orte_hnp_uri" in env:
        return LaunchPlan("ompi", {}, f"Open MPI rank {rank} of {size}")
    # Open MPI >= 5 (PMIx) sets no ORTE URI: the address from the user, count and rank from MPI.
    if env.get(COORDINATOR, "").strip():
        kwargs = {
            "coordinator_address": _check_address(env[COORDINATOR]),
            "num_processes": _int_var(env, "OMPI_COMM_WORLD_SIZE", 1),
            "process_id": _int_var(env, "OMPI_COMM_WORLD_RANK", 0),
        }
        return LaunchPlan("ompi", kwargs, f"Open MPI rank {rank} of {size}, {COORDINATOR} given")
    raise ConfigError(
        f"Open MPI job (OMPI_COMM_WORLD_SIZE={size}) without OMPI_MCA_orte_hnp_uri (Open MPI >= 5): set "
        f"{COORDINATOR}=HOST:PORT of rank 0 on every rank"
    )


def running_on_cloud_tpu_vm() -> bool:
    """True when jax found libtpu and TPU chips at import (jax's `cloud_tpu_init.running_in_cloud_tpu_vm`)."""
    try:
        import jax  # noqa: F401 - importing jax runs its Cloud TPU detection
        from jax._src import cloud_tpu_init

        return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
    except (ImportError, AttributeError):
        return False


def tpu_metadata(key: str, timeout_s: float = 5.0) -> str | None:
    """A TPU VM instance attribute from the GCE metadata server (None when unreadable)."""
    host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
    request = urllib.request.Request(
        _METADATA_URL.format(host=host, key=key), headers={"Metadata-Flavor": "Google"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.read().decode()
    except OSError as e:
        logging.warning("GCE metadata %r not readable: %s", key, e)
        return None


def tpu_worker_count(env: Mapping[str, str], metadata: Callable[[str], str | None]) -> int | None:
    """Processes of this TPU job (workers per slice × slices); None when no source says."""
    slices = int(env.get("MEGASCALE_NUM_SLICES") or 1)
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
    if hosts is None:
        hosts = metadata("worker-network-endpoints")
    if hosts is None:
        return None if slices == 1 else slices
    return len([h for h in hosts.split(",") if h.strip()]) * slices


def plan_from_env(
    env: Mapping[str, str],
    on_tpu_vm: Callable[[], bool] = running_on_cloud_tpu_vm,
    metadata: Callable[[str], str | None] = tpu_metadata,
) -> LaunchPlan:
    """The launch plan for this process (pure apart from the TPU probes, which tests replace)."""
    mode = env.get(MODE, "auto").strip().lower()
    if mode not in ("auto", "1", "0", "on", "off", "true", "false"):
        raise ConfigError(f"{MODE}={env[MODE]!r} must be auto, 1 (force) or 0 (never)")
    if mode in ("0", "off", "false"):
        return LaunchPlan("single", None, f"{MODE}={env[MODE]}")
    if env.get(NUM_PROCESSES, "").strip() or env.get(PROCESS_ID, "").strip():
        return _manual_plan(env)
    for plan in (_slurm_plan(env), _ompi_plan(env)):
        if plan is not None:
            return plan
    tpu = on_tpu_vm()
    if mode in ("1", "on", "true"):
        return LaunchPlan("forced", {}, f"{MODE}={env[MODE]} (jax's own cluster detection)")
    if tpu:
        workers = tpu_worker_count(env, metadata)
        if workers is None:
            logging.warning(
                "Cloud TPU VM with an unknown worker count (no TPU_WORKER_HOSTNAMES, metadata unreadable): "
                "running as one process; set %s=1 on every worker of a pod slice",
                MODE,
            )
        elif workers > 1:
            return LaunchPlan("tpu", {}, f"Cloud TPU VM pod slice with {workers} workers")
    if env.get(COORDINATOR, "").strip():
        if tpu:  # jax's TPU detection supplies count and id (e.g. one-worker slice with an explicit address)
            return LaunchPlan("tpu", {}, f"Cloud TPU VM, {COORDINATOR} given")
        return _manual_plan(env)  # names the two missing variables
    return LaunchPlan("single", None, "no multi-process launch detected")


# jax.distributed.initialize's own default `initialization_timeout`.
COORDINATOR_WAIT_S = 300


def wait_for_coordinator(address: str, timeout_s: float = COORDINATOR_WAIT_S) -> None:
    """Returns once something accepts TCP connections at `address` (HOST:PORT of process 0's coordinator).

    Called on processes other than 0 before `jax.distributed.initialize`, which would retry for as long and then
    abort the process (SIGABRT, blaming 'another task'): a wrong host or port is named here instead.

    Raises:
      ConfigError: nothing accepted a connection within `timeout_s` seconds, naming JAX_COORDINATOR_ADDRESS.
    """
    host, _, port = address.rpartition(":")
    start, next_warning = time.monotonic(), 0.0
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
                return
        except OSError as e:
            waited = time.monotonic() - start
            if waited >= timeout_s:
                raise ConfigError(
                    f"{COORDINATOR}={address!r}: nothing accepted a connection there within {timeout_s:.0f} s "
                    f"({e}): is process 0 running, and are its host and port right?"
                ) from None
            if waited >= next_warning:
                next_warning += 30
                logging.warning("waiting for process 0's coordinator at %s=%s (%s)", COORDINATOR, address, e)
        time.sleep(1.0)


def maybe_initialize_distributed(force: bool | None = None) -> LaunchPlan:
    """Initialises `jax.distributed` when this process is one of several (see the module docstring).

    Call it before anything touches a JAX device. Idempotent.

    Args:
      force: True initialises even when nothing is detected (jax's own detection), False never; None (default)
        follows the environment.

    Raises:
      ConfigError: partial or malformed launch variables, naming them.
    """
    import jax

    env = dict(os.environ)
    if force is not None:
        env[MODE] = "1" if force else "0"
    plan = plan_from_env(env)
    if plan.initialize_kwargs is None or jax.distributed.is_initialized():
        return plan
    address = plan.initialize_kwargs.get("coordinator_address")
    if address and plan.initialize_kwargs.get("process_id", 0) != 0:
        wait_for_coordinator(address)
    try:
        jax.distributed.initialize(**plan.initialize_kwargs)
    except ValueError as e:  # jax could not complete the settings (forced start outside a cluster)
        raise ConfigError(f"jax.distributed.initialize failed ({plan.reason}): {e}") from e
    logging.info(
        "jax.distributed initialised (%s): process %d of %d, %d local / %d global devices",
        plan.reason,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return plan


def is_primary() -> bool:
    """True on process 0, the only one that prints to the console and writes shared files."""
    import jax

    return jax.process_index() == 0


def primary_print(*args: Any, **kwargs: Any) -> None:
    """`print(..., flush=True)` on process 0 only."""
    if is_primary():
        print(*args, flush=True, **kwargs)


# ---- host-side agreement through jax's coordination service (no device work, no gloo) -------------------------
# Generous: processes may be minutes apart (compilation on a loaded machine, slow storage).
SYNC_TIMEOUT_S = 1800
_rounds: dict[str, int] = {}


def _client() -> Any:
    """jax.distributed's coordination-service client (jax internal; Orbax relies on the same object)."""
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:
        raise RuntimeError("several JAX processes but jax.distributed is not initialised")
    return client


def _round(name: str) -> str:
    """A fresh id per call of `name`: every process makes the same calls in the same order."""
    _rounds[name] = _rounds.get(name, 0) + 1
    return f"iqlearn/{name}/{_rounds[name]}"


def barrier(name: str) -> None:
    """All processes wait here (no-op on one process). Host-only: queued device work is not waited for."""
    import jax

    if jax.process_count() > 1:
        _client().wait_at_barrier(_round(name), SYNC_TIMEOUT_S * 1000)


def any_process(flag: bool, name: str = "any") -> bool:
    """True on every process when `flag` is True on at least one. A collective: every process must call it at the
    same point. Host-only (a key per process in the coordination service, a barrier, one read): no device work,
    so it does not wait for the steps in flight."""
    import jax

    if jax.process_count() == 1:
        return bool(flag)
    client, key = _client(), _round(name)
    client.key_value_set(f"{key}/{jax.process_index()}", "1" if flag else "0")
    client.wait_at_barrier(f"{key}/barrier", SYNC_TIMEOUT_S * 1000)
    values = [v for _, v in client.key_value_dir_get(f"{key}/")]
    client.wait_at_barrier(f"{key}/read", SYNC_TIMEOUT_S * 1000)
    client.key_value_delete(f"{key}/{jax.process_index()}")
    return "1" in values


class AlignedFirstCall:
    """Wraps a jitted step: with several CPU processes, the first call compiles, waits for every process, then runs.

    Gloo (jax's CPU collectives) connects the processes at a program's first collective with a fixed 30 s deadline;
    processes that compile at different speeds (a loaded machine) would miss it. Other backends: a plain call.
    """

    def __init__(self, step: Any, name: str) -> None:
        self._step, self._name, self._aligned = step, name, False

    def __call__(self, *args: Any) -> Any:
        if not self._aligned:
            import jax

            if jax.process_count() > 1 and jax.default_backend() == "cpu":
                self._step.lower(*args).compile()  # the call below reuses it
                barrier(f"compiled_{self._name}")
            self._aligned = True
        return self._step(*args)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._step, attr)


def check_shared_directory(path: os.PathLike) -> None:
    """Raises ConfigError unless every process sees the same directory `path` (process 0 writes a token that all
    others must read back). No-op on one process. A collective: every process calls it."""
    import pathlib
    import uuid

    import jax

    if jax.process_count() == 1:
        return
    key = _round("shared_probe")
    if is_primary():
        token = uuid.uuid4().hex
        _client().key_value_set(key, token)
    else:
        token = _client().blocking_key_value_get(key, SYNC_TIMEOUT_S * 1000)
    probe = pathlib.Path(path) / f".shared_probe_{token}"
    if is_primary():
        with contextlib.suppress(OSError):  # then nobody reads it back: the error below
            probe.write_text(token)
    barrier("shared_probe_written")
    try:
        seen = probe.read_text() == token
    except OSError:
        seen = False
    missing = any_process(not seen, "shared_probe_seen")
    if is_primary():
        probe.unlink(missing_ok=True)
    if missing:
        raise ConfigError(
            f"MODEL_DIR {str(path)!r} is not the same directory on every process (process 0's file was not "
            "visible to all): use a directory all hosts share (NFS/Filestore, a gcsfuse mount)"
        )
