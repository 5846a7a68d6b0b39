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
        if r["method"] == "online":
            setting = f"online α={r['alpha']:g}"
        else:
            setting = {"offline": "offline", "offline_corrections": "offline, corrective demos"}[
                r["method"]
            ]
        labels.append(f"{r['variant'][0]}: {setting}, γ={r['gamma']:g}")
        means.append(r["success_mean"])
        lo.append(r["success_mean"] - r["ci95_low"])
        hi.append(r["ci95_high"] - r["success_mean"])
        colors.append({"offline": "C0", "offline_corrections": "C2"}.get(r["method"], "C1"))
    xs = np.arange(len(rows))
    ax.bar(xs, means, 0.7, yerr=[lo, hi], capsize=3, color=colors)
    ax.set_xticks(xs, labels, fontsize=7, rotation=35, ha="right")
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


# ---- Pareto front and temperature sweep (Figures 2-4, 9) ------------------------------------------------------
_CALC_SAMPLING = "sample"


def _sampling_curve(row: dict) -> list[tuple[str, dict]]:
    """The calculator sampling settings of a pareto row, by temperature."""
    items = [
        (n, s)
        for n, s in row["settings"].items()
        if s["method"] == _CALC_SAMPLING and n.endswith("_calc")
    ]
    return sorted(items, key=lambda kv: kv[1]["temperature"])


