"""How much a policy explores: the spread of its sampled action chunks at fixed observations, per noise setting.

    python tools/rl_explore.py --config examples/rl/metaworld_mt10_flow_sde.yaml \
        --checkpoint runs/rl_mt10/sft_fewshot.pt --noise-level 0.5 --noise-level 1.0 [--method flow_noise]
        [--set policy.noise_max_std=0.32]

Resets the config's held-out evaluation envs (one per task), samples ``--samples`` action chunks for each first
observation, and prints per noise setting the standard deviation across samples (mean over envs, chunk steps and
action dims; actions live in [-1, 1]) beside the mean magnitude of the deterministic (ODE) action, and the same
spread per task (with flow_noise also the learned per-step std, mean over the chain, and the fraction of its elements
within 1% of a bound: a task whose std sits at the lower bound has stopped exploring). Flow-SDE's
noise level sets sigma_t, but how much of it reaches the executed action depends on how strongly the learned
velocity field contracts the noise, which this measures. The last line is JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch

from hetero.config import ConfigError
from hetero.rl.config import load_config
from hetero.rl.envs import make_vec_env
from hetero.rl.eval import eval_env_config
from hetero.rl.policy import _transition, load_checkpoint, obs_to_torch, sample


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="RL config YAML (env and sampler)")
    ap.add_argument("--checkpoint", required=True, help="policy checkpoint (SFT or RL)")
    ap.add_argument("--noise-level", type=float, action="append", help="Flow-SDE noise levels (repeatable)")
    ap.add_argument("--method", choices=["flow_sde", "flow_noise"], default=None,
                    help="sampling method (default: the config's)")
    ap.add_argument("--samples", type=int, default=64, help="chunks sampled per observation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, as in hetero rl (e.g. policy.noise_min_std=0.16)")
    args = ap.parse_args(argv)
    if args.samples < 2:
        ap.error(f"--samples must be >= 2 to measure a spread, got {args.samples}")
    try:
        cfg = load_config(args.config, args.set)
        model, _ = load_checkpoint(args.checkpoint, policy=cfg.policy)
    except ConfigError as e:
        ap.error(str(e))
    method = args.method or cfg.sampler.method
    if method not in ("flow_sde", "flow_noise"):
        ap.error(f"the config samples with {method!r}: pass --method flow_sde or flow_noise")
    if args.noise_level and method != "flow_sde":
        ap.error("--noise-level applies to flow_sde only (flow_noise learns its noise)")
    torch.set_num_threads(1)
    model.eval()
    env = make_vec_env(eval_env_config(cfg.env, episodes=1, variation_seed=cfg.train.eval_variation_seed))
    try:
        obs = obs_to_torch(env.reset(seed=args.seed))
        tasks = list(env.task_names)
    finally:
        env.close()
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        ode = sample(model, obs, cfg.sampler, method="ode", generator=g).actions.numpy()  # [E, chunk, A]
        rows = []
        for level in args.noise_level or [cfg.sampler.noise_level if method == "flow_sde" else None]:
            sc = cfg.sampler if level is None else dataclasses.replace(cfg.sampler, noise_level=level)
            acts = np.stack([sample(model, obs, sc, method=method, generator=g).actions.numpy()
                             for _ in range(args.samples)])  # [samples, E, chunk, A]
            spread = acts.std(0)  # [E, chunk, A]
            std = float(spread.mean())
            per_task = {t: round(float(spread[[i for i, n in enumerate(tasks) if n == t]].mean()), 4)
                        for t in sorted(set(tasks))}
            row = {"method": method, "noise_level": level, "action_std": round(std, 4), "per_task": per_task}
            if method == "flow_noise":
                row.update(_learned_std(model, obs, sc, tasks, g))
            rows.append(row)
            per_dim = [round(float(x), 3) for x in spread.mean((0, 1))]
            label = f"noise_level={level}" if method == "flow_sde" else "learned noise"
            print(f"{method} {label}: action std across {args.samples} samples {std:.3f} (per action dim {per_dim}); "
                  f"|ODE action| {np.abs(ode).mean():.3f}")
            for t in per_task:
                extra = (f"; learned std {row['noise_std'][t]:.3f}, at lower bound {row['at_min'][t]:.2f}, at upper "
                         f"{row['at_max'][t]:.2f}") if method == "flow_noise" else ""
                print(f"  {t}: action std {per_task[t]:.3f}{extra}")
    print(json.dumps({"envs": int(ode.shape[0]), "ode_action_abs": round(float(np.abs(ode).mean()), 4),
                      "rows": rows}))
    return 0


@torch.no_grad()
def _learned_std(model, obs: dict, cfg, tasks: list[str], g: torch.Generator) -> dict:
    """Flow-Noise's learned per-step std along one sampled chain, per task: mean, and the fraction of elements within
    1% of the lower / upper bound."""
    prefix = model.encode(obs)
    chain = sample(model, obs, cfg, method="flow_noise", generator=g).chain  # [E, N+1, H, A]
    stds = torch.stack([_transition(model, prefix, chain[:, i], torch.full((chain.shape[0],), i), cfg, "flow_noise")[1]
                        for i in range(cfg.num_steps)], dim=1)  # [E, N, H, A]
    lo, hi = model.cfg.noise_min_std, model.cfg.noise_max_std
    out: dict = {"noise_std": {}, "at_min": {}, "at_max": {}}
    for t in sorted(set(tasks)):
        s = stds[[i for i, n in enumerate(tasks) if n == t]]
        out["noise_std"][t] = round(float(s.mean()), 4)
        out["at_min"][t] = round(float((s < lo * 1.01).float().mean()), 3)
        out["at_max"][t] = round(float((s > hi * 0.99).float().mean()), 3)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
