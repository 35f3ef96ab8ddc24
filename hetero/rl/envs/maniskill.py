"""ManiSkill3 (SAPIEN, PhysX on the CPU) for hetero.rl: PickCube / PushCube (/ StackCube) with state observations
and motion-planner demonstrations.

Each env slot holds one ManiSkill env (``sim_backend="physx_cpu"``, ``render_backend="none"``, wrapped in
``CPUGymWrapper``: ManiSkill's CPU simulation runs one env per process-local scene) and runs task
``tasks[(i // group_size) % len(tasks)]`` for its whole life. Each episode resets the env with an episode seed drawn
from a slot-local RNG seeded by (seed, variation_seed, group), so runs are reproducible, GRPO groups share their
initial states, and evaluation with another variation_seed sees other initial states (ManiSkill's are continuous
random draws, so any other seed is held out).

Observations: ManiSkill's ``state`` vector (PickCube 42, PushCube 35, StackCube 48 floats: joint positions and
velocities, TCP pose, object and goal poses) zero-padded to the longest of the configured tasks, and an instruction
from a template of the task name. Actions (``pd_joint_delta_pos``): 8 floats in [-1, 1], seven joint-position
deltas (ManiSkill scales +-1 to +-0.1 rad, the target being the current joint position plus the delta) and the
gripper (-1 closed, +1 open: an absolute finger target). Reward: ``sparse`` (1 at success) or ``dense``
(ManiSkill's normalized dense reward, <= 1 a step, / max_episode_steps, plus at success the share of the episode
left, as for Meta-World: returns stay within [0, 1]). Episodes end at success (``info["success"]``) either way.

Demonstrations: :func:`collect_demos` runs ManiSkill's motion-planner solutions (``solvePickCube`` ...) in the
control mode they need (``pd_joint_pos``), then converts the planned joint targets into normalized
``pd_joint_delta_pos`` actions by executing them in the policy's own env: the action at each step is (planned
target - current joint position) / 0.1, clipped to [-1, 1], advancing ``demo_speedup`` planned targets per control
step (the planner's own timing needs 50-110 steps, more than the 50-step episodes; three times as fast, PickCube
and PushCube demos take 25-50).
Only demos that succeed in the delta env within ``max_episode_steps`` are kept; replaying their actions open-loop
from the same seed reproduces them exactly (:func:`replay_demos`).

    from hetero.rl.envs.maniskill import ManiSkillConfig, make_vec_env, collect_demos
    env = make_vec_env(ManiSkillConfig(tasks="PickCube-v1", num_envs=8))
    demos = collect_demos(ManiSkillConfig(tasks=["PickCube-v1", "PushCube-v1"]), per_task=5, seed=0)

Needs the ``maniskill`` extra and, for SAPIEN, a Vulkan device (on a CPU: Mesa >= 24.3 lavapipe; on Debian 12 from
bookworm-backports): ``tools/install_maniskill.sh`` does both (its apt part needs root). ~0.5 GB per env process.
Tests: ``python -m pytest -q tests/test_rl_maniskill.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hetero.config import ConfigError, check
from hetero.rl.envs.base import ChunkVecEnv, EnvSlice, SliceFactory, step_reward

STATE_DIM = {"PickCube-v1": 42, "PushCube-v1": 35, "StackCube-v1": 48}
"""Length of ManiSkill's state observation of each supported task."""
TASKS = list(STATE_DIM)
INSTRUCTIONS = {
    "PickCube-v1": "pick up the cube and move it to the goal",
    "PushCube-v1": "push the cube to the goal region",
    "StackCube-v1": "stack the red cube on top of the green cube",
}
ACTION_DIM = {"pd_joint_delta_pos": 8, "pd_ee_delta_pose": 7}
"""Action size of each supported control mode (arm + gripper)."""
SOLVERS = {"PickCube-v1": "solvePickCube", "PushCube-v1": "solvePushCube", "StackCube-v1": "solveStackCube"}
"""ManiSkill's motion-planner solution of each task (mani_skill.examples.motionplanning.panda.solutions)."""
INSTALL_HINT = ('ManiSkill3 is not installed: pip install "hetero[maniskill]", or tools/install_maniskill.sh '
                '[VENV], which also sets up the Vulkan device SAPIEN needs (Mesa >= 24.3 lavapipe, root apt steps)')


