"""Test-wide set-up: 8 emulated CPU devices (for sharding tests), CPU-only JAX, quiet TensorFlow.

The environment variables must be set before JAX or TensorFlow are imported anywhere, hence at the top of conftest.
"""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# XLA:CPU aborts the process (SIGABRT) when not every emulated device's thread reaches a collective within 40 s.
# On a loaded 2-core machine (CI: two xdist workers plus their subprocesses) 8 device threads can miss that, so
# tests and their subprocesses allow 10 minutes; a real deadlock still ends, at the tests' own timeouts.
CPU_COLLECTIVE_TIMEOUT_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds=600"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
if "xla_cpu_collective_call_terminate_timeout_seconds" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + CPU_COLLECTIVE_TIMEOUT_FLAG

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def shared_data_dir() -> pathlib.Path | None:
    """The public datasets folder: $IQLEARN_DATA_DIR, else ../shared/data beside the checkout, else None."""
    candidates = [os.environ.get("IQLEARN_DATA_DIR"), str(REPO_ROOT.parent / "shared" / "data")]
    for candidate in candidates:
        if candidate and pathlib.Path(candidate).is_dir():
            return pathlib.Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """Folder of the real public datasets; tests using it skip when it is absent."""
    found = shared_data_dir()
    if found is None:
        pytest.skip(
            "public datasets not found: set IQLEARN_DATA_DIR or place them in ../shared/data"
        )
    return found
