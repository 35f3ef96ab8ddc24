"""Evaluate a policy checkpoint on fixed seeds and held-out task variations: deterministic ODE sampling, or a
stochastic sampler (`--method`) to compare with the training rollouts.

    hetero rl eval --checkpoint runs/rl/checkpoint.pt --config examples/rl/metaworld_mt10_flow_sde.yaml \
        --episodes 10 [--method flow_noise] [--json]
    # last line: {"success_rate": x, "success_ci95": [lo, hi], "episodes": n, "per_task": {...}, ...}

Each task gets ``episodes`` episodes spread over its env slots (each slot runs a fixed quota, so the set of
episodes depends only on the seeds, not on timing). Episodes of a crashed worker are discarded, not counted. The
success rate comes with its 95% Wilson interval: on 200 episodes a true 0.85 reads anywhere in about 0.80-0.90.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
from scipy.stats import binomtest

from hetero.models.vla import VLAPolicy
from hetero.rl.config import EnvConfig
from hetero.rl.envs import make_vec_env
from hetero.rl.envs.base import ChunkVecEnv, episode_metrics
from hetero.rl.policy import NoiseMethod, SamplerConfig, obs_to_torch, sample


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(lo, hi)`` of a success rate ``successes / n`` (scipy's ``binomtest``)."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def eval_env_config(env_cfg: EnvConfig, *, episodes: int, variation_seed: int,
                    max_envs: int | None = None) -> EnvConfig:
    """The evaluation env: held-out variations (LIBERO: another start in the 50 initial states), no groups, slots
    per task = min(episodes, train slots per task)."""
    tasks = env_cfg.task_list()
    per_task = max(1, min(episodes, (max_envs or env_cfg.num_envs) // len(tasks)))
    return dataclasses.replace(env_cfg, tasks=tasks, num_envs=per_task * len(tasks), group_size=1,
                               variation_seed=variation_seed)


@torch.no_grad()
def evaluate(model: VLAPolicy, env: ChunkVecEnv, sampler: SamplerConfig, *, episodes: int, seed: int,
             method: NoiseMethod = "ode", device: str = "cpu", max_chunks: int = 100_000) -> dict:
    """Run ``episodes`` episodes per task; returns success_rate (and success_ci95, its Wilson interval), per_task,
    mean return/length, env-steps/s."""
    model.eval()
    n = env.num_envs
    tasks = sorted(set(env.task_names))
    slots = {t: [i for i in range(n) if env.task_names[i] == t] for t in tasks}
    quota = np.zeros(n, int)
    for idx in slots.values():
        q = math.ceil(episodes / len(idx))
        for k, i in enumerate(idx):  # spread exactly `episodes` over the task's slots
            quota[i] = min(q, max(0, episodes - q * k))
    got: list[list[dict]] = [[] for _ in range(n)]
    g = torch.Generator(device=device).manual_seed(seed)
    obs = env.reset(seed=seed)
    t0, steps = time.time(), 0
    for _ in range(max_chunks):
        if all(len(got[i]) >= quota[i] for i in range(n)):
            break
        s = sample(model, obs_to_torch(obs, device), sampler, method=method, generator=g)
        res = env.chunk_step(np.clip(s.actions.cpu().numpy(), -1.0, 1.0))
        steps += res.env_steps
        for ep in res.episodes:
            i = ep["env"]
            if len(got[i]) < quota[i]:
                got[i].append(ep)
        obs = res.obs
    eps = [e for lst in got for e in lst]
    if len(eps) < quota.sum():
        raise RuntimeError(f"evaluation stopped after {max_chunks} chunk steps with {len(eps)} of {quota.sum()} "
                           "episodes finished: an episode that never ends (check max_episode_steps)")
    wall = time.time() - t0
    wins = sum(bool(e["success_once"]) for e in eps)
    return {**episode_metrics(eps), "success_ci95": list(wilson_interval(wins, len(eps))),
            "length": float(np.mean([e["length"] for e in eps])),
            "env_steps_per_s": steps / max(wall, 1e-9), "wall_s": wall}


def evaluate_config(model: VLAPolicy, env_cfg: EnvConfig, sampler: SamplerConfig, *, episodes: int, seed: int,
                    variation_seed: int, method: NoiseMethod = "ode", device: str = "cpu") -> dict:
    """Build the held-out evaluation env, evaluate (``method``: the sampler, deterministic ODE by default), close it."""
    env = make_vec_env(eval_env_config(env_cfg, episodes=episodes, variation_seed=variation_seed))
    try:
        return evaluate(model, env, sampler, episodes=episodes, seed=seed, method=method, device=device)
    finally:
        env.close()
