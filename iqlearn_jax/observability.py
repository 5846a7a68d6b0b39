"""Observability of a training run: metrics.jsonl, TensorBoard (clu), progress lines, the NaN/Inf guard and
the closing summary.

metrics.jsonl holds one JSON object per record: {"step", "split" ("train" | "validation"), "time" (unix seconds),
metric: value, ...}, at most one per (step, split). A train record at step s averages the steps of this
invocation since the previous train record (normally `log_period` steps); `window_steps` says how many. After a
resume from a checkpoint at step r, records with step > r (written by the interrupted run for steps that are
replayed) are dropped, so the first record after a resume covers steps r+1..s only and repeats nothing. Rates:
steps_per_second and tokens_per_second (non-padding input + target tokens, all hosts).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Mapping

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"  # in MODEL_DIR: one JSON record per (step, split)
TENSORBOARD_SUBDIR = "tensorboard"


class NonFiniteLossError(FloatingPointError):
    """A NaN/Inf loss or gradient norm: training stops, that state is never checkpointed."""


class MetricsLogger:
    """metrics.jsonl + clu TensorBoard writers (process 0 only)."""

    def __init__(self, model_dir: pathlib.Path, resume_step: int | None = None) -> None:
        """`resume_step`: the step the run restored (0 for a fresh start); later records are dropped."""
        from clu import metric_writers

        self.enabled = jax.process_index() == 0
        self.jsonl = model_dir / METRICS_FILE
        self._written: set[tuple[int, str]] = set()
        if self.enabled:
            self._written = _truncate_records(self.jsonl, resume_step)
        self.tb_dir = model_dir / TENSORBOARD_SUBDIR
        self.writers = {
            split: metric_writers.create_default_writer(
                str(self.tb_dir / split), just_logging=not self.enabled, asynchronous=False
            )
            for split in ("train", "validation")
        }

    def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
        scalars = {k: float(v) for k, v in scalars.items()}
        self.writers[split].write_scalars(step, scalars)
        self.writers[split].flush()
        if self.enabled and (step, split) not in self._written:  # e.g. a finished run re-evaluated
            self._written.add((step, split))
            with open(self.jsonl, "a") as f:
                f.write(
                    json.dumps({"step": step, "split": split, "time": time.time(), **scalars})
                    + "\n"
                )

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def _truncate_records(path: pathlib.Path, resume_step: int | None) -> set[tuple[int, str]]:
    """Drops records with step > resume_step (and repeated (step, split) pairs) from metrics.jsonl; returns the
    (step, split) pairs kept. Unparsable lines (a write cut by a kill) are dropped too."""
    if not path.exists():
        return set()
    kept, seen = [], set()
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            key = (int(record["step"]), str(record["split"]))
        except (ValueError, KeyError, TypeError):
            continue
        if (resume_step is not None and key[0] > resume_step) or key in seen:
            continue
        seen.add(key)
        kept.append(line)
    text = "".join(line + "\n" for line in kept)
    if text != path.read_text():
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return seen


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
    bad = {
        k: metrics[k] for k in ("loss", "grad_norm") if k in metrics and not np.isfinite(metrics[k])
    }
    if bad:
        raise NonFiniteLossError(
            f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {step}; "
            "training stopped and this state was not checkpointed"
        )


@dataclasses.dataclass
class TrainResult:
    """What `train` returns (and prints as the closing summary)."""

    model_dir: str
    start_step: int
    final_step: int
    preempted: bool
    train_metrics: dict[str, float]
    validation_metrics: dict[str, float]
    checkpoint_dir: str | None
    tensorboard_dir: str
    wall_seconds: float

    def summary(self) -> str:
        def fmt(m: Mapping[str, float]) -> str:
            if not m:
                return "n/a"
            acc = m.get("accuracy")
            acc_text = f", token accuracy {100 * acc:.1f}%" if acc is not None else ""
            return f"loss {m.get('loss', float('nan')):.4f}{acc_text}"

        lines = [
            "==== iqlearn_jax training summary ====",
            f"steps: {self.start_step} -> {self.final_step}"
            + (" (stopped by SIGTERM)" if self.preempted else "")
            + f" in {self.wall_seconds:.0f}s",
            f"final train:      {fmt(self.train_metrics)}",
            f"final validation: {fmt(self.validation_metrics)}",
            f"checkpoint:       {self.checkpoint_dir}",
            f"TensorBoard:      tensorboard --logdir {self.tensorboard_dir}",
            f"metrics:          {pathlib.Path(self.model_dir) / 'metrics.jsonl'}",
        ]
        return "\n".join(lines)


class ProgressMeter:
    """Accumulates per-step metrics between log lines; reports means, steps/s, tokens/s and the ETA."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self._reset()

    def _reset(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.tokens, self.steps, self.t0 = 0, 0, time.time()

    def add(self, metrics: Mapping[str, float], tokens: int) -> None:
        for k, v in metrics.items():
            self.values.setdefault(k, []).append(float(v))
        self.tokens += tokens
        self.steps += 1

    def flush(self, step: int) -> tuple[dict[str, float], str]:
        """(mean metrics + rates, progress line) for the window since the last flush."""
        elapsed = max(time.time() - self.t0, 1e-9)
        rate, tokens_rate = self.steps / elapsed, self.tokens / elapsed
        means = {k: float(np.mean(v)) for k, v in self.values.items()}
        line = (
            f"step {step:>6d}/{self.total_steps} | loss {means.get('loss', float('nan')):.4f} | "
            f"{rate:6.2f} steps/s | {tokens_rate:9.0f} tokens/s | "
            f"ETA {format_eta((self.total_steps - step) / rate)}"
        )
        window = self.steps
        self._reset()
        return {
            **means,
            "window_steps": window,
            "steps_per_second": rate,
            "tokens_per_second": tokens_rate,
        }, line
