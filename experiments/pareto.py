r"""Quality–diversity Pareto front and temperature sweep on the embedded task (paper Figures 2–4, 9).

    python experiments/pareto.py            # base + 4 objectives x 3 seeds: 43 min measured on 2 CPU cores
                                            # shared with other work (load 4-8), base already trained; the
                                            # base's two stages add ~5 min each (600-step stage: 282 s)
    python experiments/pareto.py --smoke    # seconds-to-a-minute check of the whole path (the test suite runs it)
    python -m iqlearn_jax.report experiments/results --output_dir=experiments/results   # redraws the figures

Reproduces: the paper's claim that offline IQLearn reaches a better trade-off of task performance and diversity than
MLE and MLE + entropy regularisation (Figures 2, 3, 9: accuracy against Self-BLEU and against per-token entropy), and
that IQLearn is ahead at low sampling temperature and less helped by beam search (Figure 4).

Setting (experiments/common.py), the paper's protocol of fine-tuning one pretrained model: a tiny T5.1.1 (247k
parameters, byte vocabulary, feature lengths inputs 128 / targets 80 = the task's longest examples) is first trained
with MLE on `synthetic_arithmetic_varied_1step` (demonstrations in several equally correct phrasings): 500 steps at
lr 3e-3 from scratch, then 600 steps at lr 1e-3 (common.BASE; greedy + calculator accuracy 37.5 % on the 32
validation prompts). Every objective is then fine-tuned FROM THAT ONE BASE for 200 steps (batch 16, AdamW lr 1e-3, 10 warm-up
steps): MLE continued, MLE + entropy (β = 0.1), offline IQLearn (λ = 0.1, no λ warm-up) and online IQLearn (α = 0.1,
λ = 0.1, policy samples at T = 1 in every step), 3 seeds each; the seeds share the base weights and differ in data
order and sampling. Each run is decoded with `iqlearn_jax.evaluate` on 32 validation prompts: greedy, T = 0.5 and
T = 1 (2 samples per prompt), all with the calculator (answer accuracy with calculator is the headline metric, as
GSM8k's "Acc. w/ calculator"), plus greedy and beam search (size 4, length penalty 0.6) without calculator. Mean ±
standard error over seeds. CPU only. Results: experiments/results/pareto.{json,md} and pareto_*.png.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402

# Kept this small by the compute (2 CPU cores shared with other work while it ran): one β, one λ (the paper's GSM8k
# value 0.1), online IQLearn at the paper's α = 0.1; reward_correlation.py reads these same runs.
CONFIGS: tuple[tuple[str, float, float | None], ...] = (
    ("mle", 0.0, None),  # MLE continued
    ("iqlearn", 0.1, None),  # offline IQLearn
    ("mle_entropy", 0.1, None),
    ("iqlearn", 0.1, 0.1),  # online IQLearn (α = 0.1), ~2x the step time
)
SEEDS = (0, 1, 2)
TEMPERATURES = (0.0, 0.5, 1.0)


def specs(smoke: bool) -> list[common.RunSpec]:
    """Every fine-tune from the shared MLE base (common.BASE), objective-major in CONFIGS order (partial grids are
    then complete for the most important objectives). Smoke: one tiny IQLearn run from scratch."""
    if smoke:
        return [
            common.RunSpec(
                "iqlearn", 0.5, seed=0, train_steps=4, eval_period=2, checkpoint_period=2
            )
        ]
    return [common.finetune(o, c, s, online_alpha=a) for o, c, a in CONFIGS for s in SEEDS]


def plan(smoke: bool) -> list[common.RunSpec]:
    """What the command trains and evaluates: the shared base (evaluated as the reference point) and specs()."""
    return specs(smoke) if smoke else [common.BASE, *specs(smoke)]


def base_values() -> dict | None:
    """The base model's decoding results (same settings as every fine-tune), once evaluated."""
    eval_dir = common.work_dir() / "runs" / common.BASE.name / "eval_pareto"
    if not (eval_dir / "no_calculator" / "summary.json").exists():
        return None
    values = common.setting_values(eval_dir)
    values["greedy"] = common.setting_values(eval_dir / "no_calculator")["greedy"]
    return values


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


def collect(smoke: bool) -> dict:
    """The pareto.json dict from every finished run (partial grids are fine)."""
    all_specs = specs(smoke)
    groups: dict[str, dict] = {}
    for spec in all_specs:
        eval_dir = common.work_dir() / "runs" / spec.name / "eval_pareto"
        done = eval_dir / ("summary.json" if smoke else "no_calculator/summary.json")
        if not done.exists():
            continue
        g = groups.setdefault(
            spec.label,
            {
                "objective": spec.objective,
                "coef": spec.coef,
                "online_alpha": spec.online_alpha,
                "label": spec.label,
                "per_seed": [],
            },
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
                "online_alpha": g["online_alpha"],
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
        "base_commands": None if smoke else [common.BASE_SCRATCH.command(), common.BASE.command()],
        "base": None if smoke else base_values(),
        "example_command": spec0.command(),
        "rows": rows,
    }


def markdown(results: dict, seconds: float) -> str:
    lines = [
        "# Quality–diversity and temperature sweep on the embedded task (paper Figures 2–4, 9)",
        "",
        f"Command: `python experiments/pareto.py` ({common.timing_note(seconds)} on the 2-core CPU machine "
        "shared with other work; CPU only). Task `"
        + results["task"]
        + "`, tiny T5.1.1: every run is a "
        f"{results['train_steps']}-step fine-tune (batch 16, lr 1e-3) of ONE shared MLE base model (MLE from "
        "scratch 500 steps at lr 3e-3, then 600 steps at lr 1e-3; experiments/common.py BASE), so the seeds share "
        "their starting weights and differ in data order and sampling; 32 validation prompts; mean ± SE over "
        "seeds (n given). "
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

    rows = list(results["rows"])
    if results.get("base"):
        base_row = {"label": "base model (MLE, before fine-tuning)", "seeds": [0]}
        rows.insert(0, base_row | {"settings": common.aggregate_seeds([results["base"]])})
    for r in rows:
        for name, s in sorted(r["settings"].items(), key=lambda kv: (kv[1]["method"], kv[0])):
            lines.append(
                f"| {r['label']} | {len(r['seeds'])} | {name} | {f(s['accuracy'])} | {f(s['self_bleu4'])} | "
                f"{f(s['model_entropy'], 3)} | {f(s['spearman_reward'], 2)} |"
            )
    lines += ["", "Reproduce one run by hand: `" + results["example_command"] + "`", ""]
    if results.get("base_commands"):
        lines += ["The base model (trained first by the command, in two stages):", ""]
        lines += [f"- `{c}`" for c in results["base_commands"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return common.experiment_main(
        "pareto", __doc__, argv, plan, run_and_evaluate, collect, markdown
    )


if __name__ == "__main__":
    sys.exit(main())