def _scatter_front(results: dict, xkey: str, xlabel: str, title: str, path: pathlib.Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    points = []
    for i, row in enumerate(results["rows"]):
        curve = _sampling_curve(row)
        xs = [s[xkey]["mean"] for _, s in curve]
        ys = [s["accuracy"]["mean"] for _, s in curve]
        ax.errorbar(
            xs,
            ys,
            xerr=[_err(s[xkey]["se"]) for _, s in curve],
            yerr=[_err(s["accuracy"]["se"]) for _, s in curve],
            fmt="o-",
            color=f"C{i}",
            capsize=3,
            label=f"{row['label']} (n={len(row['seeds'])} seeds)",
        )
        for (_, s), x, y in zip(curve, xs, ys, strict=True):
            ax.annotate(
                f"T={s['temperature']:g}",
                (x, y),
                fontsize=7,
                color=f"C{i}",
                xytext=(5, -10 + 6 * i),
                textcoords="offset points",
            )
            points.append((x, y))
    lower_is_diverse = xkey == "self_bleu4"
    front = []
    for x, y in sorted(points, key=lambda p: (p[0] if lower_is_diverse else -p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    if front:
        ax.plot(*zip(*front, strict=True), "k--x", lw=1, label="Pareto front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("answer accuracy with calculator (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pareto(results: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Accuracy vs Self-BLEU-4 and vs per-token entropy (one curve per objective over temperatures), and the
    temperature sweep with greedy vs beam search (paper Figures 2-4, 9)."""
    plt = _plt()
    task = results["task"]
    paths = [out_dir / "pareto_selfbleu.png", out_dir / "pareto_entropy.png"]
    _scatter_front(
        results,
        "self_bleu4",
        "Self-BLEU-4 over all samples (0-100, lower = more diverse)",
        f"{task}: accuracy vs Self-BLEU-4\n(T = 0: 1 sample per prompt, T > 0: 2; mean ± SE over seeds)",
        paths[0],
    )
    _scatter_front(
        results,
        "model_entropy",
        "per-token entropy of the policy on its own samples (nats/token, higher = more diverse)",
        f"{task}: accuracy vs per-token entropy\n(T = 0: 1 sample per prompt, T > 0: 2; mean ± SE over seeds)",
        paths[1],
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    ax = axes[0]
    for i, row in enumerate(results["rows"]):
        curve = _sampling_curve(row)
        ax.errorbar(
            [s["temperature"] for _, s in curve],
            [s["accuracy"]["mean"] for _, s in curve],
            yerr=[_err(s["accuracy"]["se"]) for _, s in curve],
            fmt="o-",
            capsize=3,
            color=f"C{i}",
            label=row["label"],
        )
    ax.set_xlabel("sampling temperature (0 = greedy)")
    ax.set_ylabel("answer accuracy with calculator (%)")
    ax.set_title("accuracy vs temperature (with calculator)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    width = 0.38
    rows = results["rows"]
    for j, (name, label) in enumerate((("greedy", "greedy"), ("beam4_lp0.6", "beam search 4"))):
        vals = [
            r["settings"].get(name, {}).get("accuracy", {"mean": np.nan, "se": np.nan})
            for r in rows
        ]
        ax.bar(
            np.arange(len(rows)) + (j - 0.5) * width,
            [v["mean"] for v in vals],
            width,
            yerr=[_err(v["se"]) for v in vals],
            capsize=4,
            color=f"C{j + 5}",
            label=label,
        )
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
    ax.set_ylabel("answer accuracy without calculator (%)")
    ax.set_title("greedy vs beam search (no calculator)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(
        f"{task}: temperature sweep and beam search (paper Figure 4); mean ± SE over seeds"
    )
    fig.tight_layout()
    paths.append(out_dir / "pareto_temperature.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


# ---- dataset size (Figures 6-7) --------------------------------------------------------------------------------
def _size_name(size: int | None) -> str:
    return "full train split (100k)" if size is None else f"{size} train examples"


def plot_dataset_size(results: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Per train-set size: validation NLL and token accuracy against steps (one curve per objective), and the
    final answer accuracy per size."""
    plt = _plt()
    sizes = []
    for r in results["rows"]:
        if r["train_size"] not in sizes:
            sizes.append(r["train_size"])
    labels = sorted({r["label"] for r in results["rows"]})
    color = {label: f"C{i}" for i, label in enumerate(labels)}
    fig, axes = plt.subplots(
        2, len(sizes) + 1, figsize=(4.2 * (len(sizes) + 1), 7.5), squeeze=False
    )
    for j, size in enumerate(sizes):
        for r in (r for r in results["rows"] if r["train_size"] == size):
            steps = [c["step"] for c in r["curve"]]
            for i, key in enumerate(("val_loss", "val_token_accuracy")):
                axes[i, j].errorbar(
                    steps,
                    [c[key]["mean"] for c in r["curve"]],
                    yerr=[_err(c[key]["se"]) for c in r["curve"]],
                    fmt="o-",
                    ms=3,
                    capsize=2,
                    color=color[r["label"]],
                    label=f"{r['label']} (n={len(r['seeds'])}"
                    + (
                        f", {len(r['incomplete_seeds'])} unfinished)"
                        if r.get("incomplete_seeds")
                        else ")"
                    ),
                )
        axes[0, j].set_title(_size_name(size), fontsize=10)
        axes[0, j].set_ylabel("validation NLL (nats/token)")
        axes[1, j].set_ylabel("validation token accuracy (%, teacher forced)")
        for i in range(2):
            axes[i, j].set_xlabel("train step")
            axes[i, j].grid(alpha=0.3)
            axes[i, j].legend(fontsize=7)
    ax = axes[0, -1]
    width = 0.8 / max(len(labels), 1)
    for k, label in enumerate(labels):
        vals = [
            next((r for r in results["rows"] if r["train_size"] == s and r["label"] == label), None)
            for s in sizes
        ]
        ax.bar(
            np.arange(len(sizes)) + (k - (len(labels) - 1) / 2) * width,
            [v["final_answer_accuracy"]["mean"] if v else np.nan for v in vals],
            width,
            yerr=[_err(v["final_answer_accuracy"]["se"]) if v else 0.0 for v in vals],
            capsize=3,
            color=color[label],
            label=label,
        )
    ax.set_xticks(range(len(sizes)), ["full" if s is None else str(s) for s in sizes])
    ax.set_xlabel("train examples")
    ax.set_ylabel("answer accuracy, greedy + calculator (%)")
    ax.set_title("end of training", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    axes[1, -1].axis("off")
    fig.suptitle(
        f"{results['task']}: dataset-size ablation, learning curves (paper Figures 6-7); mean ± SE over seeds"
    )
    fig.tight_layout()
    path = out_dir / "dataset_size.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# ---- reward correlation (Table 2, Figure 8) ---------------------------------------------------------------------
def plot_reward_correlation(results: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Left: ρ(summed reward, correctness) per run family; right: ρ against λ for the fine-tunes (Figure 8)."""
    plt = _plt()
    rows = results["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    ax = axes[0]
    names, rho, rho_se, ll, ll_se = [], [], [], [], []
    for r in rows:
        s = next(iter(r["settings"].values()))
        prefix = "scratch" if r["part"] == "scratch" else "fine-tune"
        names.append(f"{prefix}: {r['label']}")
        rho.append(s["spearman_reward"]["mean"])
        rho_se.append(_err(s["spearman_reward"]["se"]))
        ll.append(s["spearman_loglik"]["mean"])
        ll_se.append(_err(s["spearman_loglik"]["se"]))
    ys = np.arange(len(rows))
    ax.barh(ys - 0.2, rho, 0.4, xerr=rho_se, capsize=3, color="C0", label="ρ(Σ_t r_t, correct)")
    ax.barh(ys + 0.2, ll, 0.4, xerr=ll_se, capsize=3, color="C7", label="ρ(log π(y|x), correct)")
    ax.set_yticks(ys, names, fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("Spearman ρ with answer correctness (per run, mean ± SE over seeds)")
    ax.set_title("reward-metric correlation (paper Table 2)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax = axes[1]
    for online, color, label in ((True, "C1", "online α=0.1"), (False, "C0", "offline")):
        pts = sorted(
            (r["lam"], next(iter(r["settings"].values()))["spearman_reward"])
            for r in rows
            if r["part"] == "finetune"
            and r["objective"] != "mle_entropy"
            and ((r["online_alpha"] is not None) == online or r["objective"] == "mle")
        )
        if pts:
            ax.errorbar(
                [p[0] for p in pts],
                [p[1]["mean"] for p in pts],
                yerr=[_err(p[1]["se"]) for p in pts],
                fmt="o-",
                capsize=3,
                color=color,
                label=f"{label} (λ = 0: MLE continued)",
            )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("TD regularisation λ")
    ax.set_ylabel("Spearman ρ(Σ_t r_t, correct)")
    ax.set_title("ρ as a function of λ, fine-tunes from MLE (paper Figure 8)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no fine-tune finished yet", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{results['task']}: implicit reward vs answer correctness (T = 1, calculator)")
    fig.tight_layout()
    path = out_dir / "reward_correlation.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


# ---- dispatch ---------------------------------------------------------------------------------------------------
PLOTTERS: dict[str, Callable[[dict, pathlib.Path], list[pathlib.Path]]] = {
    "toy_mdp": plot_toy_mdp,
    "pareto": plot_pareto,
    "dataset_size": plot_dataset_size,
    "reward_correlation": plot_reward_correlation,
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
