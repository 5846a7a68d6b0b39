"""End to end: a very short quickstart training run -> `python -m iqlearn_jax.evaluate` -> `iqlearn_jax.report`.

Checks the files and, independently of the evaluator's own arithmetic: decoder scores (KV-cache decoding) equal the
teacher-forced log-likelihoods written next to them (beam: divided by the GNMT length penalty), task accuracy,
Self-BLEU and Spearman ρ recomputed from generations.jsonl with nltk / scipy, and every calculator completion in
the calculator settings' texts recomputed with Python's own arithmetic.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from fractions import Fraction

import pytest
from conftest import REPO_ROOT
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from scipy import stats

pytestmark = pytest.mark.slow

SETTINGS = ["greedy", "greedy_calc", "temp1_k2", "temp1_k2_calc", "beam2_lp0.6"]


def _run(args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = ""  # one CPU device is enough here
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, (
        f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    model_dir = root / "run"
    _run(
        [
            "iqlearn_jax.train",
            "--gin_file=runs/quickstart.gin",
            f"--gin.MODEL_DIR='{model_dir}'",
            "--gin.TRAIN_STEPS=12",
            "--gin.BATCH_SIZE=8",
            "--gin.LAMBDA_WARMUP_STEPS=4",
            "--gin.train.eval_period=12",
            "--gin.train.eval_batches=1",
            "--gin.train.checkpoint_period=12",
        ],
        REPO_ROOT,
    )
    out = root / "eval"
    _run(
        [
            "iqlearn_jax.evaluate",
            "--gin_file=runs/evaluate_quickstart.gin",
            f"--gin.CHECKPOINT_PATH='{model_dir}'",
            f"--gin.EVAL_OUTPUT_DIR='{out}'",
            "--gin.EVAL_EXAMPLES=3",
            "--gin.evaluate.batch_size=2",
            "--gin.evaluate.temperatures=[0.0, 1.0]",
            "--gin.evaluate.num_samples=2",
            "--gin.evaluate.beam_sizes=[2]",
        ],
        REPO_ROOT,
    )
    return out


def _load(out, setting):
    records = [
        json.loads(line) for line in (out / setting / "generations.jsonl").read_text().splitlines()
    ]
    metrics = json.loads((out / setting / "metrics.json").read_text())
    return records, metrics


def test_files_and_decoder_scores(evaluated):
    assert sorted(p.name for p in evaluated.iterdir() if p.is_dir()) == sorted(SETTINGS)
    assert json.loads((evaluated / "summary.json").read_text())["run"]["objective"] == "iqlearn"
    for setting in SETTINGS:
        records, metrics = _load(evaluated, setting)
        assert len(records) == 3 and metrics["run"]["step"] == 12 and metrics["run"]["lam"] == 0.1
        k = 2 if setting.startswith("temp") else 1
        for rec in records:
            assert rec["input"] and "####" in rec["reference"] and len(rec["samples"]) == k
            for s in rec["samples"]:
                assert 1 <= s["length"] <= 80 and isinstance(s["summed_reward"], float)
                if setting.endswith("_calc"):
                    assert s["decoder_score"] is None
                elif setting.startswith("beam"):
                    penalty = ((5.0 + s["length"]) / 6.0) ** 0.6
                    assert s["decoder_score"] == pytest.approx(
                        s["log_likelihood"] / penalty, rel=1e-4, abs=1e-3
                    )
                else:
                    assert s["decoder_score"] == pytest.approx(
                        s["log_likelihood"], rel=1e-4, abs=1e-3
                    )


def _answer(text):
    m = re.search(r"####\s*(-?[\d,]+(?:\.\d+)?)", text)
    return None if m is None else float(m.group(1).replace(",", ""))


def test_metrics_recomputed_from_generations(evaluated):
    tok = Tokenizer13a()
    for setting in SETTINGS:
        records, metrics = _load(evaluated, setting)
        samples = [(rec["reference"], s) for rec in records for s in rec["samples"]]
        correct = [
            100.0 * (_answer(s["text"]) is not None and _answer(s["text"]) == _answer(ref))
            for ref, s in samples
        ]
        assert metrics["task_metrics"]["answer_accuracy"] == pytest.approx(
            sum(correct) / len(correct)
        )
        toks = [tok(s["text"]).split() for _, s in samples]
        for order in (3, 4):
            w = tuple(1.0 / order for _ in range(order))
            want = [
                sentence_bleu(
                    toks[:i] + toks[i + 1 :], h, w, smoothing_function=SmoothingFunction().method1
                )
                for i, h in enumerate(toks)
            ]
            assert metrics["diversity"][f"self_bleu{order}"] == pytest.approx(
                100 * sum(want) / len(want), abs=1e-9
            )
        rho = metrics["reward_correlation"]["spearman_reward_vs_answer_accuracy"]
        if len(set(correct)) > 1:
            want_rho = stats.spearmanr([s["summed_reward"] for _, s in samples], correct).statistic
            assert rho == pytest.approx(want_rho, abs=1e-12)
        else:
            assert rho is None  # constant metric: undefined, written as null
        assert metrics["diversity"]["model_entropy"] > 0


def _python_result(expr):
    expr = expr.replace(",", "")
    if not re.fullmatch(r"[\d\s.+\-*/()]+", expr) or "**" in expr or "//" in expr:
        return None
    try:
        value = eval(re.sub(r"(\d+(?:\.\d+)?)", r"Fraction('\1')", expr), {"Fraction": Fraction})
    except (ZeroDivisionError, SyntaxError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0")


def test_calculator_completions_are_correct(evaluated):
    for setting in ("greedy_calc", "temp1_k2_calc"):
        records, metrics = _load(evaluated, setting)
        checked = 0
        for rec in records:
            for s in rec["samples"]:
                text = s["text"]
                for m in re.finditer(r"<<", text):
                    rest = text[m.end() :]
                    if "=" not in rest or "<<" in rest.split("=", 1)[0]:
                        continue
                    expr, after = rest.split("=", 1)
                    want = _python_result(expr)
                    if want is not None and len(after) >= len(want) + 2:
                        assert after.startswith(want + ">>"), (setting, text)
                        checked += 1
        assert metrics["calculator"]["calls"] >= checked
    # Greedy with and without the calculator agree up to the first completed annotation.
    plain, _ = _load(evaluated, "greedy")
    calc, _ = _load(evaluated, "greedy_calc")
    for p, c in zip(plain, calc, strict=True):
        a, b = p["samples"][0]["text"], c["samples"][0]["text"]
        first = next(
            (m.end() for m in re.finditer(r"<<[^=<>]*=", b) if _python_result(m.group(0)[2:-1])),
            None,
        )
        assert (
            a[: first if first is not None else None] == b[: first if first is not None else None]
            or first is None
            and a == b
        )


def test_report(evaluated, tmp_path):
    from iqlearn_jax import report

    result = report.make_report([evaluated], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert result["records"] == len(SETTINGS) and "| – | iqlearn | 0.1 | greedy | 1 |" in text
    names = sorted(os.path.basename(p) for p in result["plots"])
    assert names == [
        "pareto_synthetic_arithmetic_1step_answer_accuracy.png",
        "temperature_synthetic_arithmetic_1step_answer_accuracy.png",
    ]
    for p in result["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert report.main([str(evaluated), "--output_dir", str(tmp_path / "cli")]) == 0
    assert report.main([str(tmp_path / "missing")]) == 2


def test_decoding_settings_and_bad_arguments():
    from iqlearn_jax import evaluate

    names = [
        s.name for s in evaluate.decoding_settings([0.0, 0.7], 4, [4], 0.6, 0, 0.0, "auto", "gsm8k")
    ]
    assert names == ["greedy", "greedy_calc", "temp0.7_k4", "temp0.7_k4_calc", "beam4_lp0.6"]
    names = [s.name for s in evaluate.decoding_settings([1.0], 2, [], 0.6, 0, 0.0, "auto", "xsum")]
    assert names == ["temp1_k2"]
    for args, match in [
        (([-1.0], 2, [], 0.6, 0, 0.0, "off", "t"), "temperature"),
        (([1.0], 0, [], 0.6, 0, 0.0, "off", "t"), "num_samples"),
        (([], 1, [0], 0.6, 0, 0.0, "off", "t"), "beam size"),
        (([], 1, [], 0.6, 0, 0.0, "off", "t"), "no decoding setting"),
        (([0.0], 1, [], 0.6, 0, 0.0, "sometimes", "t"), "calculator"),
    ]:
        with pytest.raises(ValueError, match=match):
            evaluate.decoding_settings(*args)


def test_training_objective_read_from_the_runs_config(tmp_path):
    from iqlearn_jax.evaluate import training_objective

    step_dir = tmp_path / "run" / "checkpoints" / "40"
    step_dir.mkdir(parents=True)
    (tmp_path / "run" / "config.gin").write_text(
        "IQLEARN_LAMBDA = 0.0\nLAM2 = %IQLEARN_LAMBDA\n# Parameters for objectives.Objective:\n"
        "objectives.Objective.lam = %LAM2\nobjectives.Objective.name = 'iqlearn'\n"
    )
    want = {"name": "iqlearn", "lam": 0.0, "gamma": None}
    for path in (tmp_path / "run", step_dir.parent, step_dir):
        assert training_objective(str(path)) == want
    assert training_objective(str(tmp_path)) is None
