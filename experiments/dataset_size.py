r"""Dataset-size ablation with learning curves: does IQLearn resist the overfitting of MLE on small subsets?

    python experiments/dataset_size.py           # 2 small sizes x {MLE, IQLearn} x 3 seeds + the full-data runs
                                                 # of pareto.py (~12 CPU-min; ~40 min on 2 heavily shared cores)
    python experiments/dataset_size.py --smoke   # seconds-to-a-minute check of the whole path (the test suite)
    python -m iqlearn_jax.report experiments/results --output_dir=experiments/results   # redraws the figure

Reproduces: paper Figures 6–7 (GSM8k subsets; learning curves on XSUM subsets: "the smallest subsets demonstrate
strong overfitting for pure MLE which the TD regularization in IQLearn mitigates").

Setting: the pareto.py recipe (experiments/common.py: tiny T5.1.1, 500 steps, batch 16, `synthetic_arithmetic_
varied_1step`) with the train split cut to its first 64 or 512 examples (125 and 16 epochs) and the full generated
split (100k examples, < 1 epoch; these runs are pareto.py's). MLE against offline IQLearn λ = 0.5, 3 seeds each.
Learning curves: validation negative log-likelihood per token (the MLE term, comparable across objectives) and
teacher-forced token accuracy (4 batches of 16 validation examples, every
50 steps, from the trainer's metrics.jsonl); answer accuracy of greedy decoding with the calculator on 32
validation prompts at the end of training. Mean ± standard error over seeds. CPU only.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402

# Run in this order; None = the full train split (runs shared with pareto.py).
SIZES = (64, None, 512)
METHODS = (("mle", 0.0), ("iqlearn", 0.5))
SEEDS = (0, 1, 2)
# Subsets: 300 steps (75 epochs of 64 examples); full-data runs: pareto.py's 500 steps.
SMALL_STEPS = 300


def specs(smoke: bool) -> list[common.RunSpec]:
    """Smallest size first (all seeds), so partial results are the most informative ones."""
    if smoke:  # pareto.py --smoke's run (the train_size option is unit-tested)
        return [
            common.RunSpec(
                "iqlearn", 0.5, seed=0, train_steps=4, eval_period=2, checkpoint_period=2
            )
        ]
    return [
        common.RunSpec(o, c, seed=s, train_size=n, train_steps=SMALL_STEPS if n else 500)
        for n in SIZES
        for s in SEEDS
        for o, c in METHODS
    ]


def final_accuracy_dir(spec: common.RunSpec) -> pathlib.Path:
    """Where the end-of-training greedy+calculator evaluation lives (pareto.py's for full-data runs)."""
    run = common.work_dir() / "runs" / spec.name
    return run / ("eval_pareto" if spec.train_size is None else "eval_final")


def run_one(spec: common.RunSpec, smoke: bool) -> None:
    model_dir = common.train_run(spec)
    if spec.train_size is None:
        import pareto

        pareto.run_and_evaluate(spec, smoke)
        return
    common.evaluate_run(
        spec,
        model_dir,
        final_accuracy_dir(spec),
        temperatures=(0.0,),
        calculator="on",
        max_examples=4 if smoke else 32,
    )


def collect(all_specs: list[common.RunSpec], smoke: bool) -> dict:
    from iqlearn_jax.report import mean_se

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
        "machine shared with other work, plus the full-data runs of pareto.py; CPU only). Task `"
        + results["task"]
        + f"` (train split cut to its first N examples), tiny T5.1.1, {results['train_steps']} steps of batch "
        f"{results['batch_size']}. Figure: [dataset_size.png](dataset_size.png). Data: "
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
    lines.append("")
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
        common.write_json(out / "dataset_size.json", results)
        (out / "dataset_size.md").write_text(markdown(results, results["seconds"]))
        try:
            experiment_report.plot_experiment(results, out)
        except Exception as e:  # noqa: BLE001 - figures can be redrawn later by iqlearn_jax.report
            print(f"[dataset_size] plotting failed ({e!r}); results are saved", flush=True)
        print(
            f"[dataset_size] {spec.name if spec else 'collect'} done; {time.time() - t0:.0f} s so far",
            flush=True,
        )

    if args.collect_only:
        after_each(None)
        return 0
    common.run_queue(all_specs, lambda spec: run_one(spec, args.smoke), after_each)
    return 0


if __name__ == "__main__":
    sys.exit(main())
