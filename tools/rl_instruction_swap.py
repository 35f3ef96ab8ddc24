"""Does a policy fail a task for want of the skill, or because its instruction does not call the skill up? Evaluate
one task of a checkpoint under other tasks' instructions.

    python tools/rl_instruction_swap.py --config examples/rl/metaworld_mt10_flow_noise.yaml \
        --checkpoint runs/rl_mt10/flow_noise_bc03/checkpoint.pt --task reach-v3 \
        --instruction "pick up the puck and place it at the goal" --episodes 100

Runs ``--episodes`` held-out episodes of ``--task`` (the config's evaluation seeds and variations, deterministic ODE
sampler, as ``hetero rl eval``) once with the task's own instruction and once per ``--instruction``, which replaces
the instruction in every observation the policy sees (the simulator and its success test are the task's). Prints
the success rate and its 95% interval per instruction; the last line is JSON. A task solved under another task's
instruction but not its own has the skill and lacks the conditioning (for example MT10's reach, which the RL policy
solves under pick-place's instruction).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from hetero.config import ConfigError
from hetero.rl.config import load_config
from hetero.rl.envs import make_vec_env
from hetero.rl.envs.base import ChunkVecEnv
from hetero.rl.eval import eval_env_config, evaluate
from hetero.rl.policy import load_checkpoint


class InstructionSwap:
    """A vector env whose observations carry ``instruction`` instead of each task's own (everything else passes
    through to ``env``)."""

    def __init__(self, env: ChunkVecEnv, instruction: str):
        self.env, self.instruction = env, instruction

    def __getattr__(self, name):
        return getattr(self.env, name)

    def _swap(self, obs: dict) -> dict:
        return {**obs, "instruction": [self.instruction] * len(obs["instruction"])}

    def reset(self, seed: int) -> dict:
        return self._swap(self.env.reset(seed=seed))

    def chunk_step(self, actions):
        res = self.env.chunk_step(actions)
        return dataclasses.replace(res, obs=self._swap(res.obs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="RL config YAML (env, sampler, evaluation seeds)")
    ap.add_argument("--checkpoint", required=True, help="policy checkpoint (SFT or RL)")
    ap.add_argument("--task", required=True, help="the task to run (one of the config's)")
    ap.add_argument("--instruction", action="append", default=[], help="an instruction to try instead (repeatable)")
    ap.add_argument("--episodes", type=int, default=100, help="episodes per instruction")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(a.config, a.set)
    if a.task not in cfg.env.task_list():
        raise ConfigError("--task", f"{a.task!r} is not one of the config's tasks {cfg.env.task_list()}")
    if a.episodes < 1:
        raise ConfigError("--episodes", "must be >= 1")
    model, _ = load_checkpoint(a.checkpoint)
    env_cfg = eval_env_config(dataclasses.replace(cfg.env, tasks=[a.task]), episodes=a.episodes,
                              variation_seed=cfg.train.eval_variation_seed, max_envs=10)
    rows = []
    env = make_vec_env(env_cfg)
    try:
        own = env.reset(seed=cfg.train.eval_seed)["instruction"][0]
        for ins in [own, *a.instruction]:
            res = evaluate(model, env if ins == own else InstructionSwap(env, ins), cfg.sampler,
                           episodes=a.episodes, seed=cfg.train.eval_seed, device=cfg.train.device)
            lo, hi = res["success_ci95"]
            print(f"{res['success_rate']:.3f} ({lo:.3f}-{hi:.3f})  {ins!r}{'  (its own)' if ins == own else ''}",
                  flush=True)
            rows.append({"instruction": ins, "own": ins == own, "success_rate": res["success_rate"],
                         "success_ci95": res["success_ci95"], "episodes": res["episodes"]})
    finally:
        env.close()
    print(json.dumps({"checkpoint": a.checkpoint, "task": a.task, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
