r"""Reward analysis: Spearman ρ between each sample's summed implicit reward and its task metric (paper Table 2,
Figure 8), for MLE, MLE + entropy, offline IQLearn (λ = 0.1, 0.5) and online IQLearn (α = 0.1, λ = 0.1, 0.5).

    python experiments/reward_correlation.py          # reads pareto.py's runs (trains any that are missing);
                                                      # seconds once pareto.py has run (4 s measured)
    python experiments/reward_correlation.py --smoke  # seconds-to-a-minute check of the whole path (the test suite)
    python -m iqlearn_jax.report experiments/results --output_dir=experiments/results   # redraws the figure

Reproduces: paper Table 2 (online IQLearn α = 0.1: ρ = 0.64 on TLDR ROUGE-1, 0.17 on GSM8k accuracy; MLE −0.05 and
0.04) and Figure 8 (ρ grows with λ at α = 0.1; here λ ∈ {0 (MLE), 0.1, 0.5}, offline and online).

Setting: pareto.py's runs, i.e. 200-step fine-tunes (lr 1e-3) of ONE shared MLE base model (experiments/common.py
BASE) with MLE, MLE + entropy β = 0.1, offline IQLearn λ = 0.1 and online IQLearn α = 0.1, λ = 0.1 (policy samples
at T = 1 drawn inside every train step, `iqlearn_jax.algorithms.OnlineIQLearn`), 3 seeds each (the seeds share the
base). The summed implicit reward Σ_t r_t, r_t = Q(s_t, a_t) − V(s_{t+1}) (γ = 1; Σ_t r_t = log π(y|x) + V(s_0)),
is computed by `iqlearn_jax.evaluate` (teacher forcing of each sample) against the sample's answer correctness (0/1,
calculator decoding at T = 1, 2 samples for each of 32 validation prompts = 64 samples per run); ρ is computed per
run (Spearman, average ranks for ties; undefined when all 64 samples are wrong or all right) and averaged over seeds
(mean ± SE). The λ = 0.5 runs (`lambda_sweep`: offline — dataset_size.py's full-data fine-tunes — and online
α = 0.1, same recipe) extend Figure 8's λ axis. CPU only; beyond pareto.py and dataset_size.py it trains the three
online λ = 0.5 fine-tunes and decodes the λ = 0.5 runs.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402
import pareto  # noqa: E402


def lambda_sweep() -> list[common.RunSpec]:
    """Figure 8's λ axis beyond pareto.py's λ = 0.1: λ = 0.5 offline (dataset_size.py's full-data runs, same
    fine-tune recipe) and online at α = 0.1, 3 seeds each."""
    return [
        common.finetune("iqlearn", 0.5, s, online_alpha=a)
        for a in (None, 0.1)
        for s in pareto.SEEDS
    ]


def plan(smoke: bool) -> list[common.RunSpec]:
    """pareto.py's fine-tunes and lambda_sweep(); smoke: pareto.py --smoke's tiny run and a 2-step online
    fine-tune of it."""
    runs = pareto.specs(smoke)
    if not smoke:
        return runs + lambda_sweep()
    return runs + [
        common.finetune("iqlearn", 0.1, 0, online_alpha=0.1, steps=2, init_from=runs[0].name)
    ]


SETTING = (
    "temp1_k2_calc"  # T = 1, 2 samples per prompt, calculator: the setting pareto.py also decodes
)
SMOKE_SETTING = "greedy_calc"


def eval_dir(spec: common.RunSpec) -> pathlib.Path:
    return common.work_dir() / "runs" / spec.name / "eval_pareto"


def run_one(spec: common.RunSpec, smoke: bool) -> None:
    if spec.init_from is not None and smoke:
        common.wait_done(spec.init_from)
    pareto.run_and_evaluate(spec, smoke)


def collect(smoke: bool) -> dict:
    rows: dict[tuple, dict] = {}
    for spec in plan(smoke):
        part = "scratch" if spec.init_from is None else "finetune"
        d = eval_dir(spec)
        if not (d / "summary.json").exists():
            continue
        wanted = SMOKE_SETTING if smoke else SETTING
        values = {k: v for k, v in common.setting_values(d).items() if k == wanted}
        if not values:
            continue
        row = rows.setdefault(
            (part, spec.label),
            {
                "part": part,
                "label": spec.label,
                "objective": spec.objective,
                "lam": spec.coef if spec.objective == "iqlearn" else 0.0,
                "online_alpha": spec.online_alpha,
                "train_steps": spec.train_steps,
                "per_seed": [],
            },
        )
        row["per_seed"].append({"seed": spec.seed, "settings": values})
    out_rows = []
    for row in rows.values():
        per_seed = row.pop("per_seed")
        row["seeds"] = [p["seed"] for p in per_seed]
        row["settings"] = common.aggregate_seeds([p["settings"] for p in per_seed])
        out_rows.append(row)
    return {
        "experiment": "reward_correlation",
        "smoke": smoke,
        "task": common.TASK,
        "online_alpha": pareto.CONFIGS[-1][2],
        "finetune_steps": plan(smoke)[-1].train_steps,
        "rows": out_rows,
    }


def markdown(results: dict, seconds: float) -> str:
    lines = [
        "# Reward–metric correlation (paper Table 2, Figure 8)",
        "",
        f"Command: `python experiments/reward_correlation.py` ({common.timing_note(seconds)} on the 2-core CPU "
        "machine shared with other work, after pareto.py; CPU only). Task `"
        + results["task"]
        + "`. "
        "ρ = Spearman rank correlation, within one run, between each sample's summed implicit reward Σ_t r_t "
        "(γ = 1) and its answer correctness (0/1), over 64 samples (32 validation prompts × 2 samples at T = 1, "
        "calculator decoding); mean ± SE over seeds. ρ(log π) is the same for the sequence log-likelihood. "
        "Figure: [reward_correlation.png](reward_correlation.png). Data: "
        "[reward_correlation.json](reward_correlation.json).",
        "",
        "| runs | objective | seeds | ρ(Σ r, correct) | ρ(log π, correct) | accuracy % (T = 1, calculator) |",
        "|---|---|---|---|---|---|",
    ]

    def f(v, d=2):
        if v["n"] == 0:
            return "–"
        return f"{v['mean']:.{d}f} ± " + ("n/a" if v["se"] != v["se"] else f"{v['se']:.{d}f}")

    for r in results["rows"]:
        part = (
            "from scratch"
            if r["part"] == "scratch"
            else f"{results['finetune_steps']}-step fine-tune of the MLE base"
        )
        for _, s in r["settings"].items():
            lines.append(
                f"| {part} | {r['label']} | {len(r['seeds'])} | {f(s['spearman_reward'])} | "
                f"{f(s['spearman_loglik'])} | {f(s['accuracy'], 1)} |"
            )
    lines += [
        "",
        "Paper (Table 2): online IQLearn 0.17 vs MLE 0.04 on GSM8k accuracy; 0.64 vs −0.05 on TLDR.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return common.experiment_main(
        "reward_correlation", __doc__, argv, plan, run_one, collect, markdown
    )


if __name__ == "__main__":
    sys.exit(main())
