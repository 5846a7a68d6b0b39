"""Two JAX processes × 4 CPU devices on localhost, launched by hand (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID), train the embedded synthetic task through preemptions and a kill:

  A  fresh start, SIGTERM to both processes (jax's preemption sync point) → one checkpoint at the same step, exit 0
  B  resume, preemption service off (collective agreement), SIGTERM to process 1 only → both stop at one step, exit 0
  C  resume, SIGKILL to both mid-run
  D  resume to the end

and end with parameters, optimizer state, step and RNG bit-identical to an uninterrupted 2-process run, whose
parameters equal those of a single process with 8 devices fed the same global batches (tests/multiprocess_driver.py
concatenates the two hosts' SeqIO shards) up to float32 reduction order. Every checkpoint written at a SIGTERM
equals the uninterrupted run's checkpoint of that step. Only process 0 prints progress and summary.

One test function, so pytest-xdist never splits (and repeats) the runs across workers. Gloo (jax's CPU default)
carries the cross-process collectives; the coordinator binds to 127.0.0.1 only.
"""

import contextlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import CPU_COLLECTIVE_TIMEOUT_FLAG

REPO = pathlib.Path(__file__).resolve().parent.parent
DRIVER = REPO / "tests" / "multiprocess_driver.py"
TRAIN_STEPS = 16  # room for stage C after a late stage-B stop (B may stop at any even step)
BATCH = 8
DEADLINE_S = 900  # per launch; a loaded 2-core machine compiles slowly
SINGLE_PROCESS_ATOL = 5e-6  # float32: the cross-process all-reduce sums in another order

pytestmark = pytest.mark.slow


def flags(model_dir: pathlib.Path, *extra: str) -> list[str]:
    return [
        "--gin_file=runs/quickstart.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
        f"--gin.BATCH_SIZE={BATCH}",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 32}",
        "--gin.DROPOUT_RATE=0.1",  # exercises the restored RNG
        "--gin.LAMBDA_WARMUP_STEPS=3",
        "--gin.t5.T5Config.num_encoder_layers=1",
        "--gin.t5.T5Config.num_decoder_layers=1",
        "--gin.train.train.checkpoint_period=2",
        "--gin.train.train.log_period=1",
        "--gin.train.train.eval_split=None",
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(devices: int, cache: pathlib.Path) -> dict[str, str]:
    drop = ("JAX_", "XLA_FLAGS", "SLURM_", "OMPI_", "TPU_", "MEGASCALE_", "IQLEARN_DISTRIBUTED")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {CPU_COLLECTIVE_TIMEOUT_FLAG}",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        JAX_COMPILATION_CACHE_DIR=str(cache),  # later launches reuse the compiled steps
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    return env


class Job:
    """One launch: `n` processes of the driver, each in its own process group, output in files."""

    def __init__(self, model_dir, logs, name, n, cache, extra=(), env_extra=None):
        self.logs, self.name, self.procs = logs, name, []
        port = free_port()
        for i in range(n):
            env = base_env(8 // n, cache)
            if n > 1:
                env.update(
                    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
                    JAX_NUM_PROCESSES=str(n),
                    JAX_PROCESS_ID=str(i),
                )
            env.update(env_extra or {})
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, str(DRIVER), *flags(model_dir, *extra)],
                    cwd=REPO,
                    env=env,
                    stdout=open(self.out(i), "w"),
                    stderr=open(self.err(i), "w"),
                    start_new_session=True,
                )
            )

    def out(self, i: int) -> pathlib.Path:
        return self.logs / f"{self.name}.p{i}.out"

    def err(self, i: int) -> pathlib.Path:
        return self.logs / f"{self.name}.p{i}.err"

    def tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-2500:]}"
            for i in range(len(self.procs))
            for p in (self.out(i), self.err(i))
        )

    def wait_for(self, pattern: str) -> None:
        """Until process 0's stdout matches `pattern` (fails if a process ends first)."""
        deadline = time.time() + DEADLINE_S
        while not re.search(pattern, self.out(0).read_text()):
            assert all(p.poll() is None for p in self.procs), f"ended early\n{self.tails()}"
            assert time.time() < deadline, f"no {pattern!r} in time\n{self.tails()}"
            time.sleep(0.2)

    def signal(self, sig: int, which=None) -> None:
        for i in which if which is not None else range(len(self.procs)):
            self.procs[i].send_signal(sig)

    def wait(self) -> list[int]:
        return [p.wait(timeout=DEADLINE_S) for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def step_line(step: int) -> str:
    return rf"(?m)^step +{step}/{TRAIN_STEPS} \|"


def printed_steps(text: str) -> list[int]:
    return [int(s) for s in re.findall(rf"(?m)^step +(\d+)/{TRAIN_STEPS} \|", text)]


def checkpoint_steps(model_dir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())


def state_at(model_dir: pathlib.Path, step: int) -> dict:
    """The saved TrainState as arrays on one device of this process (saved by other processes' devices)."""
    import jax
    from jax.sharding import SingleDeviceSharding

    path = model_dir / "checkpoints" / str(step) / "state"
    tree = ocp.StandardCheckpointHandler().metadata(path)
    here = SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
        getattr(tree, "tree", tree),
        is_leaf=lambda x: hasattr(x, "shape"),
    )
    return ocp.StandardCheckpointer().restore(path, target)


