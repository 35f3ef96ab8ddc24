"""The vectorised chunk-stepping environment interface and its subprocess-worker implementation.

A benchmark provides a picklable *factory* ``make(worker_index, env_indices, seed) -> EnvSlice``; the
:class:`ChunkVecEnv` spreads env indices over worker processes (each worker owns a slice of envs and executes a
whole action chunk per message, so inter-process traffic is one round-trip per chunk), auto-resets finished
episodes, and restarts a worker that crashed (its envs' current episodes are discarded, never counted).

    env = ChunkVecEnv(factory, num_envs=8, num_workers=2)
    obs = env.reset(seed=0)                          # dict: state [N, S], images [N, C, 3, h, w], instruction [N]
    out = env.chunk_step(actions)                    # actions [N, H, A]
    out.reward, out.done, out.success, out.episodes  # [N], [N], [N], list of finished-episode dicts

Run the tests: ``python -m pytest -q tests/test_rl_envs.py``.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class EnvSlice:
    """The envs one worker owns. Subclasses implement ``reset_one`` and ``step_one`` for env slot j."""

    instructions: list[str]
    """Instruction of each env slot."""
    task_names: list[str]
    """Task name of each env slot."""

    def reseed(self, seed: int) -> None:
        """Re-seed every random choice of this slice (task variations, initial states)."""
        raise NotImplementedError

    def reset_one(self, j: int) -> dict:
        """Start a new episode in slot j; returns its observation dict (state, optional images)."""
        raise NotImplementedError

    def step_one(self, j: int, action: np.ndarray) -> tuple[dict, float, bool, bool, bool]:
        """One env step: (obs, reward, terminated, truncated, success)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release simulator resources: closes every env in ``self.envs`` (a failing close is ignored)."""
        for e in getattr(self, "envs", []):
            try:
                e.close()
            except Exception:
                pass
        self.envs = []


def step_reward(kind: str, r_unit: float, *, success: bool, step: int, max_steps: int) -> float:
    """The reward of one env step. ``sparse``: 1 at success. ``dense``: the simulator's shaped reward scaled to
    [0, 1] (``r_unit``) / ``max_steps``, plus at success (which ends the episode) the share of the episode left, the
    most the rest could have paid: an episode returns at most about 1, the scale PPO's value clip of 0.2 is made
    for, and succeeding never earns less than lingering near the goal."""
    if kind == "sparse":
        return float(success)
    return (r_unit + (float(max_steps - step) if success else 0.0)) / max_steps


@dataclass(frozen=True)
class SliceFactory:
    """The picklable ``make(worker_index, env_indices, seed)`` a :class:`ChunkVecEnv` calls in each worker:
    ``slice_cls(cfg, [offset + i for i in env_indices], seed)``. ``offset`` shifts the slots, so a micro-batch of a
    larger vector env keeps the tasks, variations and seeds of its global slots."""

    slice_cls: type
    """The benchmark's :class:`EnvSlice` subclass."""
    cfg: Any
    """Its env config."""
    offset: int = 0
    """Global index of slot 0."""

    def __call__(self, worker_index: int, env_indices: list[int], seed: int) -> EnvSlice:
        return self.slice_cls(self.cfg, [self.offset + i for i in env_indices], seed)


@dataclass
class ChunkResult:
    """Result of one :meth:`ChunkVecEnv.chunk_step` over N envs."""

    obs: dict
    """Next observation (the new episode's first one where an episode ended)."""
    reward: np.ndarray
    """Reward summed over the executed steps of the chunk ``[N]`` float32."""
    done: np.ndarray
    """The episode ended inside the chunk (terminated or truncated) ``[N]`` bool."""
    truncated: np.ndarray
    """It ended by the time limit (bootstrap target) ``[N]`` bool."""
    success: np.ndarray
    """Success was reached during the chunk ``[N]`` bool."""
    final_obs: dict | None
    """Last observation of finished episodes (rows of envs that did not finish repeat ``obs``)."""
    discarded: np.ndarray
    """The env's worker crashed during this chunk; its episode is dropped ``[N]`` bool."""
    episodes: list[dict] = field(default_factory=list)
    """One dict per finished episode: env, task, return, length, success_once."""
    env_steps: int = 0
    """Simulator steps executed in this chunk (all envs)."""


def episode_metrics(episodes: list[dict]) -> dict:
    """Finished episodes (``ChunkResult.episodes``) -> success_rate and return (means; None without episodes),
    episodes (count) and per_task (success rate per task name)."""
    def mean(key, eps=episodes):
        return float(np.mean([e[key] for e in eps])) if eps else None
    tasks = sorted({e["task"] for e in episodes})
    return {"success_rate": mean("success_once"), "return": mean("return"), "episodes": len(episodes),
            "per_task": {t: mean("success_once", [e for e in episodes if e["task"] == t]) for t in tasks}}


def _stack_obs(obs_list: list[dict]) -> dict:
    out = {"state": np.stack([o["state"] for o in obs_list]).astype(np.float32)}
    if "images" in obs_list[0]:
        out["images"] = np.stack([o["images"] for o in obs_list])
    return out


