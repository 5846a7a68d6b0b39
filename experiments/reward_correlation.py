r"""Reward analysis: Spearman ρ between each sample's summed implicit reward and its task metric (paper Table 2,
Figure 8), for MLE, offline IQLearn and online IQLearn (α = 0.1, λ ∈ {0.1, 0.5}).

    python experiments/reward_correlation.py          # after pareto.py (reuses its runs); ~10 CPU-min more
    python experiments/reward_correlation.py --smoke  # seconds-to-a-minute check of the whole path (the test suite)
    python -m iqlearn_jax.report experiments/results --output_dir=experiments/results   # redraws the figure

Reproduces: paper Table 2 (online IQLearn α = 0.1: ρ = 0.64 on TLDR ROUGE-1, 0.17 on GSM8k accuracy; MLE −0.05 and
0.04) and Figure 8 (ρ grows with λ at α = 0.1).

Setting: the summed implicit reward Σ_t r_t, r_t = Q(s_t, a_t) − V(s_{t+1}) (γ = 1; Σ_t r_t = log π(y|x) + V(s_0)),
computed by `iqlearn_jax.evaluate` (teacher forcing of each sample), against the sample's answer correctness (0/1,
calculator decoding at T = 1, 2 samples for each of 32 validation prompts = 64 samples per run); ρ is computed per
run (Spearman, average ranks for ties) and averaged over 3 seeds (mean ± SE).
Runs: (a) from scratch, 500 steps — pareto.py's MLE, MLE + entropy β = 0.1 and offline IQLearn λ = 0.5;
(b) fine-tuned for 100 steps (lr 1e-3) from each seed's MLE run — MLE continued (λ = 0), online IQLearn α = 0.1
with λ ∈ {0.1, 0.5} (policy samples at T = 1 drawn inside every train step, `iqlearn_jax.algorithms.OnlineIQLearn`)
and offline IQLearn λ = 0.5 (the same fine-tune without policy samples). ρ as a function of λ (Figure 8) uses (b).
CPU only.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402
import pareto  # noqa: E402

SEEDS = (0, 1, 2)
FINETUNE_STEPS = 100
ONLINE_ALPHA = 0.1
ONLINE_LAMBDAS = (0.1, 0.5)


def finetunes(seed: int, base: common.RunSpec, steps: int) -> list[common.RunSpec]:
    """The fine-tunes of part (b) from the MLE run `base` (most important first)."""
    common_kw = dict(
        seed=seed,
        train_steps=steps,
        init_from=base.name,
        learning_rate=1e-3,
        warmup_steps=10,
        lam_warmup_steps=0,
        checkpoint_period=steps,
        eval_period=max(steps // 2, 1),
    )
    out = [common.RunSpec("mle", **common_kw)]
    out += [
        common.RunSpec("iqlearn", lam, online_alpha=ONLINE_ALPHA, **common_kw)
        for lam in ONLINE_LAMBDAS
    ]
    out += [common.RunSpec("iqlearn", 0.5, **common_kw)]
    return out


def plan(smoke: bool) -> tuple[list[common.RunSpec], list[common.RunSpec]]:
    """(from-scratch runs of pareto.py, fine-tunes), seed-major."""
    scratch = pareto.specs(smoke)
    tunes = []
    for spec in scratch:
        if spec.objective == "mle" or smoke:
            tunes += finetunes(spec.seed, spec, 2 if smoke else FINETUNE_STEPS)
    if smoke:  # one online IQLearn fine-tune of pareto.py --smoke's run
        tunes = [
            dataclasses.replace(t, init_from=scratch[0].name)
            for t in finetunes(0, scratch[0], 2)
            if t.online_alpha is not None
        ][:1]
    return scratch, tunes


SETTING = (
    "temp1_k2_calc"  # T = 1, 2 samples per prompt, calculator: the setting pareto.py also decodes
)
SMOKE_SETTING = "greedy_calc"


def eval_dir(spec: common.RunSpec) -> pathlib.Path:
    """pareto.py's evaluation for from-scratch runs, an own one (same setting) for fine-tunes."""
    run = common.work_dir() / "runs" / spec.name
    return run / ("eval_reward" if spec.init_from else "eval_pareto")


def run_one(spec: common.RunSpec, smoke: bool) -> None:
    if spec.init_from is None:
        pareto.run_and_evaluate(spec, smoke)
        return
    common.wait_done(spec.init_from)
    model_dir = common.train_run(spec)
    common.evaluate_run(
        spec,
        model_dir,
        eval_dir(spec),
        temperatures=(0.0,) if smoke else (1.0,),
        num_samples=2,
        calculator="on",
        max_examples=4 if smoke else 32,
    )


def collect(scratch: list[common.RunSpec], tunes: list[common.RunSpec], smoke: bool) -> dict:
    rows: dict[tuple, dict] = {}
    for part, specs in (("scratch", scratch), ("finetune", tunes)):
        for spec in specs:
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
        "online_alpha": ONLINE_ALPHA,
        "finetune_steps": tunes[0].train_steps if tunes else None,
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
            "from scratch, 500 steps"
            if r["part"] == "scratch"
            else f"+{results['finetune_steps']} steps from MLE"
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--collect_only",
        action="store_true",
        help="only rewrite the results from the finished runs",
    )
    parser.add_argument("--out_dir", default=str(common.RESULTS_DIR))
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out_dir)
    scratch, tunes = plan(args.smoke)
    t0 = time.time()
    from iqlearn_jax import experiment_report

    def after_each(spec: common.RunSpec | None) -> None:
        results = collect(scratch, tunes, args.smoke)
        results["seconds"] = None if args.collect_only else time.time() - t0
        common.write_json(out / "reward_correlation.json", results)
        (out / "reward_correlation.md").write_text(markdown(results, results["seconds"]))
        try:
            experiment_report.plot_experiment(results, out)
        except Exception as e:  # noqa: BLE001 - figures can be redrawn later by iqlearn_jax.report
            print(f"[reward_correlation] plotting failed ({e!r}); results are saved", flush=True)
        print(
            f"[reward_correlation] {spec.name if spec else 'collect'} done; {time.time() - t0:.0f} s so far",
            flush=True,
        )

    # Fine-tunes of a seed after that seed's MLE run; MLE + entropy runs (pareto.py) last.
    def priority(s: common.RunSpec) -> tuple:
        return (s.objective == "mle_entropy", s.seed, s.init_from is not None)

    if args.collect_only:
        after_each(None)
        return 0
    common.run_queue(
        sorted(scratch + tunes, key=priority), lambda s: run_one(s, args.smoke), after_each
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
