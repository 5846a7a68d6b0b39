"""report.py aggregation: mean ± standard error over seeds, grouping, plots, bad input."""

import json
import math

import numpy as np
import pytest

from iqlearn_jax import report


def _write(root, objective, lam, seed, setting, acc, sb4):
    d = root / f"{objective}_{lam}_{seed}" / setting["name"]
    d.mkdir(parents=True)
    record = {
        "run": {"task": "gsm8k", "objective": objective, "lam": lam, "seed": seed},
        "setting": setting,
        "task_metrics": {"accuracy": acc},
        "diversity": {"self_bleu3": sb4 + 5, "self_bleu4": sb4},
        "scores": {"mean_log_likelihood": -3.0},
        "reward_correlation": {"spearman_reward_vs_accuracy": None},
    }
    (d / "metrics.json").write_text(json.dumps(record))


def test_mean_and_standard_error_over_seeds(tmp_path):
    rng = np.random.default_rng(0)
    settings = [
        {"name": "greedy", "method": "sample", "temperature": 0.0, "calculator": False},
        {"name": "temp1_k4", "method": "sample", "temperature": 1.0, "calculator": False},
        {"name": "beam4_lp0.6", "method": "beam", "beam_size": 4, "calculator": False},
    ]
    values = {}
    for objective, lam in [("mle", 0.0), ("iqlearn", 0.1)]:
        for setting in settings:
            accs = rng.uniform(0, 100, size=3)
            values[(objective, setting["name"])] = accs
            for seed, acc in enumerate(accs):
                _write(
                    tmp_path / "runs", objective, lam, seed, setting, float(acc), float(100 - acc)
                )
    result = report.make_report([tmp_path / "runs"], tmp_path / "out")
    assert result["records"] == 18 and result["rows"] == 6
    text = (tmp_path / "out" / "report.md").read_text()
    for (objective, name), accs in values.items():
        se = accs.std(ddof=1) / math.sqrt(3)
        lam = "0" if objective == "mle" else "0.1"
        assert f"| – | {objective} | {lam} | {name} | 3 | {accs.mean():.2f} ± {se:.2f} |" in text
    assert sorted(p.rsplit("/", 1)[1] for p in result["plots"]) == [
        "pareto_gsm8k_accuracy.png",
        "temperature_gsm8k_accuracy.png",
    ]


def test_pareto_front():
    pts = [(10, 50), (20, 60), (15, 40), (30, 60), (5, 30)]
    assert report._pareto_front(pts) == [(5, 30), (10, 50), (20, 60)]


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        report.find_metrics_files([tmp_path / "nope"])
    with pytest.raises(ValueError, match="no metrics.json"):
        report.find_metrics_files([tmp_path])
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="missing key 'run'"):
        report.make_report([tmp_path], tmp_path / "out")
    with pytest.raises(ValueError, match="--metric"):
        _write(tmp_path / "ok", "mle", 0.0, 0, {"name": "greedy", "method": "sample"}, 1.0, 2.0)
        report.make_report([tmp_path / "ok"], tmp_path / "out", metric="rouge1")


def test_point_labels_never_overlap_and_stay_inside_the_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iqlearn_jax import report

    rng = np.random.default_rng(0)
    points = [
        (float(x), float(y), f"T{i / 10:g}")
        for i, (x, y) in enumerate(rng.normal(size=(40, 2)) * 0.3)
    ]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([p[0] for p in points], [p[1] for p in points], "o", label="points")
    ax.legend()
    ax.margins(0.12)
    fig.tight_layout()
    omitted = report.place_labels(ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) + omitted == len(points) and len(boxes) >= 10
    inside = ax.get_window_extent(renderer)
    legend = ax.get_legend().get_window_extent(renderer)
    for i, box in enumerate(boxes):
        assert (
            inside.x0 <= box.x0
            and box.x1 <= inside.x1
            and inside.y0 <= box.y0
            and box.y1 <= inside.y1
        )
        assert not box.overlaps(legend)
        assert not any(box.overlaps(other) for other in boxes[i + 1 :])
    plt.close(fig)


def test_metric_axes_have_units():
    from iqlearn_jax import report

    assert report.metric_axis_label("accuracy") == "accuracy (% of answers correct)"
    assert report.metric_axis_label("rouge2") == "ROUGE-2 F1 (0–100)"
    assert report.metric_axis_label("new_metric") == "new_metric (0–100)"
