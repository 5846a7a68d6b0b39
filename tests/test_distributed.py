"""Multi-process start-up decisions (distributed.plan_from_env) for each launch style, and the errors that name a
missing or malformed variable; the data-shard layout of a mesh spread over several processes."""

import subprocess
import sys
import time

import numpy as np
import pytest

from iqlearn_jax import distributed
from iqlearn_jax.gin_utils import ConfigError
from iqlearn_jax.partitioning import Partitioner

HAND = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
SLURM = {
    "SLURM_JOB_ID": "77",
    "SLURM_STEP_NODELIST": "node[001-002]",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
}


def plan(env, tpu=False, workers=None):
    return distributed.plan_from_env(env, on_tpu_vm=lambda: tpu, metadata=lambda key: workers)


def test_by_hand_passes_all_three_explicitly():
    p = plan(HAND)
    assert p.kind == "manual"
    assert p.initialize_kwargs == {
        "coordinator_address": "10.0.0.2:1234",
        "num_processes": 4,
        "process_id": 3,
    }


@pytest.mark.parametrize(
    "drop, named",
    [
        (["JAX_COORDINATOR_ADDRESS"], "missing: JAX_COORDINATOR_ADDRESS$"),
        (["JAX_NUM_PROCESSES"], "missing: JAX_NUM_PROCESSES$"),
        (["JAX_PROCESS_ID"], "missing: JAX_PROCESS_ID$"),
        (["JAX_NUM_PROCESSES", "JAX_PROCESS_ID"], "missing: JAX_NUM_PROCESSES, JAX_PROCESS_ID$"),
    ],
)
def test_partial_hand_launch_names_the_missing_variables(drop, named):
    env = {k: v for k, v in HAND.items() if k not in drop}
    with pytest.raises(ConfigError, match=named):
        plan(env)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("JAX_NUM_PROCESSES", "two", r"JAX_NUM_PROCESSES='two' must be an integer >= 1"),
        ("JAX_NUM_PROCESSES", "0", r"JAX_NUM_PROCESSES=0 must be an integer >= 1"),
        ("JAX_PROCESS_ID", "-1", r"JAX_PROCESS_ID=-1 must be an integer >= 0"),
        ("JAX_PROCESS_ID", "4", r"JAX_PROCESS_ID=4 must be in 0\.\.3 \(JAX_NUM_PROCESSES=4\)"),
        (
            "JAX_COORDINATOR_ADDRESS",
            "10.0.0.2",
            r"JAX_COORDINATOR_ADDRESS='10.0.0.2' must be HOST:PORT",
        ),
        ("JAX_COORDINATOR_ADDRESS", "host:99999", r"port in 1\.\.65535"),
        ("IQLEARN_DISTRIBUTED", "maybe", r"IQLEARN_DISTRIBUTED='maybe' must be auto, 1"),
    ],
)
def test_malformed_values_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        plan({**HAND, key: value})


def test_slurm_and_open_mpi_use_jax_detection():
    assert plan(SLURM) == distributed.LaunchPlan("slurm", {}, "SLURM job 77, task 1 of 2")
    # an explicit address under SLURM: jax reads it and takes count and id from SLURM
    assert plan({**SLURM, "JAX_COORDINATOR_ADDRESS": "node001:5000"}).kind == "slurm"
    assert plan({**SLURM, "SLURM_NTASKS": "1"}).kind == "single"  # one task: no initialisation
    with pytest.raises(
        ConfigError, match="SLURM_STEP_NODELIST, SLURM_PROCID, SLURM_LOCALID not set.*srun"
    ):
        plan({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "2"})  # sbatch script outside srun
    ompi = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}
    assert plan({**ompi, "OMPI_MCA_orte_hnp_uri": "1;tcp://10.0.0.1:1"}).initialize_kwargs == {}
    with pytest.raises(ConfigError, match="OMPI_MCA_orte_hnp_uri.*set JAX_COORDINATOR_ADDRESS"):
        plan(ompi)  # Open MPI 5 (no ORTE URI) without an address
    assert plan({**ompi, "JAX_COORDINATOR_ADDRESS": "h:1"}).initialize_kwargs == {
        "coordinator_address": "h:1",
        "num_processes": 2,
        "process_id": 1,
    }


def test_cloud_tpu_vm_slices():
    env_hosts = {"TPU_WORKER_HOSTNAMES": "t-w-0,t-w-1,t-w-2,t-w-3", "TPU_WORKER_ID": "2"}
    assert plan(env_hosts, tpu=True).kind == "tpu"  # GKE: hosts in the environment
    assert plan({}, tpu=True, workers="10.1.0.2,10.1.0.3").kind == "tpu"  # TPU VM: metadata server
    assert plan({}, tpu=True, workers="10.1.0.2").kind == "single"  # one-host TPU VM
    assert (
        plan({}, tpu=True, workers=None).kind == "single"
    )  # metadata unreadable: warns, one process
    assert plan({"IQLEARN_DISTRIBUTED": "1"}, tpu=True, workers=None).kind == "forced"
    assert plan({"TPU_WORKER_HOSTNAMES": "a,b"}, tpu=False).kind == "single"  # not a TPU VM
    assert plan({**HAND, "IQLEARN_DISTRIBUTED": "0"}).kind == "single"
    assert plan({}).initialize_kwargs is None
    with pytest.raises(ConfigError, match="missing: JAX_NUM_PROCESSES, JAX_PROCESS_ID"):
        plan({"JAX_COORDINATOR_ADDRESS": "h:1"})  # an address alone, nothing supplies count and id


