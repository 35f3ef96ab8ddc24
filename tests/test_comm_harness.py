"""Launcher for the communicator's multi-process tests (and a test that it reports failures).

``launch(fn, world=4, types=[...])`` starts ``world`` spawned processes, each initialising the ``hetero`` group
with its declared device type (all on CPU: the types decide the grouping), runs ``fn(rank, world)`` and returns
every rank's result. Each launch is bounded by a timeout; stuck ranks are killed.

    python -m pytest -q tests/test_comm_harness.py
"""

from __future__ import annotations

import os
import pickle
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from hetero.runtime.testing import free_port

OP_TIMEOUT_S = 20.0


def _worker(rank: int, world: int, port: int, types: list[str], fn, outdir: str, backend: str,
            env: dict[str, str], op_timeout_s: float, devices: list[str]) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "LOCAL_RANK": str(rank), "HETERO_DEVICE": devices[rank], **env})
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    out = Path(outdir) / f"{rank}.pkl"
    try:
        import hetero.communicator as hc

        if backend == "hetero":
            hc.init_process_group(device_type=types[rank], timeout=timedelta(seconds=op_timeout_s))
        else:
            dist.init_process_group(backend, timeout=timedelta(seconds=op_timeout_s))
        result = fn(rank, world)
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        out.write_bytes(pickle.dumps(("ok", result)))
    except BaseException:
        out.write_bytes(pickle.dumps(("error", traceback.format_exc())))
        os._exit(3)


def launch(fn, *, world: int, types: list[str] | None = None, timeout_s: float = 90.0, backend: str = "hetero",
           env: dict[str, str] | None = None, expect_fail: bool = False,
           op_timeout_s: float = OP_TIMEOUT_S, devices: list[str] | None = None) -> list:
    """Run ``fn(rank, world)`` on ``world`` processes; return the per-rank results (or, with ``expect_fail``,
    the per-rank ``(status, result_or_traceback)`` pairs, None for a rank that wrote nothing). ``devices``
    gives each rank's HETERO_DEVICE (default cpu)."""
    types = types or ["cpu"] * world
    devices = devices or ["cpu"] * world
    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        procs = [ctx.Process(target=_worker, args=(r, world, port, types, fn, d, backend, env or {},
                                                         op_timeout_s, devices))
                 for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout_s)
        stuck = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        outs = []
        for r in range(world):
            f = Path(d) / f"{r}.pkl"
            outs.append(pickle.loads(f.read_bytes()) if f.exists() else None)
    if expect_fail:
        return outs
    assert not stuck, f"ranks {stuck} did not finish within {timeout_s}s"
    errors = [f"rank {r}:\n{o[1]}" for r, o in enumerate(outs) if o is None or o[0] != "ok"]
    assert not errors, "\n".join(errors)
    return [o[1] for o in outs]


# -- self-test of the harness -----------------------------------------------------------------------------
def _fails_on_rank1(rank: int, world: int):
    if rank == 1:
        raise ValueError("deliberate failure on rank 1")
    return rank


def test_harness_reports_a_failing_rank():
    outs = launch(_fails_on_rank1, world=2, types=["a", "b"], backend="gloo", expect_fail=True, timeout_s=60)
    assert outs[1][0] == "error" and "deliberate failure on rank 1" in outs[1][1]
    with pytest.raises(AssertionError, match="deliberate failure"):
        launch(_fails_on_rank1, world=2, backend="gloo", timeout_s=60)
