"""Steps in flight: per-step metrics stay on the device until the host needs them.

The training loop dispatches step after step without waiting for the device. Each step's metrics (replicated
scalars) go into `PendingMetrics`; the host reads them all at once only at log, evaluation and checkpoint points
(`fetch`), and at those points also checks the train state's NaN/Inf record (`raise_if_nonfinite`, the guard
itself runs inside the step: trainer.guard_nonfinite). At most `max_in_flight` steps are dispatched ahead of the
newest step known to be finished, which bounds the batches held on the device without ever idling it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from iqlearn_jax.observability import NonFiniteLossError, check_finite
from iqlearn_jax.partitioning import replicated_to_host


@dataclasses.dataclass
class StepRecord:
    """One step's metrics: on the device until fetched, then Python floats."""

    step: int  # 1-based step number (the state's step after it)
    metrics: Mapping[str, Any]
    tokens: int  # non-padding tokens of the batch, all hosts


def _local(x: Any) -> Any:
    return x.addressable_data(0) if isinstance(x, jax.Array) else x


class PendingMetrics:
    """Per-step metrics dispatched but not yet read by the host."""

    def __init__(self, max_in_flight: int = 8) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._records: list[StepRecord] = []
        self._known_done = 0  # records[:known_done] are known to be computed
        # Host seconds spent waiting (benchmarks): in `add` for the oldest in-flight step (back-pressure: the
        # device still has queued steps) and in `fetch` (a read: the device runs dry unless steps follow).
        self.backpressure_seconds = 0.0
        self.read_seconds = 0.0

    def __len__(self) -> int:
        return len(self._records)

    def add(self, step: int, metrics: Mapping[str, jax.Array], tokens: int) -> None:
        """Records a dispatched step; waits only if more than `max_in_flight` steps are unfinished."""
        self._records.append(StepRecord(step, metrics, tokens))
        oldest_allowed = len(self._records) - self.max_in_flight
        if oldest_allowed > self._known_done:
            import time

            t0 = time.perf_counter()
            jax.block_until_ready(self._records[oldest_allowed - 1].metrics)
            self.backpressure_seconds += time.perf_counter() - t0
            self._known_done = oldest_allowed

    def fetch(self) -> list[StepRecord]:
        """All pending steps' metrics as Python floats (one wait for the device), oldest first; clears."""
        import time

        t0 = time.perf_counter()
        records, self._records, self._known_done = self._records, [], 0
        arrays = [[(k, _local(v)) for k, v in r.metrics.items()] for r in records]
        for row in arrays:
            for _, a in row:
                if hasattr(a, "copy_to_host_async"):
                    a.copy_to_host_async()
        out = [
            StepRecord(r.step, {k: float(np.asarray(a)) for k, a in row}, r.tokens)
            for r, row in zip(records, arrays, strict=True)
        ]
        self.read_seconds += time.perf_counter() - t0
        return out


def raise_if_nonfinite(state: Any, fetched: list[StepRecord]) -> None:
    """Raises NonFiniteLossError naming the first step whose loss, grad_norm or updated state was NaN/Inf.

    Reads `state.nonfinite_step` (waits for the newest dispatched step); `fetched` supplies the bad values.
    """
    bad = int(replicated_to_host(state.nonfinite_step))
    if bad < 0:
        return
    values = ""
    for record in fetched:
        if record.step == bad:
            check_finite(bad, record.metrics)  # raises naming the bad loss / grad_norm
            values = (
                f" (loss={record.metrics.get('loss')}, grad_norm={record.metrics.get('grad_norm')})"
            )
    raise NonFiniteLossError(
        f"non-finite parameters or optimizer state after step {bad}{values}; training stopped and this "
        "state was not checkpointed"
    )