class FakeDevice:
    def __init__(self, process_index):
        self.process_index = process_index


class FakeMesh:
    axis_names = ("data", "model")

    def __init__(self, shape, processes):
        self.shape = dict(zip(self.axis_names, shape, strict=True))
        self.devices = np.array([FakeDevice(p) for p in processes], dtype=object).reshape(shape)


@pytest.mark.parametrize(
    "shape, processes, me, expected",
    [
        ((8, 1), [0] * 4 + [1] * 4, 1, (1, 2, 4)),  # data parallel: one shard per process
        ((4, 2), [0] * 4 + [1] * 4, 0, (0, 2, 2)),  # model parallel within each process
        (
            (1, 8),
            [0] * 4 + [1] * 4,
            1,
            (0, 1, 1),
        ),  # model parallel across processes: one shared shard
        ((2, 4), [0, 0, 1, 1, 0, 0, 1, 1], 1, (0, 1, 2)),  # each process holds both data rows
        ((4, 1), [0, 1, 0, 1], 1, (1, 2, 2)),  # interleaved rows {0, 2} and {1, 3}: two shards
    ],
)
def test_data_shards_follow_the_mesh(monkeypatch, shape, processes, me, expected):
    monkeypatch.setattr("jax.process_index", lambda: me)
    partitioner = Partitioner(mesh=FakeMesh(shape, processes))
    assert partitioner.data_shards() == expected
    assert partitioner.local_batch_size(16) == 16 // expected[1]


def test_inconsistent_data_rows_are_refused(monkeypatch):
    monkeypatch.setattr("jax.process_index", lambda: 0)
    # process 0 holds 'data' rows {0, 1}, process 1 rows {1, 2, 3}
    partitioner = Partitioner(mesh=FakeMesh((4, 2), [0, 0, 0, 1, 1, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"rows \{0: \[0, 1\], 1: \[1, 2, 3\]\}"):
        partitioner.data_shards()


def test_cli_exits_2_naming_the_missing_variable(tmp_path):
    """A hand launch missing JAX_COORDINATOR_ADDRESS stops before MODEL_DIR is created, exit 2."""
    model_dir = tmp_path / "never"
    env = {
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": "0",
        "JAX_PLATFORMS": "cpu",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "iqlearn_jax.train", "--gin_file=runs/quickstart.gin",
         f"--gin.MODEL_DIR='{model_dir}'"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "missing: JAX_COORDINATOR_ADDRESS" in proc.stderr
    assert not model_dir.exists()


def test_preemption_guard_one_process_handles_sigterm_and_restores_the_handler():
    import os
    import signal

    from iqlearn_jax.preemption import PreemptionGuard

    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert guard.mode == "local" and not guard.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the test process lives on
        deadline = time.time() + 10
        while not guard.should_stop(2) and time.time() < deadline:
            time.sleep(0.01)
        assert guard.should_stop(2)
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(ValueError, match="check_period must be >= 1, got 0"):
        PreemptionGuard(check_period=0)


def test_checkpoint_saves_leave_jax_preemption_sync_point_to_the_train_loop(tmp_path, monkeypatch):
    """Orbax asks the sync point with the saved step, also from its finalize thread after the loop moved on; jax
    keeps the last step asked and reports it at a preemption notice, so process 0 could miss the agreed stop step
    (reproduced with 2 processes: the process with the stale call never stopped, the other stopped alone)."""
    import jax.numpy as jnp
    from jax.experimental import multihost_utils

    from iqlearn_jax.checkpoints.manager import TrainCheckpointManager

    asked: list[int] = []
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", asked.append)
    manager = TrainCheckpointManager(tmp_path, async_save=True)
    for step in (1, 2):
        manager.save({"w": jnp.arange(4.0)}, {"task": "t"}, step=step)
    manager.close()
    assert manager.all_steps() == [1, 2] and asked == []


def test_an_unreachable_coordinator_is_named():
    import socket

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        distributed.wait_for_coordinator(f"127.0.0.1:{listening.getsockname()[1]}", timeout_s=5)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"JAX_COORDINATOR_ADDRESS='127.0.0.1:{closed}': nothing accepted"):
        distributed.wait_for_coordinator(f"127.0.0.1:{closed}", timeout_s=0.5)
