r"""Aggregate evaluation runs into a markdown table and plots.

    python -m iqlearn_jax.report RUN_DIR [RUN_DIR ...] [--output_dir=DIR] [--metric=NAME]
    python -m iqlearn_jax.report experiments/results --output_dir=experiments/results   # the experiments' figures

Each RUN_DIR is searched recursively for the ``metrics.json`` files that ``iqlearn_jax.evaluate`` writes (one per
decoding setting). Runs are grouped by (task, objective, λ, decoding setting); seeds of a group are aggregated as
mean ± standard error (sample standard deviation / √n; "n/a" with one seed). Outputs in ``--output_dir``:

* ``report.md`` — the table (task metrics, Self-BLEU-3/4, per-prompt Self-BLEU, reward–metric Spearman ρ, mean
  log-likelihood and length, number of seeds);
* ``pareto_<task>_<metric>.png`` — task metric against Self-BLEU-4 (lower = more diverse), one point per
  objective/λ/setting with standard-error bars, sampling temperatures of one objective/λ joined by a line, the
  Pareto front (higher metric, lower Self-BLEU) dashed;
* ``temperature_<task>_<metric>.png`` — task metric against sampling temperature, one curve per objective/λ.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

# Preferred headline metric per task family (the first present is plotted unless --metric is given).
PREFERRED_METRICS = (
    "accuracy",
    "answer_accuracy",
    "gsm8k_accuracy",
    "rougeLsum",
    "rouge1",
    "bleu",
    "chrf",
    "sequence_accuracy",
)
DIVERSITY_X = "self_bleu4"
TABLE_EXTRAS = (
    ("diversity", "self_bleu3"),
    ("diversity", "self_bleu4"),
    ("diversity", "per_prompt_self_bleu"),
    ("scores", "mean_log_likelihood"),
    ("scores", "mean_summed_reward"),
    ("scores", "mean_length"),
)


def find_metrics_files(run_dirs: Sequence[str | pathlib.Path]) -> list[pathlib.Path]:
    """All metrics.json files under ``run_dirs`` (sorted); raises ValueError naming a dir with none."""
    found = []
    for d in run_dirs:
        d = pathlib.Path(d)
        if not d.exists():
            raise ValueError(f"run directory {str(d)!r} does not exist")
        files = sorted(d.rglob("metrics.json")) if d.is_dir() else [d]
        if not files:
            raise ValueError(
                f"no metrics.json under {str(d)!r}; expected the output dir of iqlearn_jax.evaluate"
            )
        found.extend(files)
    return sorted(set(found))


def load_record(path: pathlib.Path) -> dict:
    """Reads one metrics.json and checks the fields the report needs."""
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    for key in ("run", "setting", "task_metrics"):
        if key not in record:
            raise ValueError(
                f"{path}: missing key {key!r}; expected a metrics.json written by iqlearn_jax.evaluate"
            )
    record["_path"] = str(path)
    return record


def _group_key(record: dict) -> tuple:
    run, setting = record["run"], record["setting"]
    return (
        str(run.get("task")),
        str(run.get("label") or ""),
        str(run.get("objective")),
        float(run.get("lam") or 0.0),
        setting["name"],
    )


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard error (NaN for n = 1) and n of the finite ``values``."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se, len(v)


def _fmt(mean: float, se: float, n: int) -> str:
    if n == 0:
        return "–"
    return f"{mean:.2f} ± {se:.2f}" if math.isfinite(se) else f"{mean:.2f} ± n/a"


def _numeric_keys(dicts: list[dict]) -> list[str]:
    keys: list[str] = []
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in keys:
                keys.append(k)
    return keys


def aggregate(records: list[dict]) -> list[dict]:
    """Groups records by (task, objective, λ, setting) and returns one row per group with mean/SE/n per value.

    Each row: {"task", "objective", "lam", "setting" (the setting dict), "seeds": [...],
    "values": {"task_metrics/<k>" | "diversity/<k>" | "scores/<k>" | "reward_correlation/<k>": (mean, se, n)}}.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[_group_key(r)].append(r)
    rows = []
    for key in sorted(groups, key=lambda k: (k[:4], _setting_order(groups[k][0]["setting"]))):
        recs = groups[key]
        seeds = [r["run"].get("seed") for r in recs]
        if len(set(map(str, seeds))) < len(seeds):
            print(
                f"warning: {key} has {len(seeds)} runs but seeds {seeds}: runs with the same seed are "
                "averaged as if independent (" + ", ".join(r["_path"] for r in recs) + ")",
                file=sys.stderr,
            )
        values = {}
        for section in ("task_metrics", "diversity", "scores", "reward_correlation"):
            sub = [r.get(section, {}) for r in recs]
            for k in _numeric_keys(sub):
                values[f"{section}/{k}"] = mean_se([d.get(k) for d in sub])
        rows.append(
            {
                "task": key[0],
                "label": key[1],
                "objective": key[2],
                "lam": key[3],
                "setting": recs[0]["setting"],
                "seeds": sorted((r["run"].get("seed") for r in recs), key=str),
                "values": values,
            }
        )
    return rows