def _require_maniskill():
    """Import ManiSkill (registering its tasks) or raise an ImportError that says how to install it."""
    try:
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401  (registers the tasks)
        from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return gym, CPUGymWrapper


def instruction(task: str) -> str:
    """Language instruction of a task (a hand template; ManiSkill's tasks have none)."""
    return INSTRUCTIONS.get(task, task.removesuffix("-v1"))


def resolve_tasks(spec: str | list[str], path: str = "tasks") -> list[str]:
    """A task name or a list of them -> task names; an unknown one lists the valid ones (no ManiSkill needed)."""
    names = [spec] if isinstance(spec, str) else list(spec)
    check(len(names) > 0, path, "must not be empty")
    for i, t in enumerate(names):
        if t not in STATE_DIM:
            where = path if isinstance(spec, str) else f"{path}[{i}]"
            raise ConfigError(where, f"unknown ManiSkill task {t!r}; valid tasks: {', '.join(TASKS)}")
    return names


@dataclass(kw_only=True)
class ManiSkillConfig:
    """A vectorised ManiSkill3 environment (CPU PhysX, state observations)."""

    tasks: str | list[str] = "PickCube-v1"
    """PickCube-v1, PushCube-v1, StackCube-v1 or a list of them; env slot i runs task (i // group_size) % len(tasks)."""
    num_envs: int = 8
    """Parallel envs (each ~0.5 GB)."""
    num_workers: int = 2
    """Worker processes the envs are spread over (more than the cores never helps)."""
    max_episode_steps: int = 50
    """Time limit per episode in 20 Hz control steps (ManiSkill's own limit for these tasks is 50)."""
    control_mode: Literal["pd_joint_delta_pos", "pd_ee_delta_pose"] = "pd_joint_delta_pos"
    """Action space: normalized joint deltas + gripper (8), or end-effector delta pose + gripper (7, IK in torch,
    about half the speed; no demos)."""
    reward: Literal["sparse", "dense"] = "sparse"
    """sparse: 1 at success; dense: ManiSkill's normalized dense reward (<= 1) / max_episode_steps per step plus,
    at success, the share of the episode left (returns within [0, 1]). Episodes end on success either way."""
    variation_seed: int = 0
    """Seed of the initial states (episode seeds); evaluation uses another one (held out)."""
    group_size: int = 1
    """Slots i with the same i // group_size share task and episode-seed sequence (GRPO groups)."""
    demo_speedup: int = 3
    """Planned joint targets advanced per control step when converting motion-planner demos (1: the planner's own
    timing, 50-110 steps a demo, too long for 50-step episodes; 3: PickCube/PushCube demos of 25-50 steps)."""

    num_cameras = 0
    """State observations only (no cameras)."""
    image_size = 64
    """Unused (no cameras); here for the policy builder."""

    def __post_init__(self):
        check(self.num_envs >= 1, "num_envs", "must be >= 1")
        check(self.num_workers >= 1, "num_workers", "must be >= 1")
        check(self.max_episode_steps >= 1, "max_episode_steps", "must be >= 1")
        check(self.group_size >= 1 and self.num_envs % self.group_size == 0, "group_size",
              f"must be >= 1 and divide num_envs={self.num_envs}")
        check(self.demo_speedup >= 1, "demo_speedup", "must be >= 1")
        self.task_list()

    def task_list(self) -> list[str]:
        """Resolved task names."""
        return resolve_tasks(self.tasks)

    @property
    def state_dim(self) -> int:
        """Length of the (zero-padded) state vector: the longest state of the configured tasks."""
        return max(STATE_DIM[t] for t in self.task_list())

    @property
    def action_dim(self) -> int:
        """Action size of the control mode."""
        return ACTION_DIM[self.control_mode]


