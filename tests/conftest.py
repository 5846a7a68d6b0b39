"""Test-wide set-up: 8 emulated CPU devices (for sharding tests), CPU-only JAX, quiet TensorFlow.

The environment variables must be set before JAX or TensorFlow are imported anywhere, hence at the top of conftest.
"""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

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
