"""Preemption: SIGTERM on any process → every process stops after the same step, saves one checkpoint, exits 0.

Three ways to agree, picked once at start (`PreemptionGuard.mode`):

- 'service': jax's preemption sync manager exists (multi-process `jax.distributed`, `jax_enable_preemption_service`
  on, the default). jax installs its own SIGTERM handler on every process at `jax.distributed.initialize` (a Python
  handler would replace it, so none is installed) and the coordination service propagates a notice received by any
  process; `multihost_utils.reached_preemption_sync_point(step)` is asked every step (host-only: no device
  work) and turns True on all processes at the same step, one past the largest step any process had reported.
  Latency: 1 to 2 steps.
- 'collective': several processes without that service. A Python SIGTERM handler on every process sets a local
  flag; every `check_period` steps (default 1) the processes exchange their flags through jax's coordination
  service (`distributed.any_process`: a key per process, a barrier, one read; host-only, so it does not wait for
  the steps in flight) and stop together when any is set. Latency: up to `check_period` steps after the signal.
- 'local': one process. The Python handler's flag is read every step (no device work). Latency: 1 step.

Cloud TPU preemption (spot / preemptible VMs, maintenance events) sends SIGTERM to every worker with about 30 s
notice (GCE's shutdown period); the checkpoint must be written within it.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import gin
import jax
from absl import logging

from iqlearn_jax import distributed


def preemption_service_available() -> bool:
    """True when jax.distributed created its preemption sync manager (jax's `global_state`, internal)."""
    try:
        from jax._src import distributed as jax_distributed

        return jax_distributed.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):
        return False


@gin.configurable(module="preemption")
class PreemptionGuard:
    """Context manager for the train loop: `if guard.should_stop(step): save, break`.

    Every process must call `should_stop` with the same step numbers (every step, from the start step on).

    Attributes:
      mode: 'service', 'collective' or 'local' (module docstring).
      check_period: steps between collective checks ('collective' mode only).
    """

    def __init__(self, check_period: int = 1) -> None:
        if check_period < 1:
            raise ValueError(
                f"preemption.PreemptionGuard.check_period must be >= 1, got {check_period}"
            )
        self.check_period = check_period
        if preemption_service_available():
            self.mode = "service"
        elif jax.process_count() > 1:
            self.mode = "collective"
        else:
            self.mode = "local"
        self.signalled = threading.Event()
        self._previous: Any = None
        self._installed = False

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        logging.warning(
            "SIGTERM received (process %d): will save a checkpoint at the step all processes agree on and exit",
            jax.process_index(),
        )
        self.signalled.set()

    def __enter__(self) -> PreemptionGuard:
        if self.mode != "service" and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        logging.info(
            "preemption: mode %s%s", self.mode,
            f" (check every {self.check_period} steps)" if self.mode == "collective" else "",
        )  # fmt: skip
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def should_stop(self, step: int) -> bool:
        """True on every process at the same step once any process received SIGTERM (collective on several)."""
        if self.mode == "service":
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        if self.mode == "local":
            return self.signalled.is_set()
        if step % self.check_period:
            return False
        return distributed.any_process(self.signalled.is_set(), "preemption")
