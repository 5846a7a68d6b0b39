r"""Quality–diversity Pareto front and temperature sweep on the embedded task (paper Figures 2–4, 9).

    python experiments/pareto.py            # 3 objectives x 3 seeds (~15 CPU-min; ~1 h on 2 heavily shared cores)
    python experiments/pareto.py --smoke    # seconds-to-a-minute check of the whole path (the test suite runs it)
    python -m iqlearn_jax.report experiments/results --output_dir=experiments/results   # redraws the figures

Reproduces: the paper's claim that offline IQLearn reaches a better trade-off of task performance and diversity than
MLE and MLE + entropy regularisation (Figures 2, 3, 9: accuracy against Self-BLEU and against per-token entropy), and
that IQLearn is ahead at low sampling temperature and less helped by beam search (Figure 4).

Setting (experiments/common.py): a tiny T5.1.1 (247k parameters) trained from scratch for 500 steps (batch 16,
AdamW 3e-3) on `synthetic_arithmetic_varied_1step`, whose demonstrations use several equally correct phrasings;
objectives MLE, MLE + entropy (β = 0.1), offline IQLearn (λ = 0.5, after 50 MLE warm-up steps), 3 seeds each. Each run is decoded with `iqlearn_jax.evaluate` on 32 validation prompts: greedy, T = 0.5 and T = 1
(2 samples per prompt), all with the calculator (answer accuracy with calculator is the headline metric, as
GSM8k's "Acc. w/ calculator"), plus greedy and beam search (size 4, length penalty 0.6) without calculator. Mean ±
standard error over seeds. CPU only. Results: experiments/results/pareto.{json,md} and pareto_*.png.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402

# Kept this small by the compute (2 CPU cores shared by 8 sessions while it ran): one β, one λ (the paper's
# TLDR value); dataset_size.py and reward_correlation.py reuse these runs.
CONFIGS = (
    ("mle", 0.0),
    ("mle_entropy", 0.1),
    ("iqlearn", 0.5),
)
SEEDS = (0, 1, 2)
TEMPERATURES = (0.0, 0.5, 1.0)


def specs(smoke: bool) -> list[common.RunSpec]:
    """MLE and IQLearn for every seed first, then MLE + entropy (partial results are the most informative)."""
    if smoke:  # one tiny IQLearn run
        return [
            common.RunSpec(
                "iqlearn", 0.5, seed=0, train_steps=4, eval_period=2, checkpoint_period=2
            )
        ]
    first = [common.RunSpec(o, c, seed=s) for s in SEEDS for o, c in CONFIGS if o != "mle_entropy"]
    return first + [
        common.RunSpec(o, c, seed=s) for s in SEEDS for o, c in CONFIGS if o == "mle_entropy"
    ]


def run_and_evaluate(spec: common.RunSpec, smoke: bool) -> pathlib.Path:
    """Trains and evaluates one run (cached); returns its evaluation directory."""
    model_dir = common.train_run(spec)
    eval_dir = model_dir / "eval_pareto"
    if smoke:  # greedy with the calculator only: the code path, not the numbers
        common.evaluate_run(spec, model_dir, eval_dir, temperatures=(0.0,), max_examples=4)
        return eval_dir
    common.evaluate_run(
        spec,
        model_dir,
        eval_dir,
        temperatures=TEMPERATURES,
        beam_sizes=(4,),
        calculator="on",
        max_examples=32,
    )
    common.evaluate_run(
        spec,
        model_dir,
        eval_dir / "no_calculator",
        temperatures=(0.0,),
        calculator="off",
        max_examples=32,
    )
    return eval_dir


def collect(all_specs: list[common.RunSpec], smoke: bool) -> dict:
    """The pareto.json dict from every finished run (partial grids are fine)."""
    groups: dict[str, dict] = {}
    for spec in all_specs:
        eval_dir = common.work_dir() / "runs" / spec.name / "eval_pareto"
        done = eval_dir / ("summary.json" if smoke else "no_calculator/summary.json")
        if not done.exists():
            continue
        g = groups.setdefault(
            spec.label,
            {"objective": spec.objective, "coef": spec.coef, "label": spec.label, "per_seed": []},
        )
        values = common.setting_values(eval_dir)
        if not smoke:
            values.update({"greedy": common.setting_values(eval_dir / "no_calculator")["greedy"]})
        g["per_seed"].append({"seed": spec.seed, "settings": values})
    rows = []
    for g in groups.values():
        rows.append(
            {
                "label": g["label"],
                "objective": g["objective"],
                "coef": g["coef"],
                "seeds": [p["seed"] for p in g["per_seed"]],
                "settings": common.aggregate_seeds([p["settings"] for p in g["per_seed"]]),
            }
        )
    spec0 = all_specs[0]
    return {
        "experiment": "pareto",
        "smoke": smoke,
        "task": spec0.task,
        "train_steps": spec0.train_steps,
        "example_command": spec0.command(),
        "rows": rows,
    }


def markdown(results: dict, seconds: float) -> str:
    lines = [
        "# Quality–diversity and temperature sweep on the embedded task (paper Figures 2–4, 9)",
        "",
        f"Command: `python experiments/pareto.py` ({common.timing_note(seconds)} on the 2-core CPU machine "
        "shared with other work; CPU only). Task `" + results["task"] + f"`, tiny T5.1.1, "
        f"{results['train_steps']} steps, batch 16; 32 validation prompts; mean ± SE over seeds (n given). "
        "Figures: [pareto_selfbleu.png](pareto_selfbleu.png), [pareto_entropy.png](pareto_entropy.png), "
        "[pareto_temperature.png](pareto_temperature.png). Data: [pareto.json](pareto.json).",
        "",
        "accuracy = answer accuracy (%); `_calc` settings decode with the calculator. Self-BLEU-4: Texygen "
        "definition over all samples (lower = more diverse). entropy: the model's mean per-token predictive "
        "entropy on its own samples (nats). ρ: Spearman of summed implicit reward vs per-sample correctness.",
        "",
        "| objective | seeds | setting | accuracy % | Self-BLEU-4 | entropy (nats) | ρ(reward, correct) |",
        "|---|---|---|---|---|---|---|",
    ]

    def f(v, digits=1):
        if v["n"] == 0:
            return "–"
        se = "n/a" if v["se"] != v["se"] else f"{v['se']:.{digits}f}"
        return f"{v['mean']:.{digits}f} ± {se}"

    for r in results["rows"]:
        for name, s in sorted(r["settings"].items(), key=lambda kv: (kv[1]["method"], kv[0])):
            lines.append(
                f"| {r['label']} | {len(r['seeds'])} | {name} | {f(s['accuracy'])} | {f(s['self_bleu4'])} | "
                f"{f(s['model_entropy'], 3)} | {f(s['spearman_reward'], 2)} |"
            )
    lines += ["", "Reproduce one run by hand: `" + results["example_command"] + "`", ""]
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
    all_specs = specs(args.smoke)
    t0 = time.time()
    from iqlearn_jax import experiment_report

    def after_each(spec: common.RunSpec | None) -> None:
        results = collect(all_specs, args.smoke)
        results["seconds"] = None if args.collect_only else time.time() - t0
        common.write_json(out / "pareto.json", results)
        (out / "pareto.md").write_text(markdown(results, results["seconds"]))
        try:
            experiment_report.plot_experiment(results, out)
        except Exception as e:  # noqa: BLE001 - figures can be redrawn later by iqlearn_jax.report
            print(f"[pareto] plotting failed ({e!r}); results are saved", flush=True)
        print(
            f"[pareto] {spec.name if spec else 'collect'} done; {time.time() - t0:.0f} s so far",
            flush=True,
        )

    if args.collect_only:
        after_each(None)
        return 0
    common.run_queue(all_specs, lambda spec: run_and_evaluate(spec, args.smoke), after_each)
    return 0


if __name__ == "__main__":
    sys.exit(main())
