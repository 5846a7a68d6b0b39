"""The one training + evaluation recipe shared by the embedded-task experiments (pareto, dataset_size,
reward_correlation): a tiny T5.1.1 on `synthetic_arithmetic_varied_1step` (GSM8k-shaped word problems whose
demonstrations are written in several equally correct phrasings), trained in-process with `iqlearn_jax.train.train`
(gin, exactly as the CLI) and decoded with `iqlearn_jax.evaluate.evaluate`. Objectives are compared as in the
paper, by fine-tuning ONE shared pretrained model: BASE (MLE, trained on first use) is the initial checkpoint of
every run made by `finetune()`; the seeds of a setting share it.

Runs are cached: a run directory with a `DONE` marker is not trained again, an evaluation directory with a
`summary.json` is not evaluated again, so an interrupted experiment resumes where it stopped and the experiments
share runs with the same specification (e.g. the shared base). Work
directory: $IQLEARN_EXPERIMENTS_DIR (default /tmp/iqlearn_experiments).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Callable, Sequence

TASK = "synthetic_arithmetic_varied_1step"
FEATURE_LENGTHS = {"inputs": 128, "targets": 80}
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def work_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("IQLEARN_EXPERIMENTS_DIR", "/tmp/iqlearn_experiments"))


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run. `coef` is β for mle_entropy, λ for iqlearn, unused for mle."""

    objective: str
    coef: float = 0.0
    seed: int = 0
    train_steps: int = 500
    train_size: int | None = None  # None = the task's full train split (100k generated examples)
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    lam_warmup_steps: int = 50
    eval_period: int = (
        50  # validation loss / token accuracy every this many steps (learning curves)
    )
    checkpoint_period: int = 100
    model_gin: str = "models/t5_1_1_tiny.gin"
    online_alpha: float | None = (
        None  # online IQLearn (iqlearn_jax.algorithms.OnlineIQLearn) with this mix-in α
    )
    sample_every: int = 1  # online: draw policy samples every this many steps
    init_from: str | None = (
        None  # name of a finished run whose final checkpoint initialises this one
    )

    @property
    def name(self) -> str:
        coef = "" if self.objective == "mle" else f"_{self.coef:g}"
        size = "" if self.train_size is None else f"_n{self.train_size}"
        online = "" if self.online_alpha is None else f"_online{self.online_alpha:g}"
        init = "" if self.init_from is None else f"_from-{self.init_from}"
        return f"{self.objective}{coef}{online}{size}_s{self.seed}_steps{self.train_steps}{init}"

    @property
    def task(self) -> str:
        return TASK if self.train_size is None else f"{TASK}_train{self.train_size}"

    @property
    def label(self) -> str:
        """Legend label: objective and coefficient."""
        if self.objective == "mle":
            return "MLE"
        if self.objective == "mle_entropy":
            return f"MLE+entropy β={self.coef:g}"
        if self.online_alpha is not None:
            return f"online IQLearn α={self.online_alpha:g} λ={self.coef:g}"
        return f"IQLearn λ={self.coef:g}"

    def gin_files(self) -> list[str]:
        return [
            self.model_gin,
            "runs/finetune.gin",
            "objectives/online_iqlearn.gin"
            if self.online_alpha is not None
            else f"objectives/{self.objective}.gin",
            "tasks/synthetic_arithmetic.gin",
        ]

    def gin_bindings(self, model_dir: pathlib.Path) -> list[str]:
        b = [
            f"MODEL_DIR = '{model_dir}'",
            f"MIXTURE_OR_TASK_NAME = '{self.task}'",
            f"TASK_FEATURE_LENGTHS = {FEATURE_LENGTHS!r}",
            f"BATCH_SIZE = {self.batch_size}",
            f"TRAIN_STEPS = {self.train_steps}",
            f"LEARNING_RATE = {self.learning_rate}",
            f"WARMUP_STEPS = {self.warmup_steps}",
            f"SEED = {self.seed}",
            "optimizers.adamw.clip_norm = 1.0",
            "train.train.optimizer = @optimizers.adamw()",
            "optimizers.adamw.learning_rate = %LEARNING_RATE_FN",
            f"train.train.eval_period = {self.eval_period}",
            "train.train.eval_batches = 4",
            "train.train.log_period = 50",
            f"train.train.checkpoint_period = {self.checkpoint_period}",
            "train.train.keep_checkpoints = 20",
            "train.train.print_summary = False",
        ]
        if self.objective == "iqlearn":
            b += [f"IQLEARN_LAMBDA = {self.coef}", f"LAMBDA_WARMUP_STEPS = {self.lam_warmup_steps}"]
        if self.online_alpha is not None:
            b += [
                f"ONLINE_ALPHA = {self.online_alpha}",
                f"SAMPLE_EVERY_K_STEPS = {self.sample_every}",
            ]
        if self.init_from is not None:
            b += [f"train.train.initial_checkpoint_path = '{work_dir() / 'runs' / self.init_from}'"]
        if self.objective == "mle_entropy":
            b += [f"ENTROPY_BETA = {self.coef}"]
        return b

    def command(self) -> str:
        """The equivalent CLI command (for the results files)."""
        files = " ".join(f"--gin_file={f}" for f in self.gin_files())
        return f"python -m iqlearn_jax.train {files} " + " ".join(
            f'--gin.{b.split(" = ")[0]}="{b.split(" = ", 1)[1]}"'
            for b in self.gin_bindings(pathlib.Path("MODEL_DIR"))
        )