def _worker(conn, factory, worker_index: int, env_indices: list[int], seed: int, slowdown: float = 1.0) -> None:
    """Worker loop: owns EnvSlice; commands reset / step / info / close. With ``slowdown`` > 1 (the CPU emulation
    of benchmarks) each reset / step is padded to that many times its CPU time (its work varies with contacts and
    resets), as a simulator on a host that many times slower would take."""
    import os

    from hetero.runtime.emulate import Emulator

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        emu = Emulator(slowdown=slowdown)
        envs = factory(worker_index, env_indices, seed)
        ep_ret = [0.0] * len(env_indices)
        ep_len = [0] * len(env_indices)
        ep_succ = [False] * len(env_indices)
        conn.send(("ok", {"instructions": envs.instructions, "task_names": envs.task_names}))
        while True:
            cmd, data = conn.recv()
            if cmd == "reset":
                if data is not None:
                    envs.reseed(data)
                t0, c0 = time.perf_counter(), time.thread_time()
                obs = [envs.reset_one(j) for j in range(len(env_indices))]
                emu.pad_cpu(time.perf_counter() - t0, time.thread_time() - c0)
                ep_ret = [0.0] * len(env_indices)
                ep_len = [0] * len(env_indices)
                ep_succ = [False] * len(env_indices)
                conn.send(("ok", obs))
            elif cmd == "step":
                actions = data  # [n_local, H, A]
                res = []
                steps = 0
                t0, c0 = time.perf_counter(), time.thread_time()
                for j in range(len(env_indices)):
                    rsum, succ, done, trunc, final = 0.0, False, False, False, None
                    for a in actions[j]:
                        o, r, term, tr, s = envs.step_one(j, a)
                        steps += 1
                        rsum += r
                        ep_ret[j] += r
                        ep_len[j] += 1
                        succ = succ or s
                        ep_succ[j] = ep_succ[j] or s
                        if term or tr:
                            done, trunc = True, bool(tr and not term)
                            break
                    episode = None
                    if done:
                        final = o
                        episode = {"env": env_indices[j], "task": envs.task_names[j], "return": ep_ret[j],
                                   "length": ep_len[j], "success_once": ep_succ[j]}
                        ep_ret[j], ep_len[j], ep_succ[j] = 0.0, 0, False
                        o = envs.reset_one(j)
                    res.append((o, rsum, done, trunc, succ, final, episode))
                emu.pad_cpu(time.perf_counter() - t0, time.thread_time() - c0)
                conn.send(("ok", (res, steps)))
            elif cmd == "crash":  # test hook: die like a segfaulting simulator
                os._exit(1)
            elif cmd == "close":
                envs.close()
                conn.send(("ok", None))
                return
    except (EOFError, KeyboardInterrupt):
        return
    except Exception:
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:
            pass


class WorkerError(RuntimeError):
    """An env worker raised; carries the worker's traceback."""