def _setting_order(setting: dict) -> tuple:
    return (
        setting.get("method") != "sample",
        bool(setting.get("calculator")),
        setting.get("temperature") or 0.0,
        setting.get("beam_size") or 0,
        setting["name"],
    )


def headline_metric(rows: list[dict], task: str, requested: str | None = None) -> str | None:
    """The task metric to plot for ``task``: ``requested`` if present, else the first of PREFERRED_METRICS."""
    keys = [
        k.split("/", 1)[1]
        for r in rows
        if r["task"] == task
        for k in r["values"]
        if k.startswith("task_")
    ]
    if requested:
        if requested not in keys:
            raise ValueError(
                f"--metric={requested!r} not among the task metrics of {task!r}: {sorted(set(keys))}"
            )
        return requested
    for m in PREFERRED_METRICS:
        if m in keys:
            return m
    return keys[0] if keys else None


def markdown_table(rows: list[dict], metric_by_task: dict[str, str | None]) -> str:
    """One markdown table per task: rows = objective/λ/setting, columns = metrics as mean ± SE."""
    lines = [
        "# Evaluation report",
        "",
        "Values are mean ± standard error over seeds (n = number of seeds).",
        "",
    ]
    for task in sorted({r["task"] for r in rows}):
        trows = [r for r in rows if r["task"] == task]
        task_keys = [k for k in _ordered_value_keys(trows) if k.startswith("task_metrics/")]
        corr_key = f"reward_correlation/spearman_reward_vs_{metric_by_task.get(task)}"
        cols = task_keys + [f"{s}/{k}" for s, k in TABLE_EXTRAS]
        if any(corr_key in r["values"] for r in trows):
            cols.append(corr_key)
        cols = [c for c in cols if any(c in r["values"] for r in trows)]
        lines += [f"## Task `{task}`", ""]
        header = ["run", "objective", "λ", "decoding", "n"] + [c.split("/", 1)[1] for c in cols]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for r in trows:
            cells = [r["label"] or "–", r["objective"], f"{r['lam']:g}", r["setting"]["name"]]
            cells.append(str(len(r["seeds"])))
            cells += [_fmt(*r["values"][c]) if c in r["values"] else "–" for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Self-BLEU: Texygen definition (nltk sentence BLEU of each generation against all others, method1 "
        "smoothing, 13a tokens); lower = more diverse. per_prompt_self_bleu: sacrebleu among the k samples of "
        "each prompt. spearman_reward_vs_*: rank correlation of each sample's summed implicit reward with its "
        "per-sample task metric.",
        "",
    ]
    return "\n".join(lines)


def _ordered_value_keys(rows: list[dict]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        for k in r["values"]:
            if k not in keys:
                keys.append(k)
    return keys


def _label(row: dict) -> str:
    prefix = f"{row['label']} " if row.get("label") else ""
    return f"{prefix}{row['objective']} λ={row['lam']:g}"


# Axis labels with units: every task metric and Self-BLEU are on a 0-100 scale (metrics/task_metrics.py).
METRIC_AXIS_LABELS = {
    "accuracy": "accuracy (% of answers correct)",
    "rouge1": "ROUGE-1 F1 (0–100)",
    "rouge2": "ROUGE-2 F1 (0–100)",
    "rougeLsum": "ROUGE-Lsum F1 (0–100)",
    "bleu": "BLEU (0–100)",
    "chrf": "chrF (0–100)",
}


def metric_axis_label(metric: str) -> str:
    return METRIC_AXIS_LABELS.get(metric, f"{metric} (0–100)")


def _short_setting(setting: dict) -> str:
    """Point label: 'T0.7' (sampling temperature; 'greedy' at 0) or 'b4' (beam size); the calculator is the hollow
    marker, the objective the colour."""
    if setting.get("method") == "beam":
        return f"b{setting.get('beam_size', '?')}"
    temperature = float(setting.get("temperature") or 0.0)
    return "greedy" if temperature == 0 else f"T{temperature:g}"


# Offsets (points) tried in turn for a point's label; a label that fits nowhere is left out.
_LABEL_OFFSETS = [(4, 3), (4, -10), (-4, 3), (-4, -10), (0, 8), (0, -14), (10, 10), (-10, -16)]


def place_labels(ax, labelled: list[tuple[float, float, str]], fontsize: int = 7) -> int:
    """Annotates points so that no two labels overlap and none leaves the axes (greedy over _LABEL_OFFSETS);
    returns the number of labels left out for lack of room."""
    import matplotlib.transforms

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    legend = ax.get_legend()
    placed = [legend.get_window_extent(renderer)] if legend is not None else []
    for x, y, _ in labelled:  # labels never cover a marker
        px, py = ax.transData.transform((x, y))
        placed.append(matplotlib.transforms.Bbox([[px - 4, py - 4], [px + 4, py + 4]]))
    omitted = 0
    for x, y, text in labelled:
        for dx, dy in _LABEL_OFFSETS:
            ann = ax.annotate(
                text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                ha="left" if dx > 0 else "right" if dx < 0 else "center", annotation_clip=True,
            )  # fmt: skip
            box = ann.get_window_extent(renderer)
            fits = (
                box.x0 >= inside.x0 and box.x1 <= inside.x1
                and box.y0 >= inside.y0 and box.y1 <= inside.y1
            )  # fmt: skip
            if fits and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            ann.remove()
        else:
            omitted += 1
    return omitted


def _pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another with lower-or-equal x (Self-BLEU) and higher-or-equal y (metric)."""
    front = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plot_pareto(rows: list[dict], task: str, metric: str, path: pathlib.Path) -> bool:
    """Task metric vs Self-BLEU-4 scatter with SE bars; returns False when no row has both values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ykey, xkey = f"task_metrics/{metric}", f"diversity/{DIVERSITY_X}"
    trows = [r for r in rows if r["task"] == task and ykey in r["values"] and xkey in r["values"]]
    if not trows:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in trows:
        by_label[_label(r)].append(r)
    all_points, labelled = [], []
    for i, (label, rs) in enumerate(sorted(by_label.items())):
        color = f"C{i % 10}"
        for r in rs:
            x, xse, _ = r["values"][xkey]
            y, yse, _ = r["values"][ykey]
            all_points.append((x, y))
            marker = "s" if r["setting"].get("method") == "beam" else "o"
            ax.errorbar(
                x,
                y,
                xerr=_bar(xse),
                yerr=_bar(yse),
                fmt=marker,
                color=color,
                capsize=3,
                mfc="white" if r["setting"].get("calculator") else color,
            )
            labelled.append((x, y, _short_setting(r["setting"])))
        for calc, style in ((False, "-"), (True, ":")):
            sampled = sorted(
                (
                    r
                    for r in rs
                    if r["setting"].get("method") == "sample"
                    and bool(r["setting"].get("calculator")) == calc
                ),
                key=_temp,
            )
            if len(sampled) > 1:
                ax.plot(
                    [r["values"][xkey][0] for r in sampled],
                    [r["values"][ykey][0] for r in sampled],
                    style,
                    color=color,
                )
        ax.plot([], [], "o-", color=color, label=label)
    front = _pareto_front(all_points)
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("Self-BLEU-4 (0–100; lower = more diverse)")
    ax.set_ylabel(metric_axis_label(metric))
    ax.set_title(
        f"{task}: {metric} vs diversity\n(o sampling: temperatures joined, s beam; "
        "hollow/dotted = with calculator)\nlabels: T = sampling temperature, b = beam size",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.margins(0.12)  # room for labels inside the axes
    fig.tight_layout()
    omitted = place_labels(ax, labelled)
    if omitted:
        ax.text(
            0.99, 0.01, f"{omitted} point labels left out (no room)", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=7, color="0.4",
        )  # fmt: skip
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _temp(row: dict) -> float:
    return float(row["setting"].get("temperature") or 0.0)


def _bar(se: float) -> float | None:
    return se if math.isfinite(se) else None


def plot_temperature(rows: list[dict], task: str, metric: str, path: pathlib.Path) -> bool:
    """Task metric against sampling temperature, one curve per objective/λ (no calculator, sampling only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ykey = f"task_metrics/{metric}"
    trows = [
        r
        for r in rows
        if r["task"] == task
        and r["setting"].get("method") == "sample"
        and not r["setting"].get("calculator")
        and ykey in r["values"]
    ]
    if not trows:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in trows:
        by_label[_label(r)].append(r)
    for i, (label, rs) in enumerate(sorted(by_label.items())):
        rs = sorted(rs, key=_temp)
        xs = [_temp(r) for r in rs]
        ys = [r["values"][ykey][0] for r in rs]
        es = [r["values"][ykey][1] for r in rs]
        es = [e if math.isfinite(e) else 0.0 for e in es]
        ax.errorbar(xs, ys, yerr=es, fmt="o-", color=f"C{i % 10}", capsize=3, label=label)
    ax.set_xlabel("sampling temperature (0 = greedy)")
    ax.set_ylabel(metric_axis_label(metric))
    ax.set_title(f"{task}: {metric} vs temperature")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def make_report(
    run_dirs: Sequence[str | pathlib.Path],
    output_dir: str | pathlib.Path,
    metric: str | None = None,
) -> dict:
    """Writes report.md and the PNGs into ``output_dir``; returns {"report": path, "plots": [paths], "rows": n}."""
    records = [load_record(p) for p in find_metrics_files(run_dirs)]
    rows = aggregate(records)
    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric_by_task = {
        t: headline_metric(rows, t, metric) for t in sorted({r["task"] for r in rows})
    }
    report_path = out / "report.md"
    report_path.write_text(markdown_table(rows, metric_by_task))
    plots = []
    for task, m in metric_by_task.items():
        if m is None:
            continue
        safe = f"{task}_{m}".replace("/", "_").replace(" ", "_")
        for kind, fn in (("pareto", plot_pareto), ("temperature", plot_temperature)):
            path = out / f"{kind}_{safe}.png"
            if fn(rows, task, m, path):
                plots.append(str(path))
    return {"report": str(report_path), "plots": plots, "rows": len(rows), "records": len(records)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m iqlearn_jax.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="evaluate output dirs (searched recursively)"
    )
    parser.add_argument(
        "--output_dir", default="report", help="where report.md and the PNGs go (default ./report)"
    )
    parser.add_argument(
        "--metric",
        default=None,
        help=f"task metric to plot (default: first of {PREFERRED_METRICS})",
    )
    args = parser.parse_args(argv)
    from iqlearn_jax import experiment_report

    # Folders of experiment results (experiments/results: <name>.json with an "experiment" key) get their figures
    # from experiment_report; the other folders are evaluate outputs.
    experiment_dirs = [d for d in args.run_dirs if experiment_report.find_experiment_files(d)]
    for d in experiment_dirs:
        for p in experiment_report.draw_all(d, args.output_dir):
            print(f"wrote {p}")
    run_dirs = [d for d in args.run_dirs if d not in experiment_dirs]
    if not run_dirs:
        return 0
    try:
        result = make_report(run_dirs, args.output_dir, args.metric)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{result['records']} metrics.json files -> {result['rows']} table rows")
    print(f"wrote {result['report']}")
    for p in result["plots"]:
        print(f"wrote {p}")
    return 0


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