# The shared starting point of every fine-tune (the paper's protocol: objectives compared by fine-tuning one
# pretrained model). Stage 1: MLE from scratch, 500 steps at lr 3e-3; stage 2: MLE continued 600 steps at lr 1e-3
# (data seed 0 for both). Every objective and every seed of pareto.py / reward_correlation.py starts from BASE; the
# seeds differ in the data order and the sampling, not in the starting weights.
BASE_SCRATCH = RunSpec("mle", seed=0)
BASE = RunSpec(
    "mle",
    seed=0,
    train_steps=600,
    init_from=BASE_SCRATCH.name,
    learning_rate=1e-3,
    warmup_steps=10,
    eval_period=100,
    checkpoint_period=100,
)
BASES = {BASE_SCRATCH.name: BASE_SCRATCH, BASE.name: BASE}
FINETUNE_STEPS = 200


def finetune(
    objective: str,
    coef: float,
    seed: int,
    online_alpha: float | None = None,
    steps: int = FINETUNE_STEPS,
    init_from: str | None = None,
) -> RunSpec:
    """One fine-tune of `init_from` (default BASE): `steps` steps at lr 1e-3 (10 warm-up steps, fewer for tiny
    smoke runs; no λ warm-up), the same for every objective."""
    return RunSpec(
        objective,
        coef,
        seed=seed,
        train_steps=steps,
        init_from=BASE.name if init_from is None else init_from,
        learning_rate=1e-3,
        warmup_steps=min(10, max(steps // 2, 1)),
        lam_warmup_steps=0,
        online_alpha=online_alpha,
        checkpoint_period=steps,
        eval_period=max(steps // 2, 1),
    )


def ensure_task(spec: RunSpec) -> str:
    """Registers the train-size variant of the task when needed; returns the task name."""
    from iqlearn_jax.tasks import synthetic

    if spec.train_size is not None:
        synthetic.register_synthetic_arithmetic(
            spec.task, 1, 1, varied=True, train_size=spec.train_size
        )
    return spec.task


def _parse(spec: RunSpec, model_dir: pathlib.Path, extra: Sequence[str] = ()) -> None:
    import gin

    from iqlearn_jax import train as train_lib

    gin.clear_config()
    train_lib.parse_gin(spec.gin_files(), [*spec.gin_bindings(model_dir), *extra])


def train_run(spec: RunSpec, log=print) -> pathlib.Path:
    """Trains `spec` (unless already done); returns its MODEL_DIR (checkpoints every 100 steps, metrics.jsonl)."""
    import gin

    from iqlearn_jax import train as train_lib

    model_dir = work_dir() / "runs" / spec.name
    _wait_for_other_process(model_dir)
    if (model_dir / "DONE").exists():
        return model_dir
    if spec.init_from in BASES:  # the shared base runs are trained on first use
        train_run(BASES[spec.init_from], log)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "LOCK").write_text(str(os.getpid()))
    ensure_task(spec)
    t0 = time.time()
    _parse(spec, model_dir)
    try:
        result = train_lib.train()
    finally:
        gin.clear_config()
    seconds = time.time() - t0
    if result.preempted or result.final_step < spec.train_steps:
        raise SystemExit(
            f"{spec.name} stopped at step {result.final_step} (SIGTERM); rerun to resume"
        )
    (model_dir / "DONE").write_text(json.dumps({"seconds": seconds, "command": spec.command()}))
    (model_dir / "LOCK").unlink(missing_ok=True)
    log(
        f"trained {spec.name} in {seconds:.0f} s: validation {json.dumps(result.validation_metrics)[:160]}"
    )
    return model_dir


def _wait_for_other_process(model_dir: pathlib.Path, poll_s: float = 20.0) -> None:
    """Waits while another live process (pid in model_dir/LOCK) trains this run (experiments run side by side)."""
    lock = model_dir / "LOCK"

    def recently_written() -> bool:  # a trainer without a LOCK file (older experiment processes)
        files = (p for p in model_dir.rglob("*") if p.name not in ("BUSY", "LOCK"))
        newest = max((p.stat().st_mtime for p in files), default=0.0)
        return time.time() - newest < 180

    while model_dir.exists() and not lock.exists() and not (model_dir / "DONE").exists():
        if not recently_written():
            break
        time.sleep(poll_s)
    while lock.exists() and not (model_dir / "DONE").exists():
        try:
            pid = int(lock.read_text())
        except (ValueError, FileNotFoundError):
            return
        if pid == os.getpid():
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # stale lock: the run resumes from its newest checkpoint
        time.sleep(poll_s)


def evaluate_run(
    spec: RunSpec,
    checkpoint: pathlib.Path,
    out_dir: pathlib.Path,
    *,
    temperatures: Sequence[float],
    beam_sizes: Sequence[int] = (),
    calculator: str = "on",
    num_samples: int = 2,
    max_examples: int = 32,
    split: str = "validation",
    log=print,
) -> dict:
    """Decodes `checkpoint` (a MODEL_DIR or one step dir) with `iqlearn_jax.evaluate`; returns its summary.

    Writes `out_dir/<setting>/{metrics.json, generations.jsonl}` and `out_dir/summary.json` (cached).
    """
    import gin

    from iqlearn_jax import evaluate as evaluate_lib

    summary = out_dir / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    ensure_task(spec)
    t0 = time.time()
    _parse(spec, checkpoint, ["evaluate.evaluate.model = %MODEL"])
    try:
        evaluate_lib.evaluate(
            checkpoint_path=str(checkpoint),
            task=spec.task,
            split=split,
            task_feature_lengths=FEATURE_LENGTHS,
            output_dir=str(out_dir),
            batch_size=16,
            max_examples=max_examples,
            temperatures=list(temperatures),
            num_samples=num_samples,
            beam_sizes=list(beam_sizes),
            length_penalty=0.6,
            calculator=calculator,
            seed=0,
            run_seed=spec.seed,
            run_label=None,
        )
    finally:
        gin.clear_config()
    log(f"evaluated {checkpoint} ({out_dir.name}) in {time.time() - t0:.0f} s")
    return json.loads(summary.read_text())


def read_metrics_jsonl(model_dir: pathlib.Path) -> list[dict]:
    """The trainer's metrics.jsonl records (train and validation)."""
    path = model_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_json(path: pathlib.Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=True))
    tmp.replace(path)


# Values read from each decoding setting's metrics.json (key in the results -> path in metrics.json).
SETTING_VALUES = {
    "accuracy": ("task_metrics", "answer_accuracy"),
    "self_bleu4": ("diversity", "self_bleu4"),
    "per_prompt_self_bleu": ("diversity", "per_prompt_self_bleu"),
    "model_entropy": ("diversity", "model_entropy"),
    "spearman_reward": ("reward_correlation", "spearman_reward_vs_answer_accuracy"),
    "spearman_loglik": ("reward_correlation", "spearman_loglik_vs_answer_accuracy"),
    "mean_summed_reward": ("scores", "mean_summed_reward"),
    "mean_length": ("scores", "mean_length"),
}


def setting_values(eval_dir: pathlib.Path) -> dict[str, dict[str, float | None]]:
    """{setting name: {value key: number or None}} of one evaluation directory."""
    out = {}
    for path in sorted(eval_dir.glob("*/metrics.json")):
        m = json.loads(path.read_text())
        out[m["setting"]["name"]] = {
            k: m.get(section, {}).get(key) for k, (section, key) in SETTING_VALUES.items()
        } | {"temperature": m["setting"]["temperature"], "method": m["setting"]["method"]}
    return out


def aggregate_seeds(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    """Per setting, per value: {"mean", "se", "n", "values"} over the seeds present (report.mean_se)."""
    from iqlearn_jax.report import mean_se

    settings: dict[str, dict] = {}
    for values in per_seed:
        for name, vals in values.items():
            settings.setdefault(
                name, {"temperature": vals["temperature"], "method": vals["method"]}
            )
    for name in settings:
        for key in SETTING_VALUES:
            xs = [s[name][key] for s in per_seed if name in s and s[name][key] is not None]
            mean, se, n = mean_se(xs)
            settings[name][key] = {"mean": mean, "se": se, "n": n, "values": xs}
    return settings


def wait_done(run_name: str, poll_s: float = 30.0) -> None:
    """Blocks until the run `run_name` has finished training (its DONE marker), e.g. in another process."""
    while not (work_dir() / "runs" / run_name / "DONE").exists():
        if not _busy_by_other(work_dir() / "runs" / run_name):
            raise RuntimeError(
                f"run {run_name} is neither finished nor in progress; train it first"
            )
        time.sleep(poll_s)


def _busy_by_other(run_dir: pathlib.Path) -> bool:
    """True when another live process holds run_dir/BUSY (it trains or evaluates this run)."""
    try:
        pid = int((run_dir / "BUSY").read_text())
    except (ValueError, FileNotFoundError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_queue(specs: Sequence[RunSpec], work, after_each=None, poll_s: float = 30.0) -> None:
    """Calls work(spec) for every spec, skipping (and coming back to) runs another experiment process is busy
    with, so that two experiment scripts can run side by side and share runs. after_each(spec) follows each."""
    pending = list(specs)
    while pending:
        free = [s for s in pending if not _busy_by_other(work_dir() / "runs" / s.name)]
        if not free:
            time.sleep(poll_s)
            continue
        spec = free[0]
        run_dir = work_dir() / "runs" / spec.name
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "BUSY").write_text(str(os.getpid()))
        try:
            work(spec)
        finally:
            (run_dir / "BUSY").unlink(missing_ok=True)
        pending.remove(spec)
        if after_each is not None:
            after_each(spec)


def timing_note(seconds: float | None) -> str:
    """How long the invocation that wrote a results file ran (None: --collect_only from cached runs)."""
    if seconds is None:
        return "results collected from the cached runs; training and evaluation times in each run's DONE file"
    return f"this invocation: {seconds / 60:.0f} min"


def publish(experiment: str, results: dict, markdown: str, out: pathlib.Path) -> None:
    """Writes `<experiment>.{json,md}` and the experiment's figures (iqlearn_jax.experiment_report) into `out`."""
    from iqlearn_jax import experiment_report

    write_json(out / f"{experiment}.json", results)
    (out / f"{experiment}.md").write_text(markdown)
    try:
        experiment_report.plot_experiment(results, out)
    except Exception as e:  # noqa: BLE001 - figures can be redrawn later by iqlearn_jax.report
        print(f"[{experiment}] plotting failed ({e!r}); results are saved", flush=True)


def experiment_main(
    experiment: str,
    doc: str,
    argv: list[str] | None,
    plan: Callable[[bool], list[RunSpec]],
    work: Callable[[RunSpec, bool], object],
    collect: Callable[[bool], dict],
    markdown: Callable[[dict, float | None], str],
) -> int:
    """The command line shared by the embedded-task scripts: --smoke, --collect_only, --out_dir; runs every spec of
    plan(smoke) through work(spec, smoke) (cached, shared with other experiment processes) and rewrites the results
    from collect(smoke) after each."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--collect_only",
        action="store_true",
        help="only rewrite the results from the finished runs",
    )
    parser.add_argument("--out_dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out_dir)
    t0 = time.time()

    def after_each(spec: RunSpec | None) -> None:
        results = collect(args.smoke)
        results["seconds"] = None if args.collect_only else time.time() - t0
        publish(experiment, results, markdown(results, results["seconds"]), out)
        done = spec.name if spec else "collect"
        print(f"[{experiment}] {done} done; {time.time() - t0:.0f} s so far", flush=True)

    if args.collect_only:
        after_each(None)
        return 0
    run_queue(plan(args.smoke), lambda spec: work(spec, args.smoke), after_each)
    return 0
