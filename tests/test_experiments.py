"""experiments/: the toy MDP's dynamics against a hand-computed table, the varied-phrasing synthetic task, and every
experiment script's --smoke mode (each writes its results JSON/markdown/PNG into a temporary folder)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import random
import re
import sys

import numpy as np
import pytest

from iqlearn_jax.tasks import synthetic

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


toy = _load("toy_mdp")


def _table(p: np.ndarray) -> dict[tuple[int, int], dict[int, float]]:
    return {
        (s, a): {int(t): round(float(p[s, a, t]), 12) for t in np.nonzero(p[s, a])[0]}
        for s in range(p.shape[0])
        for a in range(p.shape[1])
    }


# n = 2: b0 = 0, b1 = 1, goal G = 2, top row u0 = 3, u1 = 4; actions 0 (advance / return), 1 (wrong).
HAND_A = {
    (0, 0): {1: 0.9, 3: 0.1},  # b0 advance: b1, 10% executed as wrong -> u0
    (0, 1): {3: 0.9, 1: 0.1},
    (1, 0): {2: 0.9, 4: 0.1},  # b1 advance reaches the goal
    (1, 1): {4: 0.9, 2: 0.1},
    (2, 0): {2: 1.0},  # goal absorbing
    (2, 1): {2: 1.0},
    (3, 0): {0: 0.9, 4: 0.1},  # u0 return to b0 (the exact state the mistake left)
    (3, 1): {4: 0.9, 0: 0.1},
    (4, 0): {1: 0.9, 4: 0.1},  # u1 return to b1; wrong stays at the end of the top row
    (4, 1): {4: 0.9, 1: 0.1},
}
HAND_B = {
    **{k: v for k, v in HAND_A.items() if k[0] <= 2},
    (3, 0): {4: 1.0},  # no way back: both actions lead on along the top row
    (3, 1): {4: 1.0},
    (4, 0): {4: 1.0},
    (4, 1): {4: 1.0},
}


@pytest.mark.parametrize("recoverable,hand", [(True, HAND_A), (False, HAND_B)])
def test_toy_transition_table_matches_hand_computed(recoverable, hand):
    env = toy.ChainMDP(n=2, noise=0.1, recoverable=recoverable, horizon=4)
    p = env.transition_matrix()
    assert p.shape == (5, 2, 5)
    np.testing.assert_allclose(p.sum(-1), 1.0)
    assert _table(p) == hand
    mask = env.action_mask()
    assert mask[env.goal].tolist() == [False, False, True]  # only EOS in the goal
    assert mask[[0, 1, 3, 4]].tolist() == [[True, True, False]] * 4


def test_toy_noise_and_absorbing_goal_by_simulation():
    """Sampled dynamics agree with the table: 10% noise, success probabilities computed by hand."""
    env = toy.ChainMDP(n=1, noise=0.1, recoverable=True, horizon=3)
    # Always choose action 0: G in 1 move w.p. 0.9; else u0 -> b0 -> G: 0.1 * 0.9 * 0.9 = 0.081.
    assert toy.optimal_success(env) == pytest.approx(0.981)
    env_b = toy.ChainMDP(n=2, noise=0.1, recoverable=False, horizon=4)
    assert toy.optimal_success(env_b) == pytest.approx(0.81)  # two noise-free moves, no recovery
    q = np.zeros((env_b.num_states, 3))
    q[:, 0] = 30.0  # always choose action 0 (the EOS logit is masked except in the goal)
    roll = toy.rollouts(env_b, q, 20_000, np.random.default_rng(0))
    assert roll["success"].mean() == pytest.approx(0.81, abs=0.015)
    first_move_noise = (roll["states"][:, 1] == env_b.top(0)).mean()
    assert first_move_noise == pytest.approx(0.1, abs=0.01)
    # Successful episodes end with EOS in the goal and nothing after it.
    ok = roll["success"]
    assert (roll["targets"][ok, 2] == toy.EOS).all() and (roll["states"][ok, 2] == env_b.goal).all()
    assert (roll["weights"][ok, 3:] == 0).all()
    # Failed episodes: exactly `horizon` weighted moves, no EOS (truncated: their last TD term is masked).
    assert (roll["weights"][~ok].sum(1) == env_b.horizon).all()
    assert not (roll["targets"][~ok] == toy.EOS).any()


def test_toy_expert_demos_are_mistake_free():
    env = toy.ChainMDP(n=3, horizon=5)
    d = toy.expert_demos(env, 2)
    assert d["states"][0].tolist() == [0, 1, 2, 3, 0, 0]
    assert d["targets"][0].tolist() == [0, 0, 0, toy.EOS, 0, 0]
    assert d["weights"][0].tolist() == [1, 1, 1, 1, 0, 0]
    # Control: a demonstration with one mistake (noise: b_i -> u_i) and its correction (u_i -> b_i).
    c = toy.expert_demos(env, 1, corrections=1.0, seed=0)
    path = [int(x) for x, w in zip(c["states"][0], c["weights"][0], strict=True) if w]
    i = next(k for k, s in enumerate(path) if s > env.goal) - 1
    assert path == [0, 1, 2, 3][: i + 1] + [env.top(i)] + [0, 1, 2, 3][i:]
    assert (
        c["targets"][0][len(path) - 1] == toy.EOS and (c["targets"][0][: len(path) - 1] == 0).all()
    )
    p = env.transition_matrix()
    assert all(
        p[a, 0, b] > 0 for a, b in zip(path[:-1], path[1:], strict=True)
    )  # every move is possible
    with pytest.raises(ValueError, match="variant A"):
        toy.expert_demos(toy.ChainMDP(n=3, horizon=5, recoverable=False), 1, corrections=1.0)


def test_toy_smoke(tmp_path):
    assert toy.main(["--smoke", "--out_dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "toy_mdp.json").read_text())
    assert {(r["variant"][0], r["method"]) for r in results["rows"]} == {
        ("A", "offline"), ("A", "online"), ("B", "offline"), ("B", "online")
    }  # fmt: skip
    for r in results["rows"]:
        assert (
            0 <= r["ci95_low"] <= r["success_mean"] <= r["ci95_high"] <= 100 or r["success_se"] == 0
        )
    assert "online − offline" in (tmp_path / "toy_mdp.md").read_text()
    assert (tmp_path / "toy_mdp.png").stat().st_size > 10_000


def test_varied_task_is_deterministic_correct_and_varied():
    a = [synthetic.example(0, "train", i, 1, 2, varied=True) for i in range(300)]
    assert a == [synthetic.example(0, "train", i, 1, 2, varied=True) for i in range(300)]
    # The default task is unchanged by the option (same random draws as before it existed).
    plain = synthetic.make_problem(random.Random(5), 2)
    assert plain["answer"].split("\n")[0].count(" = <<") == 1
    assert plain == synthetic.make_problem(random.Random(5), 2, varied=False)
    shapes = set()
    for ex in a:
        lines = ex["answer"].split("\n")
        assert lines[-1] == f"#### {ex['final']}"
        for line in lines[:-1]:
            m = re.search(r"(\d+)([-+*/])(\d+) = <<\1\2\3=(\d+)>>\4", line)
            assert m, line
            x, op, y, r = int(m[1]), m[2], int(m[3]), int(m[4])
            assert {"+": x + y, "-": x - y, "*": x * y, "/": x // y}[op] == r
            shapes.add(re.sub(r"\d+", "N", re.sub(r"[A-Z][a-z]+|he|she|[a-z]+s\b", "W", line)))
    assert len(shapes) >= 8  # several phrasings and operand orders
    task = synthetic.register_synthetic_arithmetic(
        "test_varied_small", 1, 1, varied=True, train_size=5
    )
    assert task.num_input_examples("train") == 5
    with pytest.raises(ValueError, match="train_size"):
        synthetic.register_synthetic_arithmetic("test_varied_bad", 1, 1, train_size=0)


def test_embedded_grid_fine_tunes_one_shared_base(monkeypatch):
    """The paper's protocol: every objective and seed of pareto.py / reward_correlation.py / dataset_size.py is a
    fine-tune of the same base checkpoint with the same steps and learning rate; the base itself is a chain of MLE
    runs that train_run trains on first use; the gin bindings make the run load that checkpoint."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    common, pareto = _load("common"), _load("pareto")
    grid = pareto.specs(False)
    assert len(grid) == len(pareto.CONFIGS) * 3
    assert {s.init_from for s in grid} == {common.BASE.name}
    assert {(s.train_steps, s.learning_rate, s.batch_size) for s in grid} == {(200, 1e-3, 16)}
    assert len({s.name for s in grid}) == len(grid)  # no two settings share a cache directory
    assert (
        common.BASE.init_from == common.BASE_SCRATCH.name and common.BASE_SCRATCH.init_from is None
    )
    assert set(common.BASES) == {common.BASE.name, common.BASE_SCRATCH.name}
    assert {s.init_from for s in _load("dataset_size").specs(False)} == {common.BASE.name}
    reward = _load("reward_correlation")
    sweep = reward.lambda_sweep()  # Figure 8's λ = 0.5, offline and online, same recipe as the grid
    assert [s.name for s in reward.plan(False)] == [s.name for s in grid + sweep]
    assert {(s.init_from, s.train_steps, s.learning_rate, s.coef) for s in sweep} == {
        (common.BASE.name, 200, 1e-3, 0.5)
    }
    assert sorted(str(s.online_alpha) for s in sweep) == ["0.1"] * 3 + ["None"] * 3
    entropy = next(s for s in grid if s.objective == "mle_entropy")
    bindings = entropy.gin_bindings(pathlib.Path("/m"))
    assert "ENTROPY_BETA = 0.1" in bindings  # bound also for fine-tunes (it was not, before)
    assert any(
        b.startswith("train.train.initial_checkpoint_path") and common.BASE.name in b
        for b in bindings
    )


