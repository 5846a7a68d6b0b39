"""Ahead-of-time compile of the real train step for a TPU topology (libtpu compile-only devices, no TPU).

The tiny T5.1.1 of runs/quickstart.gin is compiled for v4:2x2x1 (4 chips) through `iqlearn_jax.aot.run`, i.e. the
same gin parsing, model, optimizer, partitioner and `trainer.build_train_step` as `iqlearn_jax.train`. Skipped only
where libtpu is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gin
import pytest

from iqlearn_jax import aot

HAVE_LIBTPU, LIBTPU_WHY = aot.libtpu_available()
pytestmark = pytest.mark.skipif(not HAVE_LIBTPU, reason=f"libtpu unavailable: {LIBTPU_WHY}")

TOPOLOGY = "v4:2x2x1"
TINY = ["runs/quickstart.gin"]
# Short sequences and one layer per stack: the compile (XLA:TPU on this CPU) is what costs time.
SMALL = [
    "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 16}",
    "BATCH_SIZE = 8",
    "t5.T5Config.num_encoder_layers = 1",
    "t5.T5Config.num_decoder_layers = 1",
]


def _compile(*bindings: str) -> aot.AotReport:
    gin.clear_config()
    try:
        return aot.run(TOPOLOGY, TINY, [*SMALL, *bindings])
    finally:
        gin.clear_config()


@pytest.fixture(scope="module")
def reports() -> dict[str, aot.AotReport]:
    return {
        "mle_dp": _compile("IQLEARN_LAMBDA = 0.0", "objectives.Objective.name = 'mle'"),
        "iqlearn_dp": _compile("IQLEARN_LAMBDA = 0.1"),
        "iqlearn_dm": _compile("IQLEARN_LAMBDA = 0.1", "NUM_PARTITIONS = 2"),
    }


def test_topology_devices_and_hbm():
    topo = aot.get_topology(TOPOLOGY)
    assert len(topo.devices) == 4 and topo.device_kind == "TPU v4"
    assert topo.devices_per_chip == 1 and topo.hbm_per_device == 32 * aot.GiB
    v3 = aot.get_topology("v3:2x2")  # 4 chips, 2 TensorCores each: 8 devices of 16 GiB
    assert len(v3.devices) == 8 and v3.devices_per_chip == 2 and v3.hbm_per_device == 16 * aot.GiB
    with pytest.raises(ValueError, match="v4:2x2x4"):
        aot.parse_topology("v4-8")


def test_compiles_data_parallel_and_model_parallel(reports):
    assert reports["mle_dp"].mesh_shape == {"data": 4, "model": 1}
    assert reports["iqlearn_dm"].mesh_shape == {"data": 2, "model": 2}
    for name, r in reports.items():
        assert r.device_kind == "TPU v4" and r.num_devices == 4, name
        for field in ("argument_bytes", "output_bytes", "total_bytes", "flops", "bytes_accessed"):
            assert getattr(r, field) > 0, (name, field)
        assert r.fits and r.total_bytes < r.hbm_bytes
        assert r.total_flops == pytest.approx(r.flops * 4)
    assert reports["mle_dp"].objective == "mle" and reports["iqlearn_dp"].objective == "iqlearn"
    # Model parallelism splits the vocab/mlp/heads parameters: fewer argument bytes per device.
    assert reports["iqlearn_dm"].argument_bytes < reports["iqlearn_dp"].argument_bytes


def test_iqlearn_parameter_memory_equals_mle(reports):
    mle, iql = reports["mle_dp"], reports["iqlearn_dp"]
    assert iql.num_params == mle.num_params
    assert iql.argument_bytes == mle.argument_bytes
    assert iql.alias_bytes == mle.alias_bytes
    # The TD term is elementwise work on the logits: a little more compute, never less.
    assert mle.flops <= iql.flops < 1.2 * mle.flops


@pytest.mark.slow
def test_cli_oversized_batch_fails_with_fit_message(tmp_path):
    out = tmp_path / "aot.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "iqlearn_jax.aot",
            "--gin_file=runs/quickstart.gin",
            "--topology=v5e:2x2",
            "--gin.BATCH_SIZE=262144",
            "--gin.t5.T5Config.num_encoder_layers=1",
            "--gin.t5.T5Config.num_decoder_layers=1",
            f"--json={out}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "does not fit" in proc.stderr and "over by" in proc.stderr, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["fits"] is False and "over by" in data["error"]
