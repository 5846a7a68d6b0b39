r"""Toy MDP of the paper's Appendix A.3.3: offline vs online IQLearn with and without recovery from mistakes.

    python experiments/toy_mdp.py                 # 2 variants x 2 methods x 20 seeds + sensitivity rows:
                                                  # ~1.5 CPU-min; 6 min wall on the 2 shared CPU cores (load ~15)
    python experiments/toy_mdp.py --smoke         # seconds (the test suite runs this)
    python -m iqlearn_jax.report experiments/results --output_dir=experiments/results   # redraws the figure

Reproduces: paper Appendix A.3.3 / Figure 11 and the claim "online IQLearn outperforms offline learning by over 11%
in success rate when the agent can return after a mistake; without recovery (concatenation dynamics) the difference
is within the confidence bounds".

The MDP (`ChainMDP`): bottom states b_0 … b_{n-1} lead to the absorbing goal G = b_n. In every non-goal state the
agent has two actions, 0 ("advance"/"return") and 1 ("wrong": up to the top row); whatever the agent chose, the
*other* action is executed with probability `noise` (10%). From b_i, action 0 leads to b_{i+1}, action 1 to the top
state u_i. Variant A (recoverable): from u_i, action 0 returns to b_i (the exact state the mistake left) and action 1
moves on along the top row to u_{i+1} (u_{n-1} stays). Variant B (unrecoverable, concatenation): from u_i both
actions lead to u_{i+1}: a mistake can never be undone, as a sampled token can never be taken back. In G the only
action is EOS (id 2), which ends the episode (terminal: V after EOS = 0, as the losses treat EOS). An episode fails
when G is not reached within `horizon` moves.

Learning: a Q-table Q[state, action] is read as the logits of a 3-token "language model" (invalid actions masked
with a large negative constant); each trajectory is a sequence whose position t holds Q[s_t] and target a_t.
Offline IQLearn minimises `losses.iqlearn_loss` on the expert demonstrations only (mistake-free: n advances and
EOS). Online IQLearn minimises `losses.online_iqlearn_loss` on the same expert batch plus rollouts of the current
softmax policy (mix-in α, Appendix A.1.2: the χ² term also on policy samples). Both: Adam on the table, the same
number of updates, initial table N(0, init_scale²) per seed. Success = reaching G within the horizon when sampling
from the learned softmax policy, estimated from `eval_episodes` episodes per seed; across seeds mean ± standard
error and a 95% confidence interval (t distribution).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iqlearn_jax import losses

ADVANCE, WRONG, EOS = 0, 1, 2
NUM_ACTIONS = 3
MASKED = -1e4  # logit of an action that does not exist in a state (constant, receives no gradient)
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class ChainMDP:
    """The chain of Appendix A.3.3. State ids: b_i = i (0 ≤ i < n), G = n, u_i = n + 1 + i."""

    n: int = 8
    noise: float = 0.1
    recoverable: bool = True
    horizon: int = 12

    @property
    def num_states(self) -> int:
        return 2 * self.n + 1

    @property
    def goal(self) -> int:
        return self.n

    def top(self, i: int) -> int:
        return self.n + 1 + i

    def intended_next(self, state: int, action: int) -> int:
        """Where `action` leads from `state` when it is executed as chosen."""
        n = self.n
        if state == self.goal:
            return self.goal
        if state < n:  # bottom row
            return state + 1 if action == ADVANCE else self.top(state)
        i = state - n - 1  # top row
        if self.recoverable and action == ADVANCE:
            return i
        return self.top(min(i + 1, n - 1))

    def transition_matrix(self) -> np.ndarray:
        """P[s, a, s'] for a ∈ {ADVANCE, WRONG}: the chosen action w.p. 1 − noise, the other one w.p. noise."""
        p = np.zeros((self.num_states, 2, self.num_states))
        for s in range(self.num_states):
            for a in (ADVANCE, WRONG):
                p[s, a, self.intended_next(s, a)] += 1.0 - self.noise
                p[s, a, self.intended_next(s, 1 - a)] += self.noise
        return p

    def action_mask(self) -> np.ndarray:
        """[S, 3] bool: ADVANCE/WRONG everywhere except G, where only EOS exists."""
        mask = np.zeros((self.num_states, NUM_ACTIONS), bool)
        mask[:, [ADVANCE, WRONG]] = True
        mask[self.goal] = [False, False, True]
        return mask

    @property
    def length(self) -> int:
        """Sequence length of a trajectory: `horizon` moves plus the EOS step."""
        return self.horizon + 1


def expert_demos(
    env: ChainMDP, count: int, corrections: float = 0.0, seed: int = 0
) -> dict[str, np.ndarray]:
    """`count` demonstrations b_0 → … → G, EOS (padded to env.length): states, targets, weights.

    Mistake-free by default. `corrections` > 0 (control, variant A only): that fraction of the demonstrations
    contains one noise event (the expert chose ADVANCE at b_i but landed in u_i) followed by the correction
    (ADVANCE = return from u_i to b_i), at a position drawn per demonstration.
    """
    states = np.zeros((count, env.length), np.int32)
    targets = np.zeros((count, env.length), np.int32)
    weights = np.zeros((count, env.length), np.float32)
    rng = np.random.default_rng(seed)
    for d in range(count):
        path = list(range(env.n + 1))
        if d < round(corrections * count):
            if not env.recoverable or env.n + 3 > env.length:
                raise ValueError("corrective demonstrations need variant A and room in the horizon")
            i = int(rng.integers(env.n))
            path = path[: i + 1] + [env.top(i)] + path[i:]
        states[d, : len(path)] = path
        targets[d, : len(path) - 1] = ADVANCE
        targets[d, len(path) - 1] = EOS
        weights[d, : len(path)] = 1.0
    return {"states": states, "targets": targets, "weights": weights}


def rollouts(
    env: ChainMDP, q: np.ndarray, count: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """`count` episodes of the softmax policy of `q` [S, 3] (masked): states, chosen actions, weights, success."""
    p = env.transition_matrix()
    cum = np.cumsum(p, axis=-1)
    logits = np.where(env.action_mask(), q, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    states = np.zeros((count, env.length), np.int32)
    targets = np.zeros((count, env.length), np.int32)
    weights = np.zeros((count, env.length), np.float32)
    s = np.zeros(count, np.int64)
    alive = np.ones(count, bool)
    success = np.zeros(count, bool)
    for t in range(env.length):
        at_goal = alive & (s == env.goal)
        states[:, t] = np.where(alive, s, 0)
        weights[:, t] = at_goal | (alive & (t < env.horizon))
        targets[at_goal, t] = EOS
        success |= at_goal
        moving = alive & ~at_goal
        if t == env.horizon:  # no move left: episodes not at G are truncated
            break
        u = rng.random(count)
        a = (u > probs[s, ADVANCE]).astype(np.int64)  # ADVANCE w.p. π(advance|s), else WRONG
        targets[moving, t] = a[moving]
        nxt = (rng.random(count)[:, None] > cum[s, a]).sum(-1)
        s = np.where(moving, nxt, s)
        alive = moving
    return {"states": states, "targets": targets, "weights": weights, "success": success}


def _logits(q: jax.Array, mask: jax.Array, states: jax.Array) -> jax.Array:
    """[batch, length, 3] logits of the trajectories: masked Q-table rows."""
    return jnp.where(mask, q, MASKED)[states]


def make_update(env: ChainMDP, lam: float, alpha: float, gamma: float, lr: float):
    """Jitted (q, opt_state, expert, policy|None) -> (q, opt_state, loss); offline when policy is None."""
    mask = jnp.asarray(env.action_mask())
    opt = optax.adam(lr)

    def offline_loss(q, expert):
        return losses.iqlearn_loss(
            _logits(q, mask, expert["states"]),
            expert["targets"],
            expert["weights"],
            lam=lam,
            gamma=gamma,
            eos_id=EOS,
            loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
        )[0]

    def online_loss(q, expert, policy):
        return losses.online_iqlearn_loss(
            _logits(q, mask, expert["states"]),
            expert["targets"],
            expert["weights"],
            _logits(q, mask, policy["states"]),
            policy["targets"],
            policy["weights"],
            lam=lam,
            alpha=alpha,
            gamma=gamma,
            eos_id=EOS,
            loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
        )[0]

    @jax.jit
    def offline_step(q, opt_state, expert):
        loss, g = jax.value_and_grad(offline_loss)(q, expert)
        updates, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(q, updates), opt_state, loss

    @jax.jit
    def online_step(q, opt_state, expert, policy):
        loss, g = jax.value_and_grad(online_loss)(q, expert, policy)
        updates, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(q, updates), opt_state, loss

    return opt, offline_step, online_step


@dataclasses.dataclass(frozen=True)
class Config:
    n: int = 8
    horizon: int = 12
    noise: float = 0.1
    lam: float = 0.5
    alpha: float = 0.1
    gamma: float = 1.0
    lr: float = 0.05
    updates: int = 400
    num_demos: int = 16
    rollouts_per_update: int = 16
    init_scale: float = 1.0
    eval_episodes: int = 2000
    seeds: int = 20


# Control: fraction of demonstrations (variant A) that show a mistake and its correction.
CORRECTIONS = 0.25

# (α, γ) settings run besides the main one (Config.alpha, Config.gamma): how much the conclusion depends on them.
SENSITIVITY = ((0.1, 1.0), (0.5, 1.0), (0.1, 0.9), (0.5, 0.9))


def train_one(env: ChainMDP, cfg: Config, method: str, seed: int, steps) -> np.ndarray:
    """Trains a Q-table with offline or online IQLearn; returns it [S, 3]."""
    opt, offline_step, online_step = steps
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(0.0, cfg.init_scale, (env.num_states, NUM_ACTIONS)), jnp.float32)
    opt_state = opt.init(q)
    corrections = CORRECTIONS if method == "offline_corrections" else 0.0
    demos = expert_demos(env, cfg.num_demos, corrections, seed)
    expert = {k: jnp.asarray(v) for k, v in demos.items()}
    for _ in range(cfg.updates):
        if method.startswith("offline"):
            q, opt_state, _ = offline_step(q, opt_state, expert)
        else:
            roll = rollouts(env, np.asarray(q), cfg.rollouts_per_update, rng)
            policy = {k: jnp.asarray(roll[k]) for k in ("states", "targets", "weights")}
            q, opt_state, _ = online_step(q, opt_state, expert, policy)
    return np.asarray(q)


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, standard error, CI low, CI high) of `values` across seeds, t distribution with n − 1 dof."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * se) if len(v) > 1 else float("nan")
    return mean, se, mean - half, mean + half


def run(cfg: Config, sensitivity: bool = True) -> dict:
    """All variants × methods × seeds, for the main (α, γ) and the sensitivity settings; the toy_mdp.json dict."""
    results = {"experiment": "toy_mdp", "config": dataclasses.asdict(cfg), "rows": []}
    settings = [(cfg.alpha, cfg.gamma)]
    if sensitivity:
        settings += [s for s in SENSITIVITY if s != (cfg.alpha, cfg.gamma)]
    for variant, recoverable in (("A (recoverable)", True), ("B (unrecoverable)", False)):
        env = ChainMDP(cfg.n, cfg.noise, recoverable, cfg.horizon)
        offline_done = set()
        for alpha, gamma in settings:
            for method in ("offline", "online"):
                if method == "offline" and gamma in offline_done:
                    continue  # offline IQLearn does not depend on α
                offline_done.add(gamma) if method == "offline" else None
                row = _evaluate(env, dataclasses.replace(cfg, alpha=alpha, gamma=gamma), method)
                row.update(
                    variant=variant, alpha=alpha if method == "online" else None, gamma=gamma
                )
                row["main"] = gamma == cfg.gamma and (method == "offline" or alpha == cfg.alpha)
                results["rows"].append(row)
                print(
                    f"{variant:18s} {method:8s} α={row['alpha']} γ={gamma}: success "
                    f"{row['success_mean']:5.1f} ± {row['success_se']:.1f} % (95% CI {row['ci95_low']:.1f}–"
                    f"{row['ci95_high']:.1f}; π(action 0 | top row) {row['mean_pi_action0_top_row']:.2f})",
                    flush=True,
                )
        if recoverable and sensitivity:  # control: offline IQLearn with corrective demonstrations
            row = _evaluate(env, cfg, "offline_corrections")
            row.update(variant=variant, alpha=None, gamma=cfg.gamma, main=False)
            results["rows"].append(row)
            print(
                f"{variant:18s} offline with corrections: {row['success_mean']:5.1f} %", flush=True
            )
        results.setdefault("optimal_success", {})[variant] = 100.0 * optimal_success(env)
    return results


def _evaluate(env: ChainMDP, cfg: Config, method: str) -> dict:
    """Trains `cfg.seeds` Q-tables with `method` and measures their success rates."""
    steps = make_update(env, cfg.lam, cfg.alpha, cfg.gamma, cfg.lr)
    per_seed, top_action0 = [], []
    for seed in range(cfg.seeds):
        q = train_one(env, cfg, method, seed, steps)
        ev = rollouts(env, q, cfg.eval_episodes, np.random.default_rng(10_000 + seed))
        per_seed.append(100.0 * float(ev["success"].mean()))
        logits = q[env.n + 1 :, :2]
        top_action0.append(float(np.mean(1.0 / (1.0 + np.exp(logits[:, 1] - logits[:, 0])))))
    mean, se, lo, hi = t_interval(np.asarray(per_seed))
    return {
        "method": method,
        "success_mean": mean,
        "success_se": se,
        "ci95_low": lo,
        "ci95_high": hi,
        "success_per_seed": per_seed,
        "mean_pi_action0_top_row": float(np.mean(top_action0)),
        "sd_pi_action0_top_row_over_seeds": float(np.std(top_action0, ddof=1))
        if cfg.seeds > 1
        else None,
    }


def optimal_success(env: ChainMDP) -> float:
    """Probability of reaching G within the horizon for the policy that always chooses action 0 (the right one)."""
    p = env.transition_matrix()[:, ADVANCE]  # [S, S]
    dist = np.zeros(env.num_states)
    dist[0] = 1.0
    for _ in range(env.horizon):
        dist = dist @ p
    return float(dist[env.goal])


METHOD_NAMES = {
    "offline": "offline IQLearn",
    "online": "online IQLearn",
    "offline_corrections": f"offline IQLearn, {CORRECTIONS:.0%} of demos with a correction (control)",
}


def markdown(results: dict, seconds: float) -> str:
    cfg = results["config"]
    lines = [
        "# Toy MDP (paper Appendix A.3.3): offline vs online IQLearn",
        "",
        f"Command: `python experiments/toy_mdp.py` ({seconds:.0f} s on the 2-core CPU machine, shared with other "
        "work; CPU only, no accelerator). Figure: [toy_mdp.png](toy_mdp.png). Data: [toy_mdp.json](toy_mdp.json).",
        "",
        f"Chain of n = {cfg['n']} states to an absorbing goal, {100 * cfg['noise']:.0f}% action noise, horizon "
        f"{cfg['horizon']} moves; {cfg['num_demos']} mistake-free demonstrations; Q-table as logits of "
        f"`losses.iqlearn_loss` / `losses.online_iqlearn_loss`, λ = {cfg['lam']}; online: "
        f"{cfg['rollouts_per_update']} rollouts of the current policy per update; {cfg['updates']} Adam updates "
        f"(lr {cfg['lr']}), initial table N(0, {cfg['init_scale']}²); {cfg['seeds']} seeds per row, "
        f"{cfg['eval_episodes']} evaluation episodes per seed (softmax policy). Main setting: α = {cfg['alpha']} "
        f"(the paper's online mix-in), γ = {cfg['gamma']} (as for language); other rows: sensitivity.",
        "",
        "| variant | method | α | γ | success % (mean ± SE over seeds) | 95% CI (t) | π(action 0) on the top "
        "row, mean (SD over seeds) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        alpha = "–" if r["alpha"] is None else f"{r['alpha']:g}"
        star = " **(main)**" if r.get("main") else ""
        sd = r.get("sd_pi_action0_top_row_over_seeds")
        lines.append(
            f"| {r['variant']} | {METHOD_NAMES[r['method']]}{star} | {alpha} | {r['gamma']:g} | "
            f"{r['success_mean']:.1f} ± {r['success_se']:.1f} | {r['ci95_low']:.1f} – {r['ci95_high']:.1f} | "
            f"{r['mean_pi_action0_top_row']:.2f} ({sd:.2f}) |"
        )
    lines += [
        "",
        "Best achievable (always choosing the right action): "
        + ", ".join(f"{v} {p:.1f}%" for v, p in results["optimal_success"].items())
        + ". π(action 0) on the top row is the learned probability of the returning action of variant A (in B "
        "both actions lead on); offline IQLearn never sees top-row states, so it keeps its random initial "
        "logits there.",
        "",
    ]
    for v in results["optimal_success"]:
        main = {r["method"]: r for r in results["rows"] if r["variant"] == v and r.get("main")}
        on, off = main["online"], main["offline"]
        lines.append(
            f"- {v}, main setting: online − offline = {on['success_mean'] - off['success_mean']:+.1f} points "
            f"(online {on['success_mean']:.1f} [{on['ci95_low']:.1f}, {on['ci95_high']:.1f}], offline "
            f"{off['success_mean']:.1f} [{off['ci95_low']:.1f}, {off['ci95_high']:.1f}])."
        )
    lines.append(
        "- Paper: online > offline by more than 11 points with recovery; within the CIs without."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (seconds), for the tests")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--out_dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    cfg = Config()
    if args.smoke:
        cfg = dataclasses.replace(cfg, updates=20, seeds=3, eval_episodes=100)
    if args.seeds:
        cfg = dataclasses.replace(cfg, seeds=args.seeds)
    t0 = time.time()
    results = run(cfg, sensitivity=not args.smoke)
    seconds = time.time() - t0
    results["seconds"] = seconds
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "toy_mdp.json").write_text(json.dumps(results, indent=1))
    (out / "toy_mdp.md").write_text(markdown(results, seconds))
    from iqlearn_jax import experiment_report

    experiment_report.plot_experiment(results, out)
    print(f"wrote {out}/toy_mdp.{{json,md,png}} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
