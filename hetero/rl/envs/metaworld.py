"""Meta-World (MuJoCo) benchmark for hetero.rl: MT1 / MT10 / MT50 vectorised envs and scripted-expert demos.

Each env slot runs one task; each episode draws one of the task's 50 object/goal variations from
``metaworld.MT1(task, seed=variation_seed)`` with a slot-local RNG, so runs are reproducible given (seed,
variation_seed), and evaluation on held-out variations uses another variation_seed. Observations: the 39-d state,
optionally camera images (``corner2``/``corner3``, shadows off, flipped the right way up), and an instruction from
a template of the task name. Reward: ``sparse`` (1 at success, the episode ends on success) or ``dense`` (Meta-World
v2 reward / 10 per step, plus 1 per remaining step at success so that succeeding early is never worse than
lingering near the goal; also ending on success).

    from hetero.rl.envs.metaworld import MetaWorldConfig, make_vec_env, collect_demos
    env = make_vec_env(MetaWorldConfig(tasks="MT10", num_envs=10))
    demos = collect_demos(MetaWorldConfig(tasks="MT1:reach-v3"), per_task=5, seed=0)

Needs the ``rl`` extra (``pip install -e .[rl]``). Tests: ``python -m pytest -q tests/test_rl_envs.py``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hetero.config import ConfigError, check
from hetero.rl.envs.base import ChunkVecEnv, EnvSlice, SliceFactory, step_reward
from hetero.rl.selfimitation import Distractor, HindsightGoal

MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]

INSTRUCTIONS = {
    "reach-v3": "reach the red goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}


# Hindsight relabelling (algo.sil_hindsight): tasks whose goal is where the fingertips must go. The state is
# [hand xyz, gripper, object xyz + quat, second object xyz + quat] for this and the previous frame, then the goal
# xyz at 36:39; success is judged on the fingers' centre, 0.045 m below the hand (max deviation under 1 mm over
# random actions) within 0.05 m of the goal (SawyerReachEnvV3.evaluate_state).
HINDSIGHT_GOALS = {"reach-v3": HindsightGoal(goal=(36, 39), achieved=(0, 3), offset=(0.0, 0.0, -0.045), radius=0.05)}


# Distractors (algo.anchor_distractors): objects in the state that a task's scripted expert ignores. reach-v3's
# puck (object xyz at 4:7, and 22:25 for the previous frame; SawyerReachV3Policy moves the hand to the goal only)
# is drawn from obj_low..obj_high of SawyerReachEnvV3 (the first three entries of its _random_reset_space).
DISTRACTORS = {"reach-v3": Distractor(entries=((4, 7), (22, 25)), low=(-0.1, 0.6, 0.02), high=(0.1, 0.7, 0.02))}


def hindsight_goals(tasks: list[str], env_tasks: list[str]) -> dict[str, HindsightGoal]:
    """Instruction -> relabelling for ``tasks`` (``algo.sil_hindsight``); each must be one the env runs and one
    :data:`HINDSIGHT_GOALS` knows."""
    return _by_instruction(tasks, env_tasks, HINDSIGHT_GOALS, "algo.sil_hindsight", "hindsight relabelling")


def anchor_distractors(tasks: list[str], env_tasks: list[str]) -> dict[str, Distractor]:
    """Instruction -> distractor for ``tasks`` (``algo.anchor_distractors``); each must be one the env runs and one
    :data:`DISTRACTORS` knows."""
    return _by_instruction(tasks, env_tasks, DISTRACTORS, "algo.anchor_distractors", "distractor")


def _by_instruction(tasks: list[str], env_tasks: list[str], table: dict, path: str, what: str) -> dict:
    for t in tasks:
        if t not in table:
            raise ConfigError(path, f"no {what} for {t!r}; known: {sorted(table)}")
        if t not in env_tasks:
            raise ConfigError(path, f"{t!r} is not one of the env's tasks ({', '.join(env_tasks)})")
    return {instruction(t): table[t] for t in tasks}


def all_tasks() -> list[str]:
    """Names of all Meta-World v3 tasks (needs metaworld)."""
    try:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    except ImportError:
        raise ConfigError("env", "Meta-World is not installed: pip install -e .[rl]") from None

    return sorted(ALL_V3_ENVIRONMENTS)


def instruction(task: str) -> str:
    """Language instruction of a task: a hand template for MT10, otherwise the task name as words."""
    return INSTRUCTIONS.get(task, task.removesuffix("-v3").replace("-", " "))


def resolve_tasks(spec: str | list[str], path: str = "tasks") -> list[str]:
    """``MT10`` / ``MT50`` / ``MT1:<task>`` / a list of task names -> task names; unknown names list the valid ones."""
    valid = all_tasks()
    if isinstance(spec, str):
        if spec == "MT10":
            return list(MT10)
        if spec == "MT50":
            return list(valid)
        if spec.startswith("MT1:"):
            spec = [spec[4:]]
        else:
            raise ConfigError(path, f"unknown benchmark {spec!r}: use MT10, MT50, MT1:<task> or a list of tasks")
    for i, t in enumerate(spec):
        if t not in valid:
            raise ConfigError(f"{path}[{i}]", f"unknown Meta-World task {t!r}; valid tasks: {', '.join(valid)}")
    return list(spec)


@dataclass(kw_only=True)
class MetaWorldConfig:
    """A vectorised Meta-World environment."""

    tasks: str | list[str] = "MT10"
    """MT10, MT50, MT1:<task> or a list of v3 task names; env slot i runs task (i // group_size) % len(tasks)."""
    num_envs: int = 10
    """Parallel envs."""
    num_workers: int = 2
    """Worker processes the envs are spread over."""
    max_episode_steps: int = 150
    """Time limit per episode (Meta-World's own limit is 500)."""
    reward: Literal["sparse", "dense"] = "sparse"
    """sparse: 1 at success; dense: Meta-World's shaped reward (<= 10 a step) / (10 x max_episode_steps) per step
    plus, at success, the share of the episode left (the most the rest could pay, so success always beats
    lingering): returns stay within [0, 1] like the sparse ones, the scale PPO's value clip of 0.2 is made for.
    Episodes end on success either way."""
    variation_seed: int = 0
    """Seed of the 50 object/goal variations per task (use another one for held-out evaluation)."""
    num_cameras: int = 0
    """0 (state only), 1 (corner2) or 2 (corner2 + corner3)."""
    image_size: int = 64
    """Rendered image side in pixels."""
    group_size: int = 1
    """Slots i with the same i // group_size share task and variation sequence (GRPO groups)."""

    def __post_init__(self):
        check(self.num_envs >= 1, "num_envs", "must be >= 1")
        check(self.num_workers >= 1, "num_workers", "must be >= 1")
        check(1 <= self.max_episode_steps <= 500, "max_episode_steps", "must be in [1, 500]")
        check(self.num_cameras in (0, 1, 2), "num_cameras", "must be 0, 1 or 2")
        check(self.image_size >= 16, "image_size", "must be >= 16")
        check(self.group_size >= 1 and self.num_envs % self.group_size == 0, "group_size",
              f"must be >= 1 and divide num_envs={self.num_envs}")
        if isinstance(self.tasks, list):
            check(len(self.tasks) > 0, "tasks", "must not be empty")
        try:
            import metaworld  # noqa: F401
        except ImportError:
            return  # names are checked when the envs are made (which then says to install the rl extra)
        self.task_list()

    def task_list(self) -> list[str]:
        """Resolved task names."""
        return resolve_tasks(self.tasks)


class MetaWorldSlice(EnvSlice):
    """The Meta-World envs of one worker."""

    def __init__(self, cfg: MetaWorldConfig, env_indices: list[int], seed: int):
        if cfg.num_cameras:
            os.environ.setdefault("MUJOCO_GL", "egl")
        warnings.filterwarnings("ignore")
        import metaworld
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.cfg = cfg
        tasks = cfg.task_list()
        self.groups = [i // cfg.group_size for i in env_indices]
        self.task_names = [tasks[g % len(tasks)] for g in self.groups]
        self.instructions = [instruction(t) for t in self.task_names]
        self.variations = {t: metaworld.MT1(t, seed=cfg.variation_seed).train_tasks for t in set(self.task_names)}
        kw = {}
        if cfg.num_cameras:
            kw = dict(render_mode="rgb_array", camera_name="corner2", width=cfg.image_size, height=cfg.image_size)
        self.envs = [ALL_V3_ENVIRONMENTS[t](**kw) for t in self.task_names]
        self.steps = [0] * len(self.envs)
        self.env_indices = env_indices
        self.reseed(seed)
        if cfg.num_cameras:
            import mujoco

            for e in self.envs:
                viewer = e.mujoco_renderer._get_viewer("rgb_array")
                viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def reseed(self, seed: int) -> None:
        self.rngs = [np.random.default_rng([seed, g]) for g in self.groups]
        for e, i in zip(self.envs, self.env_indices):
            e.seed(int(seed * 1000 + i) % (2**31))

    def _obs(self, j: int, state: np.ndarray) -> dict:
        out = {"state": np.asarray(state, np.float32)}
        if self.cfg.num_cameras:
            env = self.envs[j]
            imgs = []
            for cam in ["corner2", "corner3"][: self.cfg.num_cameras]:
                env.mujoco_renderer.camera_id = env.model.camera(cam).id
                imgs.append(np.ascontiguousarray(env.render()[::-1, ::-1].transpose(2, 0, 1)))
            out["images"] = np.stack(imgs).astype(np.uint8)
        return out

    def reset_one(self, j: int) -> dict:
        tasks = self.variations[self.task_names[j]]
        self.envs[j].set_task(tasks[int(self.rngs[j].integers(len(tasks)))])
        state, _ = self.envs[j].reset()
        self.steps[j] = 0
        return self._obs(j, state)

    def step_one(self, j: int, action: np.ndarray):
        state, r, _, _, info = self.envs[j].step(np.clip(action, -1.0, 1.0))
        self.steps[j] += 1
        success = bool(info["success"] > 0)
        reward = step_reward(self.cfg.reward, float(r) / 10.0, success=success, step=self.steps[j],  # r <= 10
                             max_steps=self.cfg.max_episode_steps)
        truncated = self.steps[j] >= self.cfg.max_episode_steps
        return self._obs(j, state), reward, success, truncated and not success, success


def make_vec_env(cfg: MetaWorldConfig, *, start_method: str = "forkserver") -> ChunkVecEnv:
    """A :class:`ChunkVecEnv` of Meta-World envs (call ``reset(seed)`` first)."""
    cfg.task_list()  # validate names before starting processes
    return ChunkVecEnv(SliceFactory(MetaWorldSlice, cfg), num_envs=cfg.num_envs, num_workers=cfg.num_workers,
                       start_method=start_method)


def collect_demos(cfg: MetaWorldConfig, *, per_task: int | Mapping[str, int], seed: int = 0,
                  max_tries: int = 5) -> list[dict]:
    """Scripted-expert demonstrations, ``per_task`` successful episodes per task (or ``per_task[task]``), run in
    this process.

    Each demo is a dict: task, instruction, states ``[T, S]`` float32, actions ``[T, A]`` float32 (clipped to
    [-1, 1]), images ``[T, C, 3, h, w]`` uint8 when cameras are on. Episodes that fail are retried with another
    variation (at most ``max_tries * per_task`` episodes per task).
    """
    from metaworld.policies import ENV_POLICY_MAP

    demos = []
    tasks = cfg.task_list()
    for ti, task in enumerate(tasks):
        one = MetaWorldConfig(tasks=[task], num_envs=1, num_workers=1, max_episode_steps=cfg.max_episode_steps,
                              reward=cfg.reward, variation_seed=cfg.variation_seed, num_cameras=cfg.num_cameras,
                              image_size=cfg.image_size)
        sl = MetaWorldSlice(one, [0], seed * 1000 + ti)
        expert = ENV_POLICY_MAP[task]()
        want = per_task[task] if isinstance(per_task, Mapping) else per_task
        got = 0
        for _ in range(want * max_tries):
            if got == want:
                break
            o = sl.reset_one(0)
            states, actions, images = [], [], []
            success = False
            for _t in range(cfg.max_episode_steps):
                a = np.clip(expert.get_action(o["state"].astype(np.float64)), -1.0, 1.0).astype(np.float32)
                states.append(o["state"])
                actions.append(a)
                if "images" in o:
                    images.append(o["images"])
                o, _, term, trunc, success = sl.step_one(0, a)
                if term or trunc:
                    break
            if success:
                d = {"task": task, "instruction": instruction(task), "states": np.stack(states),
                     "actions": np.stack(actions)}
                if images:
                    d["images"] = np.stack(images)
                demos.append(d)
                got += 1
        sl.close()
        if got < want:
            raise RuntimeError(f"scripted expert for {task} succeeded only {got}/{want} times")
    return demos