class ChunkVecEnv:
    """N envs in subprocess workers, stepped a whole action chunk at a time, with auto-reset and crash restart."""

    def __init__(self, factory: Callable[[int, list[int], int], EnvSlice], *, num_envs: int, num_workers: int = 1,
                 start_method: str = "forkserver", timeout_s: float = 600.0, slowdown: float = 1.0):
        if num_envs < 1:
            raise ValueError("num_envs must be >= 1")
        num_workers = max(1, min(num_workers, num_envs))
        self.factory, self.num_envs, self.num_workers = factory, num_envs, num_workers
        self.timeout_s, self.slowdown = timeout_s, slowdown
        self._ctx = mp.get_context(start_method)
        self.slices = [list(range(num_envs))[w::num_workers] for w in range(num_workers)]
        self.seed = 0
        self._generation = [0] * num_workers
        self.procs: list = [None] * num_workers
        self.conns: list = [None] * num_workers
        self.instructions: list[str] = [""] * num_envs
        self.task_names: list[str] = [""] * num_envs
        self.restarts = 0
        self._alive: list[int] | None = None  # workers a step was sent to, while one is in flight
        for w in range(num_workers):
            self._start(w)

    def _worker_seed(self, w: int) -> int:
        # the same for all workers (slices tell envs apart); a restarted worker gets a new stream
        return self.seed + self._generation[w] * 15485863

    def _start(self, w: int) -> None:
        parent, child = self._ctx.Pipe()
        p = self._ctx.Process(target=_worker, args=(child, self.factory, w, self.slices[w], self._worker_seed(w),
                                                        self.slowdown),
                              daemon=True)
        p.start()
        child.close()
        self.procs[w], self.conns[w] = p, parent
        info = self._recv(w)
        for i, instr, name in zip(self.slices[w], info["instructions"], info["task_names"]):
            self.instructions[i], self.task_names[i] = instr, name

    def _recv(self, w: int, poll_s: float = 5.0):
        """Worker w's next message; TimeoutError after ``timeout_s`` of waiting for it. Waiting is counted in polls
        of ``poll_s``, each at most its length, so that time the process spent suspended (SIGSTOP, a paused job)
        does not count: a run paused for longer than the timeout carries on when resumed."""
        conn, waited = self.conns[w], 0.0
        while True:
            step = min(poll_s, max(self.timeout_s - waited, 0.0))
            t0 = time.monotonic()
            if conn.poll(step):
                break
            waited += min(time.monotonic() - t0, step)
            if waited >= self.timeout_s:
                raise TimeoutError(f"env worker {w} did not answer in {self.timeout_s} s")
        status, data = conn.recv()
        if status == "error":
            raise WorkerError(f"env worker {w} failed:\n{data}")
        return data

    def _restart(self, w: int) -> list[dict]:
        """Restart worker w after a crash; returns its fresh observations."""
        try:
            self.procs[w].kill()
            self.procs[w].join(5)
        except Exception:
            pass
        self.restarts += 1
        self._generation[w] += 1
        self._start(w)
        self.conns[w].send(("reset", self._worker_seed(w)))
        return self._recv(w)

    def _with_obs(self, states: dict) -> dict:
        states["instruction"] = list(self.instructions)
        return states

    def reset(self, seed: int = 0) -> dict:
        """Re-seed every worker from ``seed`` (reproducible) and start new episodes; returns the observations."""
        self.seed = seed
        self._generation = [0] * self.num_workers
        obs: list = [None] * self.num_envs
        for w in range(self.num_workers):
            if self.procs[w] is None or not self.procs[w].is_alive():
                self._start(w)
            self.conns[w].send(("reset", self._worker_seed(w)))
        for w in range(self.num_workers):
            for i, o in zip(self.slices[w], self._recv(w)):
                obs[i] = o
        return self._with_obs(_stack_obs(obs))

    def chunk_step(self, actions: np.ndarray) -> ChunkResult:
        """Execute ``actions [N, H, A]`` (each env runs its H actions, stopping early when its episode ends)."""
        self.chunk_step_async(actions)
        return self.chunk_step_wait()

    def chunk_step_async(self, actions: np.ndarray) -> None:
        """Send ``actions [N, H, A]`` to the workers and return while they simulate; :meth:`chunk_step_wait`
        collects the result (one step in flight at a time)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 3 or actions.shape[0] != self.num_envs:
            raise ValueError(f"actions must be [num_envs={self.num_envs}, H, A], got {list(actions.shape)}")
        if self._alive is not None:
            raise RuntimeError("chunk_step_async called with a step in flight; call chunk_step_wait first")
        alive = []
        for w in range(self.num_workers):
            try:
                self.conns[w].send(("step", actions[self.slices[w]]))
                alive.append(w)
            except (BrokenPipeError, OSError):
                pass
        self._alive = alive

    def chunk_step_wait(self) -> ChunkResult:
        """The result of the step :meth:`chunk_step_async` sent (a crashed worker is restarted, its envs reset
        and marked ``discarded``)."""
        if self._alive is None:
            raise RuntimeError("chunk_step_wait called with no step in flight")
        alive, self._alive = self._alive, None
        n = self.num_envs
        obs: list = [None] * n
        final: list = [None] * n
        reward = np.zeros(n, np.float32)
        done = np.zeros(n, bool)
        trunc = np.zeros(n, bool)
        succ = np.zeros(n, bool)
        discarded = np.zeros(n, bool)
        episodes: list[dict] = []
        steps = 0
        for w in range(self.num_workers):
            try:
                if w not in alive:
                    raise EOFError
                res, s = self._recv(w)
            except (EOFError, ConnectionResetError, BrokenPipeError, OSError):
                for i, o in zip(self.slices[w], self._restart(w)):
                    obs[i] = o
                    done[i] = discarded[i] = True
                continue
            steps += s
            for i, (o, r, d, tr, sc, fo, ep) in zip(self.slices[w], res):
                obs[i], reward[i], done[i], trunc[i], succ[i] = o, r, d, tr, sc
                final[i] = fo if fo is not None else o
                if ep is not None:
                    episodes.append(ep)
        for i in range(n):
            if final[i] is None:
                final[i] = obs[i]
        return ChunkResult(obs=self._with_obs(_stack_obs(obs)), reward=reward, done=done, truncated=trunc,
                           success=succ, final_obs=self._with_obs(_stack_obs(final)), discarded=discarded,
                           episodes=episodes, env_steps=steps)

    def crash_worker_for_test(self, w: int) -> None:
        """Make worker w die abruptly (tests the restart path)."""
        self.conns[w].send(("crash", None))
        self.procs[w].join(10)

    def close(self) -> None:
        """Stop all workers."""
        for w in range(self.num_workers):
            p, c = self.procs[w], self.conns[w]
            if p is None:
                continue
            try:
                if p.is_alive():
                    c.send(("close", None))
                    if c.poll(10):
                        c.recv()
            except Exception:
                pass
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
            self.procs[w] = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
