"""tools/rl_instruction_swap.py's env wrapper: python -m pytest -q tests/test_rl_instruction_swap.py"""

import importlib.util
from pathlib import Path

import numpy as np

from hetero.rl.envs.base import ChunkResult

_spec = importlib.util.spec_from_file_location("rl_instruction_swap",
                                               Path(__file__).parents[1] / "tools" / "rl_instruction_swap.py")
swap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(swap)


class _Env:
    num_envs, task_names = 2, ["reach-v3", "reach-v3"]

    def _obs(self):
        return {"state": np.zeros((2, 3), np.float32), "instruction": ["reach the goal"] * 2}

    def reset(self, seed):
        self.seed = seed
        return self._obs()

    def chunk_step(self, actions):
        z = np.zeros(2)
        return ChunkResult(obs=self._obs(), reward=z, done=z.astype(bool), truncated=z.astype(bool),
                           success=z.astype(bool), final_obs=self._obs(), discarded=z.astype(bool), episodes=[{"env": 0}], env_steps=10)


def test_swaps_the_instruction_of_every_observation_and_passes_the_rest_through():
    env = swap.InstructionSwap(_Env(), "pick up the puck")
    obs = env.reset(seed=3)
    assert obs["instruction"] == ["pick up the puck"] * 2 and env.env.seed == 3
    res = env.chunk_step(np.zeros((2, 5, 4)))
    assert res.obs["instruction"] == ["pick up the puck"] * 2 and res.episodes == [{"env": 0}]
    assert env.num_envs == 2 and env.task_names == ["reach-v3"] * 2
