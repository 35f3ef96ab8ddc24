"""Multi-process helpers for tests and benchmarks: run a function on N local CPU ranks with a bounded time.

Each rank is a fresh ``spawn`` process with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT on a free port), one torch thread, and ``extra_env``; the function's return value comes back through a
queue. A rank that raises reports its traceback; a launch that exceeds ``timeout_s`` is killed (no hangs).

    from hetero.runtime.testing import spawn
    results = spawn(fn, 2, args=(...,), timeout_s=60)   # [fn(0, *args), fn(1, *args)]
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(procs: Sequence[subprocess.Popen], *, timeout_s: float, what: str) -> None:
    """Wait for rank processes started with ``subprocess.Popen``; raise RuntimeError naming ``what`` when one exits
    with a non-zero status or they outlast ``timeout_s``. Any still running on the way out are killed."""
    deadline = time.monotonic() + timeout_s
    try:
        for p in procs:
            rc = p.wait(timeout=max(deadline - time.monotonic(), 1.0))
            if rc != 0:
                raise RuntimeError(f"{what}: a rank exited with status {rc}")
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what}: did not finish within {timeout_s:.0f} s") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _entry(fn, rank, world, port, args, env, q):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "OMP_NUM_THREADS": "1"})
    for k, v in (env or {}).get(rank, {}).items():
        os.environ[k] = str(v)
    import torch

    torch.set_num_threads(1)
    try:
        q.put((rank, True, fn(rank, *args)))
    except BaseException as e:  # report every failure to the parent, including SystemExit
        q.put((rank, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class WorkerError(RuntimeError):
    """A spawned rank failed or the launch timed out."""


def spawn(fn: Callable[..., Any], world_size: int, *, args: tuple = (), timeout_s: float = 60.0,
          env: dict[int, dict[str, Any]] | None = None, ranks: list[int] | None = None) -> list[Any]:
    """Run ``fn(rank, *args)`` on ``world_size`` ranks (or only ``ranks`` of them, to test a missing peer);
    ``env[rank]`` adds environment variables. Returns results in rank order; raises WorkerError naming the
    failing rank with its traceback, or on timeout (all processes are killed)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    ranks = list(range(world_size)) if ranks is None else ranks
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, args, env, q), daemon=True) for r in ranks]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    errors: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) + len(errors) < len(ranks):
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"timed out after {timeout_s:g} s; ranks {sorted(set(ranks) - set(out) - set(errors))} "
                                  f"did not finish" + (f"; failures: {errors}" if errors else ""))
            try:
                r, ok, val = q.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [r for r, p in zip(ranks, procs) if p.exitcode not in (None, 0) and r not in out and r not in errors]
                for r in dead:
                    errors[r] = f"process exited with code {procs[ranks.index(r)].exitcode}"
                if dead:
                    deadline = min(deadline, time.monotonic() + 5.0)
                continue
            (out if ok else errors)[r] = val
            if errors:  # peers of a failed rank may block in a collective: give them a short grace only
                deadline = min(deadline, time.monotonic() + 5.0)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    if errors:
        r = min(errors)
        raise WorkerError(f"rank {r} failed: {errors[r]}")
    return [out[r] for r in ranks]
