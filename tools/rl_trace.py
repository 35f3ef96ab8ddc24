"""Where in the task's variations does a policy fail? Trace held-out Meta-World episodes of one task, one line each.

    python tools/rl_trace.py --config examples/rl/metaworld_mt10_flow_sde.yaml \
        --checkpoint runs/rl_mt10/flow_sde_bc03/checkpoint.pt --task drawer-open-v3 --episodes 20

Runs ``--episodes`` episodes of ``--task`` in this process, one env slot each, on the config's held-out variations
(``train.eval_variation_seed``, seeded from ``train.eval_seed``) with the ODE sampler (its starting noise seeded
from the same seed), as ``hetero rl eval`` does, though not the same draws of variations. Prints per episode:
success, steps, the object's start position (``obs[4:7]``), the goal (``obs[36:39]``), and the tool centre point and
object at the end; then the success rate over the episodes whose object starts (``--split goal``: whose goal
lies) left and right of the median x. The last line is JSON with every row. A policy that fails one side of the
workspace has a gap in spatial coverage, not in the skill. State policies only (no cameras).

``--show-object X,Y`` shows the policy the object at (X, Y) (both frames' entries) wherever it really is, to test
whether the object moves the hand (Meta-World reach-v3's puck does: docs/results.md, RL, twenty-third session).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch

from hetero.config import ConfigError
from hetero.rl.config import load_config
from hetero.rl.policy import SamplerConfig, load_checkpoint, sample


def _r4(v) -> list[float]:
    return np.round(np.asarray(v, np.float64), 4).tolist()


def trace_episodes(model, env_cfg, task: str, *, episodes: int, seed: int, sampler: SamplerConfig,
                   show_object: tuple[float, float] | None = None) -> list[dict]:
    """One row per episode of ``task`` (Meta-World, in this process): success, steps, object start, goal, and the
    tool centre point and object position at the end. ``env_cfg`` is a :class:`MetaWorldConfig`; ``show_object``
    (x, y): the policy sees the object there (state 4:6 and 22:24) instead of where it is."""
    from hetero.rl.envs.metaworld import MetaWorldSlice

    cfg = dataclasses.replace(env_cfg, tasks=[task], num_envs=episodes, num_cameras=0, group_size=1)
    envs = MetaWorldSlice(cfg, list(range(episodes)), seed)
    ode = dataclasses.replace(sampler, method="ode")
    gen = torch.Generator().manual_seed(seed)  # the ODE starts from sampled noise
    model.eval()
    try:
        rows = [_trace_one(model, envs, j, ode, gen, show_object) for j in range(episodes)]
    finally:
        envs.close()
    return rows


def _trace_one(model, envs, j: int, ode: SamplerConfig, gen: torch.Generator, show_object=None) -> dict:
    """Run slot ``j``'s next episode to its end; its row (see :func:`trace_episodes`)."""
    obs = envs.reset_one(j)
    start = obs["state"].copy()
    steps, success, done = 0, False, False
    while not done:
        o = {"state": torch.as_tensor(obs["state"])[None].clone(), "instruction": [envs.instructions[j]]}
        if show_object is not None:
            o["state"][0, 4:6] = o["state"][0, 22:24] = torch.tensor(show_object, dtype=o["state"].dtype)
        with torch.no_grad():
            chunk = sample(model, o, ode, generator=gen).chain[0, -1, : ode.chunk].numpy()
        for a in chunk:
            obs, _, term, trunc, success = envs.step_one(j, np.clip(a, -1.0, 1.0))
            steps += 1
            done = bool(success or term or trunc)
            if done:
                break
    return {"episode": j, "success": bool(success), "steps": steps,
            "object_start": _r4(start[4:7]), "goal": _r4(start[36:39]),
            "tcp_end": _r4(envs.envs[j].tcp_center), "object_end": _r4(obs["state"][4:7])}


def split_by_x(rows: list[dict], key: str = "object_start") -> dict:
    """Success rate of the episodes whose ``key`` (``object_start`` or ``goal``) has x below / at or above the
    median x."""
    xs = np.array([r[key][0] for r in rows])
    med = float(np.median(xs))
    out = {"by": key, "median_x": med}
    for side, sel in (("left", xs < med), ("right", xs >= med)):
        ok = [r["success"] for r, s in zip(rows, sel) if s]
        out[side] = {"episodes": len(ok), "success_rate": float(np.mean(ok)) if ok else None}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="RL config YAML (a Meta-World env, sampler, evaluation seeds)")
    ap.add_argument("--checkpoint", required=True, help="policy checkpoint (SFT or RL)")
    ap.add_argument("--task", required=True, help="the task to run (one of the config's)")
    ap.add_argument("--episodes", type=int, default=20, help="episodes (each on its own variation draw)")
    ap.add_argument("--split", choices=["object", "goal"], default="object",
                    help="split the success rate at the median x of the object's start or of the goal")
    ap.add_argument("--show-object", metavar="X,Y", default=None,
                    help="show the policy the object at this x, y instead of where it is")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    a = ap.parse_args(argv)
    show = None
    if a.show_object is not None:
        try:
            show = tuple(float(v) for v in a.show_object.split(","))
        except ValueError:
            show = ()
        if len(show) != 2:
            raise ConfigError("--show-object", f"expected X,Y (two numbers), got {a.show_object!r}")
    torch.set_num_threads(1)
    cfg = load_config(a.config, a.set)
    if cfg.benchmark != "metaworld":
        raise ConfigError("--config", f"benchmark is {cfg.benchmark!r}; this tool reads Meta-World observations")
    if a.task not in cfg.env.task_list():
        raise ConfigError("--task", f"{a.task!r} is not one of the config's tasks {cfg.env.task_list()}")
    if a.episodes < 2:
        raise ConfigError("--episodes", "must be >= 2")
    model, _ = load_checkpoint(a.checkpoint)
    if model.cfg.num_cameras:
        raise ConfigError("--checkpoint", f"the policy reads {model.cfg.num_cameras} camera(s); this tool runs state only")
    env_cfg = dataclasses.replace(cfg.env, variation_seed=cfg.train.eval_variation_seed)
    rows = trace_episodes(model, env_cfg, a.task, episodes=a.episodes, seed=cfg.train.eval_seed, sampler=cfg.sampler,
                          show_object=show)
    for r in rows:
        print(f"ep {r['episode']:3d} {'ok  ' if r['success'] else 'FAIL'} steps {r['steps']:3d} object "
              f"{r['object_start']} goal {r['goal']} tcp_end {r['tcp_end']} object_end {r['object_end']}")
    split = split_by_x(rows, "goal" if a.split == "goal" else "object_start")
    def side(d: dict) -> str:  # an empty side (every episode at the median x) has no rate
        return f"{'n/a' if d['success_rate'] is None else format(d['success_rate'], '.3f')} of {d['episodes']}"

    print(f"success {np.mean([r['success'] for r in rows]):.3f}; {a.split} x < {split['median_x']:.3f}: "
          f"{side(split['left'])}, >=: {side(split['right'])}")
    print(json.dumps({"checkpoint": a.checkpoint, "task": a.task, "split_x": split, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