def leaves(tree: dict) -> list[tuple[str, np.ndarray]]:
    import jax

    return [
        (jax.tree_util.keystr(k), np.asarray(v))
        for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def assert_identical(a: dict, b: dict, what: str) -> None:
    la, lb = leaves(a), leaves(b)
    assert [k for k, _ in la] == [k for k, _ in lb], what
    for (k, x), (_, y) in zip(la, lb, strict=True):
        assert np.array_equal(x, y), f"{what}: {k} differs (max {np.max(np.abs(x - y))})"


def run_job(job: Job) -> None:
    codes = job.wait()
    assert codes == [0] * len(codes), f"{job.name}: exit codes {codes}\n{job.tails()}"


def test_two_processes_preempted_killed_and_resumed_end_exactly(tmp_path):
    cache, logs = tmp_path / "jax_cache", tmp_path / "logs"
    logs.mkdir()
    ref_dir, single_dir, run_dir = tmp_path / "ref2", tmp_path / "ref1", tmp_path / "run"
    jobs: list[Job] = []

    def start(*args, **kwargs) -> Job:
        jobs.append(Job(*args, **kwargs))
        return jobs[-1]

    t0 = time.time()
    try:
        # Uninterrupted references: 2 processes (a checkpoint every step, all kept) and 1 process × 8 devices.
        ref = start(ref_dir, logs, "ref2", 2, cache, ["--gin.train.train.checkpoint_period=1",
                                                       "--gin.train.train.keep_checkpoints=100"])  # fmt: skip
        single = start(
            single_dir, logs, "ref1", 1, cache,
            env_extra={"IQLEARN_TEST_EMULATE_SHARDS": "2", "IQLEARN_TEST_EMULATE_BATCH": str(BATCH)},
        )  # fmt: skip
        run_job(ref)
        run_job(single)
        assert "emulating 2 data shards" in single.err(0).read_text()
        out0, out1 = ref.out(0).read_text(), ref.out(1).read_text()
        assert printed_steps(out0) == list(range(1, TRAIN_STEPS + 1))
        assert "==== iqlearn_jax training summary ====" in out0
        assert (
            not printed_steps(out1) and "summary" not in out1
        )  # console output only from process 0
        records = [json.loads(x) for x in (ref_dir / "metrics.jsonl").read_text().splitlines()]
        assert sorted(r["step"] for r in records if r["split"] == "train") == list(
            range(1, TRAIN_STEPS + 1)
        )  # written once, by process 0

        # A: SIGTERM to both processes; jax's preemption sync point picks the step.
        a = start(run_dir, logs, "A", 2, cache)
        a.wait_for(step_line(3))
        a.signal(signal.SIGTERM)
        run_job(a)
        stop_a = checkpoint_steps(run_dir)[-1]
        assert 3 <= stop_a < TRAIN_STEPS and "(stopped by SIGTERM)" in a.out(0).read_text()
        assert printed_steps(a.out(0).read_text())[-1] == stop_a
        assert_identical(state_at(run_dir, stop_a), state_at(ref_dir, stop_a), f"A step {stop_a}")

        # B: resume; no preemption service, so the processes agree by an all-gather every 2 steps; SIGTERM to
        # process 1 only.
        b = start(
            run_dir, logs, "B", 2, cache, ["--gin.preemption.PreemptionGuard.check_period=2"],
            env_extra={"JAX_ENABLE_PREEMPTION_SERVICE": "false"},
        )  # fmt: skip
        b.wait_for(step_line(stop_a + 1))
        b.signal(signal.SIGTERM, which=[1])
        run_job(b)
        assert f"steps: {stop_a} -> " in b.out(0).read_text(), b.tails()
        stop_b = checkpoint_steps(run_dir)[-1]
        assert stop_a < stop_b < TRAIN_STEPS and stop_b % 2 == 0, b.tails()
        assert "(stopped by SIGTERM)" in b.out(0).read_text()
        assert "mode collective" in b.err(0).read_text()
        assert_identical(state_at(run_dir, stop_b), state_at(ref_dir, stop_b), f"B step {stop_b}")

        # C: resume, SIGKILL both after the next periodic checkpoint.
        c = start(run_dir, logs, "C", 2, cache)
        c.wait_for(step_line(min(stop_b + 3, TRAIN_STEPS - 1)))
        c.signal(signal.SIGKILL)
        assert c.wait() == [-signal.SIGKILL] * 2
        resume_d = checkpoint_steps(run_dir)[-1]
        assert stop_b <= resume_d < TRAIN_STEPS

        # D: resume to the end.
        d = start(run_dir, logs, "D", 2, cache)
        run_job(d)
        assert f"steps: {resume_d} -> {TRAIN_STEPS}" in d.out(0).read_text(), d.tails()
    finally:
        for job in jobs:
            job.kill()

    final = state_at(run_dir, TRAIN_STEPS)
    assert_identical(final, state_at(ref_dir, TRAIN_STEPS), "interrupted vs uninterrupted")
    diffs = [
        float(np.max(np.abs(x - y)))
        for (_, x), (_, y) in zip(
            leaves(final["params"]),
            leaves(state_at(single_dir, TRAIN_STEPS)["params"]),
            strict=True,
        )
    ]
    print(
        f"2 processes vs 1 process: max |param difference| {max(diffs):.3g}; wall {time.time() - t0:.0f}s"
    )
    assert max(diffs) <= SINGLE_PROCESS_ATOL, diffs
