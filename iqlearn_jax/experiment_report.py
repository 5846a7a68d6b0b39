"""Figures of the experiments under ``experiments/`` (one plotting function per experiment kind, no copies).

Each experiment script writes ``experiments/results/<name>.json`` with a top-level ``"experiment"`` key and calls
``plot_experiment`` on it; ``python -m iqlearn_jax.report experiments/results --output_dir=experiments/results``
redraws every figure from those files (``draw_all``). Figures carry titles, axis labels with units, legends and error
bars (standard error over seeds unless the legend says otherwise).
"""

from __future__ import annotations

import json
import math
import pathlib
from collections import defaultdict
from collections.abc import Callable

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(se: float | None) -> float:
    return 0.0 if se is None or not math.isfinite(se) else float(se)


# ---- toy MDP (Appendix A.3.3) -----------------------------------------------------------------------------------
def plot_toy_mdp(results: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Success rate of offline vs online IQLearn per variant (95% CI bars); right panel: every (α, γ) setting."""
    plt = _plt()
    rows = results["rows"]
    variants = list(results["optimal_success"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 2]})
    ax = axes[0]
    width = 0.38
    for j, method in enumerate(("offline", "online")):
        sel = [
            next(r for r in rows if r["variant"] == v and r["method"] == method and r.get("main"))
            for v in variants
        ]
        means = [r["success_mean"] for r in sel]
        lo = [r["success_mean"] - r["ci95_low"] for r in sel]
        hi = [r["ci95_high"] - r["success_mean"] for r in sel]
        xs = np.arange(len(variants)) + (j - 0.5) * width
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=4, color=f"C{j}", label=f"{method} IQLearn")
    for i, v in enumerate(variants):
        ax.hlines(results["optimal_success"][v], i - 0.45, i + 0.45, colors="k", linestyles=":")
    ax.plot([], [], "k:", label="always-right policy")
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("success rate (% of episodes reaching the goal)")
    cfg = results["config"]
    ax.set_title(f"main setting (α = {cfg['alpha']:g}, γ = {cfg['gamma']:g}), {cfg['seeds']} seeds")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)

    ax = axes[1]
    labels, means, lo, hi, colors = [], [], [], [], []
    for r in rows:
        setting = "offline" if r["method"] == "offline" else f"online α={r['alpha']:g}"
        labels.append(f"{r['variant'][0]}: {setting}\nγ={r['gamma']:g}")
        means.append(r["success_mean"])
        lo.append(r["success_mean"] - r["ci95_low"])
        hi.append(r["ci95_high"] - r["success_mean"])
        colors.append("C0" if r["method"] == "offline" else "C1")
    xs = np.arange(len(rows))
    ax.bar(xs, means, 0.7, yerr=[lo, hi], capsize=3, color=colors)
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylabel("success rate (%)")
    ax.set_title("sensitivity: every (α, γ) setting (A = recoverable, B = unrecoverable)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "Toy chain MDP (paper A.3.3): offline vs online IQLearn, 10% action noise — bars: mean, "
        "error bars: 95% CI over seeds",
        fontsize=10,
    )
    fig.tight_layout()
    path = out_dir / "toy_mdp.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


# ---- dispatch ---------------------------------------------------------------------------------------------------
PLOTTERS: dict[str, Callable[[dict, pathlib.Path], list[pathlib.Path]]] = {
    "toy_mdp": plot_toy_mdp,
}


def plot_experiment(results: dict, out_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Draws the figures of one experiment's results dict into ``out_dir``; returns their paths."""
    kind = results.get("experiment")
    if kind not in PLOTTERS:
        raise ValueError(f"unknown experiment {kind!r}; expected one of {sorted(PLOTTERS)}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return PLOTTERS[kind](results, out)


def find_experiment_files(run_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """The ``*.json`` files directly in ``run_dir`` whose top level names a known experiment."""
    found = []
    d = pathlib.Path(run_dir)
    if not d.is_dir():
        return found
    for p in sorted(d.glob("*.json")):
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and data.get("experiment") in PLOTTERS:
            found.append(p)
    return found


def draw_all(run_dir: str | pathlib.Path, out_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Redraws the figures of every experiment results file in ``run_dir``."""
    paths: list[pathlib.Path] = []
    for p in find_experiment_files(run_dir):
        paths += plot_experiment(json.loads(p.read_text()), out_dir)
    return paths


def group_rows(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    """Rows grouped by the values of ``keys`` (insertion order kept)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in keys)].append(r)
    return groups