def _make_env(task: str, *, control_mode: str, reward_mode: str, max_episode_steps: int, wrap: bool = True):
    """One ManiSkill env on the CPU, state observations, no renderer; ``CPUGymWrapper``-ed (numpy, unbatched)."""
    gym, CPUGymWrapper = _require_maniskill()
    try:
        env = gym.make(task, obs_mode="state", sim_backend="physx_cpu", render_backend="none",
                       control_mode=control_mode, reward_mode=reward_mode, max_episode_steps=max_episode_steps)
    except RuntimeError as e:
        if any(s in str(e) for s in ("rendering device", "vk::", "Vulkan", "physical device")):
            raise RuntimeError(f"SAPIEN found no usable Vulkan device ({e}): on a CPU it needs Mesa >= 24.3 "
                               f"lavapipe; run tools/install_maniskill.sh (its apt part needs root)") from None
        raise
    return CPUGymWrapper(env) if wrap else env


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("mani_skill", "sapien"):
        logging.getLogger(name).setLevel(logging.ERROR)


class ManiSkillSlice(EnvSlice):
    """The ManiSkill envs of one worker: one ``CPUGymWrapper``-ed env per slot."""

    def __init__(self, cfg: ManiSkillConfig, env_indices: list[int], seed: int):
        import torch

        torch.set_num_threads(1)  # ManiSkill computes in torch; one thread per env process on a small CPU
        _quiet()
        self.cfg = cfg
        tasks = cfg.task_list()
        self.state_dim = cfg.state_dim
        self.env_indices = env_indices
        self.groups = [i // cfg.group_size for i in env_indices]
        self.task_names = [tasks[g % len(tasks)] for g in self.groups]
        self.instructions = [instruction(t) for t in self.task_names]
        reward_mode = "normalized_dense" if cfg.reward == "dense" else "sparse"
        # ManiSkill's own time limit lies beyond ours: step_one ends episodes
        self.envs = [_make_env(t, control_mode=cfg.control_mode, reward_mode=reward_mode,
                               max_episode_steps=cfg.max_episode_steps + 10) for t in self.task_names]
        self.steps = [0] * len(self.envs)
        self.episode_seeds = [0] * len(self.envs)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.rngs = [np.random.default_rng([seed, self.cfg.variation_seed, g]) for g in self.groups]

    def _obs(self, state: np.ndarray) -> dict:
        out = np.zeros(self.state_dim, np.float32)
        state = np.asarray(state, np.float32).reshape(-1)
        out[: len(state)] = state
        return {"state": out}

    def reset_one(self, j: int) -> dict:
        return self.reset_seeded(j, int(self.rngs[j].integers(2**31)))

    def reset_seeded(self, j: int, episode_seed: int) -> dict:
        """Start an episode of slot j from a given ManiSkill episode seed (demos, replays)."""
        state, _ = self.envs[j].reset(seed=episode_seed)
        self.steps[j] = 0
        self.episode_seeds[j] = episode_seed
        return self._obs(state)

    def step_one(self, j: int, action: np.ndarray):
        a = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        state, r, _, _, info = self.envs[j].step(a)
        self.steps[j] += 1
        success = bool(info["success"])
        reward = step_reward(self.cfg.reward, float(r), success=success, step=self.steps[j],  # normalized: <= 1
                             max_steps=self.cfg.max_episode_steps)
        truncated = self.steps[j] >= self.cfg.max_episode_steps
        return self._obs(state), reward, success, truncated and not success, success

    def arm_qpos(self, j: int) -> np.ndarray:
        """Current arm joint positions of slot j (7)."""
        return self.envs[j].unwrapped.agent.robot.get_qpos()[0, :7].cpu().numpy().astype(np.float64)

    def arm_delta_bounds(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """The joint deltas (rad) that normalized arm actions -1 and +1 stand for (pd_joint_delta_pos)."""
        arm = self.envs[j].unwrapped.agent.controller.controllers["arm"]
        return (arm.action_space_low.cpu().numpy().astype(np.float64),
                arm.action_space_high.cpu().numpy().astype(np.float64))


def make_vec_env(cfg: ManiSkillConfig, *, start_method: str = "forkserver") -> ChunkVecEnv:
    """A :class:`ChunkVecEnv` of ManiSkill envs (call ``reset(seed)`` first); ImportError without the extra."""
    _require_maniskill()  # fail here, not as a worker traceback
    cfg.task_list()
    return ChunkVecEnv(SliceFactory(ManiSkillSlice, cfg), num_envs=cfg.num_envs, num_workers=cfg.num_workers,
                       start_method=start_method)


# ---- motion-planner demonstrations ------------------------------------------------------------------------------


def _solver(task: str):
    """ManiSkill's motion-planner solution of a task (mplib segfaults under numpy 2: refuse that early)."""
    if int(np.__version__.split(".")[0]) >= 2:
        raise RuntimeError(f"ManiSkill's motion planner (mplib 0.1) crashes under numpy {np.__version__}: "
                           f'install numpy<2 (pip install "hetero[maniskill]" pins it)')
    from mani_skill.examples.motionplanning.panda import solutions

    return getattr(solutions, SOLVERS[task])


def _plan(solve, env, episode_seed: int) -> np.ndarray | None:
    """Run a planner solution in a ``pd_joint_pos`` env; the actions it sent ``[T, 8]`` (7 joint targets + gripper),
    or None when planning failed."""
    gym, _ = _require_maniskill()

    class Recorder(gym.Wrapper):
        sent: list[np.ndarray] = []

        def step(self, action):
            self.sent.append(np.asarray(action, np.float64).copy())
            return self.env.step(action)

    rec = Recorder(env)
    rec.sent = []
    try:
        res = solve(rec, seed=episode_seed)
    except Exception:  # a planning failure inside the solution
        return None
    if isinstance(res, int) or not rec.sent:  # the solutions return -1 when no plan was found
        return None
    return np.stack(rec.sent)


def convert_plan(sl: ManiSkillSlice, j: int, plan: np.ndarray, episode_seed: int, speedup: int) -> dict:
    """Execute a planned ``pd_joint_pos`` action sequence in slot j's ``pd_joint_delta_pos`` env.

    Each control step targets a planned joint position ``speedup`` entries further on (never skipping a change of
    the gripper command, and holding the last target at the end); the action is the normalized delta from the
    current joint position, clipped to [-1, 1]. Returns states ``[T, S]``, actions ``[T, 8]`` (float32), success,
    and the episode seed; the episode ends at success or at the time limit, like any episode of the env.
    """
    low, high = sl.arm_delta_bounds(j)
    mid, half = (high + low) / 2, (high - low) / 2
    o = sl.reset_seeded(j, episode_seed)
    n = len(plan)
    i = -1
    states, actions, success = [], [], False
    while True:
        grip = plan[max(i, 0), 7]
        k = i + 1
        while k < min(i + speedup, n - 1) and plan[k + 1, 7] == plan[k, 7] == grip:
            k += 1
        i = min(k, n - 1)
        arm = np.clip((plan[i, :7] - sl.arm_qpos(j) - mid) / half, -1.0, 1.0)
        a = np.concatenate([arm, plan[i, 7:]]).astype(np.float32)
        states.append(o["state"])
        actions.append(a)
        o, _, term, trunc, success = sl.step_one(j, a)
        if term or trunc:
            break
    return {"states": np.stack(states), "actions": np.stack(actions), "success": bool(success), "seed": episode_seed}


def collect_demos(cfg: ManiSkillConfig, *, per_task: int | Mapping[str, int], seed: int = 0, max_tries: int = 5,
                  speedup: int | None = None) -> list[dict]:
    """Motion-planner demonstrations converted to ``pd_joint_delta_pos``, ``per_task`` successful ones per task
    (or ``per_task[task]``).

    Runs in this process: per task one ``pd_joint_pos`` env for the planner and one env of the policy's action space
    in which the plan is converted (:func:`convert_plan`). Each demo is a dict: task, instruction, states ``[T, S]``
    float32 (zero-padded to ``cfg.state_dim``), actions ``[T, 8]`` float32 in [-1, 1], seed (the ManiSkill episode
    seed: :func:`replay_demos` replays it), plan_steps (the planner's own length). Plans that fail, or whose
    conversion does not succeed within ``cfg.max_episode_steps``, are retried with another initial state (at most
    ``max_tries * per_task`` per task).
    """
    _require_maniskill()
    if cfg.control_mode != "pd_joint_delta_pos":
        raise ConfigError("env.control_mode", f"planner demos are converted to pd_joint_delta_pos only, not "
                                              f"{cfg.control_mode}")
    speedup = cfg.demo_speedup if speedup is None else speedup
    _quiet()
    demos = []
    for ti, task in enumerate(cfg.task_list()):
        solve = _solver(task)
        one = dataclasses.replace(cfg, tasks=[task], num_envs=1, num_workers=1, group_size=1)
        sl = ManiSkillSlice(one, [0], seed)
        sl.state_dim = cfg.state_dim  # pad like the multi-task env
        planner_env = _make_env(task, control_mode="pd_joint_pos", reward_mode="sparse", max_episode_steps=10_000,
                                wrap=False)
        rng = np.random.default_rng([seed, cfg.variation_seed, ti, 1])
        want = per_task[task] if isinstance(per_task, Mapping) else per_task
        got, lengths = 0, []
        try:
            for _ in range(want * max_tries):
                if got == want:
                    break
                episode_seed = int(rng.integers(2**31))
                plan = _plan(solve, planner_env, episode_seed)
                if plan is None:
                    continue
                d = convert_plan(sl, 0, plan, episode_seed, speedup)
                lengths.append(len(d["actions"]) if d["success"] else None)
                if d["success"]:
                    demos.append({"task": task, "instruction": instruction(task), "states": d["states"],
                                  "actions": d["actions"], "seed": episode_seed, "plan_steps": len(plan)})
                    got += 1
        finally:
            sl.close()
            planner_env.close()
        if got < want:
            raise RuntimeError(f"motion-planner demos for {task}: only {got}/{want} succeeded within "
                               f"max_episode_steps={cfg.max_episode_steps} with demo_speedup={speedup} (lengths "
                               f"{lengths}; None: failed): raise env.max_episode_steps or env.demo_speedup")
    return demos


def replay_demos(cfg: ManiSkillConfig, demos: list[dict]) -> list[bool]:
    """Replay each demo's actions open-loop from its episode seed in a fresh env; whether it succeeded (and
    reproduced the recorded states exactly)."""
    out = []
    slices: dict[str, ManiSkillSlice] = {}
    try:
        for d in demos:
            if d["task"] not in slices:
                one = dataclasses.replace(cfg, tasks=[d["task"]], num_envs=1, num_workers=1, group_size=1)
                slices[d["task"]] = ManiSkillSlice(one, [0], 0)
                slices[d["task"]].state_dim = cfg.state_dim
            sl = slices[d["task"]]
            o = sl.reset_seeded(0, d["seed"])
            same, success = True, False
            for t, a in enumerate(d["actions"]):
                same = same and np.array_equal(o["state"], d["states"][t])
                o, _, _, _, success = sl.step_one(0, a)
            out.append(bool(success and same))
    finally:
        for sl in slices.values():
            sl.close()
    return out