@pytest.mark.slow
def test_embedded_task_experiments_smoke(tmp_path, monkeypatch):
    """pareto.py, dataset_size.py and reward_correlation.py --smoke in one process (they share the tiny runs):
    in-process training (offline, MLE, online IQLearn fine-tune), evaluation, results files and figures."""
    monkeypatch.setenv("IQLEARN_EXPERIMENTS_DIR", str(tmp_path / "work"))
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    out = tmp_path / "results"
    for name in ("pareto", "dataset_size", "reward_correlation"):
        assert _load(name).main(["--smoke", "--out_dir", str(out)]) == 0, name
    pareto = json.loads((out / "pareto.json").read_text())
    assert [r["label"] for r in pareto["rows"]] == ["IQLearn λ=0.5"]
    assert 0 <= pareto["rows"][0]["settings"]["greedy_calc"]["accuracy"]["mean"] <= 100
    sizes = json.loads((out / "dataset_size.json").read_text())
    assert all(r["curve"] and r["final_answer_accuracy"]["n"] == 1 for r in sizes["rows"])
    rewards = json.loads((out / "reward_correlation.json").read_text())
    labels = {(r["part"], r["label"]) for r in rewards["rows"]}
    assert labels == {("scratch", "IQLearn λ=0.5"), ("finetune", "online IQLearn α=0.1 λ=0.1")}
    for png in (
        "pareto_selfbleu",
        "pareto_entropy",
        "pareto_temperature",
        "dataset_size",
        "reward_correlation",
    ):
        assert (out / f"{png}.png").stat().st_size > 10_000, png
    # The report CLI redraws every figure from the results folder alone.
    from iqlearn_jax import report

    redraw = tmp_path / "redraw"
    assert report.main([str(out), f"--output_dir={redraw}"]) == 0
    assert {p.name for p in redraw.glob("*.png")} >= {"pareto_selfbleu.png", "dataset_size.png"}
