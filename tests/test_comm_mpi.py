"""The MPI paths: the ``hetero-mpi`` backend on its own and MPI as the bridge of a ``hetero`` group.

Both run under ``mpiexec`` (the ``mpich`` wheel; no root flags) and run the same collective suite as
test_comm_collectives.py against a plain gloo group of the same ranks. Skipped when mpi4py or mpiexec is missing.

    python -m pytest -q tests/test_comm_mpi.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_comm_harness import free_port  # noqa: I001

TESTS = Path(__file__).resolve().parent
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
pytestmark = pytest.mark.skipif(MPIEXEC is None or __import__("importlib").util.find_spec("mpi4py") is None,
                                reason="needs mpi4py and mpiexec (pip install mpi4py mpich)")

SCRIPT = r'''
import json, os, sys
from datetime import timedelta
sys.path.insert(0, sys.argv[1])
import torch, torch.distributed as dist
torch.set_num_threads(1)
import hetero.communicator as hc
from test_comm_collectives import _suite
mode = sys.argv[2]
rank, size = int(os.environ["PMI_RANK"]), int(os.environ["PMI_SIZE"])
if mode == "mpi":
    hc.init_process_group(backend="hetero-mpi", timeout=timedelta(seconds=30))
else:
    types = sys.argv[3].split(",")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size))
    hc.init_process_group(device_type=types[rank], timeout=timedelta(seconds=30))
bad = _suite(rank, size)
d = hc.describe()
dist.barrier()
dist.destroy_process_group()
# one file per rank: mpiexec merges the ranks' stdout, and lines from different ranks can interleave
with open(os.path.join(sys.argv[4], f"result_{rank}.json"), "w") as f:
    json.dump({"rank": rank, "bad": bad, "describe": d}, f)
'''


def _run(tmp_path, n: int, mode: str, types: str = "", env: dict | None = None) -> list[dict]:
    script = tmp_path / "mpi_worker.py"
    script.write_text(SCRIPT)
    e = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), **(env or {})}
    out = tmp_path / f"results_{mode}_{n}"
    out.mkdir()
    p = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, str(script), str(TESTS), mode, types, str(out)],
                       capture_output=True, text=True, timeout=240, env=e)
    rows = [json.loads(f.read_text()) for f in sorted(out.glob("result_*.json"))]
    assert p.returncode == 0 and len(rows) == n, f"rc={p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return rows


def test_hetero_mpi_backend_equals_gloo(tmp_path):
    rows = _run(tmp_path, 2, "mpi")
    for r in rows:
        assert not r["bad"], "\n".join(r["bad"][:20])
        assert r["describe"]["backend"] == "hetero-mpi"


def test_mpi_bridge_between_types_equals_gloo(tmp_path):
    rows = _run(tmp_path, 4, "hetero", "a100,a100,mi250,cpu-slow", {"HETERO_BRIDGE": "mpi"})
    for r in rows:
        assert not r["bad"], "\n".join(r["bad"][:20])
        bridge = [g for g in r["describe"]["groups"] if g["group"] == "bridge"]
        assert bridge and bridge[0]["library"] == "mpi" and bridge[0]["ranks"] == [0, 2, 3]
