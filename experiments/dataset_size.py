r"""Dataset-size ablation with learning curves: does IQLearn resist the overfitting of MLE on small subsets?

    python experiments/dataset_size.py           # 3 sizes x {MLE, IQLearn} x 3 seeds (needs pareto.py's base;
                                                 # full-data MLE = pareto.py's runs): measured 15 min for size
                                                 # 64 (load 5-7) + 11 min for the rest (load 2-3), 2 CPU cores
    python experiments/dataset_size.py --smoke   # seconds-to-a-minute check of the whole path (the test suite)
    python -m iqlearn_jax.report experiments/results --output_dir=experiments/results   # redraws the figure

Reproduces: paper Figures 6–7 (GSM8k subsets; learning curves on XSUM subsets: "the smallest subsets demonstrate
strong overfitting for pure MLE which the TD regularization in IQLearn mitigates").

Setting: as the paper, fine-tuning a pretrained model on subsets: the shared MLE base of pareto.py
(experiments/common.py BASE: tiny T5.1.1 trained with MLE on the full generated split of `synthetic_arithmetic_
varied_1step`) fine-tuned for 200 steps (batch 16, lr 1e-3) on the train split cut to its first 64 or 512 examples
(50 and 6.25 epochs) or on the full split (100k examples, < 1 epoch). MLE against offline IQLearn λ = 0.5 (no λ
warm-up), 3 seeds each (sharing the base). Learning curves: validation negative log-likelihood per token (the MLE
term, comparable across objectives) and teacher-forced token accuracy (4 batches of 16 validation examples, every 25
steps, from the trainer's metrics.jsonl); answer accuracy of greedy decoding with the calculator on 32 validation
prompts at the end of training. Mean ± standard error over seeds. CPU only.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402

# Run in this order (smallest first: partial results are the most informative); None = the full train split.
SIZES = (64, 512, None)
METHODS = (("mle", 0.0), ("iqlearn", 0.5))
SEEDS = (0, 1, 2)
STEPS = 200  # 50 epochs of 64 examples


def specs(smoke: bool) -> list[common.RunSpec]:
    """Fine-tunes of the shared base, smallest size first (all seeds)."""
    if smoke:  # pareto.py --smoke's run (the train_size option is unit-tested)
        return [
            common.RunSpec(
                "iqlearn", 0.5, seed=0, train_steps=4, eval_period=2, checkpoint_period=2
            )
        ]
    return [
        dataclasses.replace(common.finetune(o, c, s, steps=STEPS), train_size=n, eval_period=25)
        for n in SIZES
        for s in SEEDS
        for o, c in METHODS
    ]


def final_accuracy_dir(spec: common.RunSpec) -> pathlib.Path:
    """Where the end-of-training greedy+calculator evaluation lives (pareto.py's, same decoding, when the run is
    one of pareto.py's: the full-data MLE fine-tunes)."""
    run = common.work_dir() / "runs" / spec.name
    shared = run / "eval_pareto" / "greedy_calc" / "metrics.json"
    return run / "eval_pareto" if shared.exists() else run / "eval_final"


def run_one(spec: common.RunSpec, smoke: bool) -> None:
    model_dir = common.train_run(spec)
    common.evaluate_run(
        spec,
        model_dir,
        final_accuracy_dir(spec),
        temperatures=(0.0,),
        calculator="on",
        max_examples=4 if smoke else 32,
    )


def collect(smoke: bool) -> dict:
    from iqlearn_jax.report import mean_se

    all_specs = specs(smoke)
    groups: dict[tuple, dict] = {}
    for spec in all_specs:
        run = common.work_dir() / "runs" / spec.name
        acc_dir = final_accuracy_dir(spec)
        if not (run / "metrics.jsonl").exists():
            continue
        complete = (run / "DONE").exists() and (acc_dir / "greedy_calc" / "metrics.json").exists()
        g = groups.setdefault(
            (spec.train_size, spec.label),
            {"train_size": spec.train_size, "label": spec.label, "objective": spec.objective},
        )
        g.setdefault("seeds", []).append(spec.seed)
        records = [r for r in common.read_metrics_jsonl(run) if r.get("split") == "validation"]
        for r in records:
            curve = g.setdefault("curve", {}).setdefault(
                int(r["step"]), {"loss": [], "accuracy": []}
            )
            curve["loss"].append(r["nll_per_token"])  # MLE term: comparable across objectives
            curve["accuracy"].append(100.0 * r["accuracy"])
        g.setdefault("final_answer_accuracy", [])
        g.setdefault("incomplete_seeds", [])
        if complete:
            acc = common.setting_values(acc_dir)["greedy_calc"]["accuracy"]
            g["final_answer_accuracy"].append(acc)
        else:  # still training (or stopped): its curve so far is reported, marked incomplete
            g["incomplete_seeds"].append(spec.seed)
    rows = []
    for g in groups.values():
        curve = []
        for step in sorted(g["curve"]):
            c = g["curve"][step]
            loss, acc = mean_se(c["loss"]), mean_se(c["accuracy"])
            curve.append(
                {
                    "step": step,
                    "val_loss": {"mean": loss[0], "se": loss[1], "n": loss[2]},
                    "val_token_accuracy": {"mean": acc[0], "se": acc[1], "n": acc[2]},
                }
            )
        fa = mean_se(g["final_answer_accuracy"])
        rows.append(
            {
                "train_size": g["train_size"],
                "label": g["label"],
                "objective": g["objective"],
                "seeds": g["seeds"],
                "incomplete_seeds": g["incomplete_seeds"],
                "curve": curve,
                "final_answer_accuracy": {
                    "mean": fa[0],
                    "se": fa[1],
                    "n": fa[2],
                    "values": g["final_answer_accuracy"],
                },
            }
        )
    rows.sort(key=lambda r: (r["train_size"] or 10**9, r["label"]))
    return {
        "experiment": "dataset_size",
        "smoke": smoke,
        "task": common.TASK,
        "train_steps": all_specs[0].train_steps,
        "batch_size": all_specs[0].batch_size,
        "rows": rows,
    }


def markdown(results: dict, seconds: float) -> str:
    lines = [
        "# Dataset-size ablation (paper Figures 6–7)",
        "",
        f"Command: `python experiments/dataset_size.py` ({common.timing_note(seconds)} on the 2-core CPU "
        "machine shared with other work; CPU only). Task `"
        + results["task"]
        + "` (train split cut to its first N examples); every run fine-tunes the ONE shared MLE base model of "
        f"pareto.py (tiny T5.1.1; experiments/common.py BASE; the seeds share it) for {results['train_steps']} "
        f"steps of batch {results['batch_size']} (lr 1e-3); IQLearn without λ warm-up; validation curves from "
        "the trainer (4 batches of 16 examples). Figure: [dataset_size.png](dataset_size.png). Data: "
        "[dataset_size.json](dataset_size.json). Mean ± SE over seeds.",
        "",
        "| train examples | objective | seeds | final answer accuracy % (greedy + calculator) | best val loss "
        "(step) | final val loss | final val token accuracy % |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        size = "full (100k)" if r["train_size"] is None else str(r["train_size"])
        fa = r["final_answer_accuracy"]
        best = min(r["curve"], key=lambda c: c["val_loss"]["mean"])
        last = r["curve"][-1]
        inc = r.get("incomplete_seeds") or []
        partial = f" ({len(inc)} unfinished: curve so far, no final accuracy)" if inc else ""
        lines.append(
            f"| {size} | {r['label']} | {len(r['seeds'])}{partial} | {fa['mean']:.1f} ± {fa['se']:.1f} | "
            f"{best['val_loss']['mean']:.3f} ({best['step']}) | {last['val_loss']['mean']:.3f} ± "
            f"{last['val_loss']['se']:.3f} | {last['val_token_accuracy']['mean']:.1f} ± "
            f"{last['val_token_accuracy']['se']:.1f} |"
        )
    if not results["smoke"]:
        lines += ["", _not_run_note(results["rows"])]
    lines.append("")
    return "\n".join(lines)


def _not_run_note(rows: list[dict]) -> str:
    """Which size x objective settings have no run yet, and where the full-data MLE runs come from."""
    have = {(r["train_size"], r["objective"]) for r in rows}
    missing = [
        f"{'full' if n is None else n} {o}" for n in SIZES for o, _ in METHODS if (n, o) not in have
    ]
    note = "Not run yet: " + (", ".join(missing) if missing else "none") + ". "
    return note + (
        "The full-data MLE runs are pareto.py's MLE fine-tunes (same recipe; validation every 100 steps)."
    )


def main(argv: list[str] | None = None) -> int:
    return common.experiment_main("dataset_size", __doc__, argv, specs, run_one, collect, markdown)


if __name__ == "__main__":
    sys.exit(main())
