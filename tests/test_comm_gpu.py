"""A real two-type cluster: one cuda rank and two CPU ranks in one ``hetero`` world (needs a CUDA GPU).

all_reduce, DDP (module on cuda on rank 0, on cpu elsewhere) and a 2-stage pipeline step (stage 0 on cuda,
stage 1 on cpu) are checked against the same computation over CPU-only gloo. Skipped without CUDA.

    python -m pytest -q -m gpu tests/test_comm_gpu.py
"""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from test_comm_harness import launch
from torch import nn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _batch(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)


def _mixed(rank: int, world: int) -> dict:
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe
    from torch.nn.parallel import DistributedDataParallel as DDP

    import hetero.communicator as hc

    dev = torch.device("cuda:0") if rank == 0 else torch.device("cpu")
    if rank == 0:
        torch.cuda.set_device(0)
    ref = dist.new_group(backend="gloo", timeout=timedelta(seconds=30))
    out: dict = {"describe": hc.describe()}
    x = (torch.arange(3 << 20, dtype=torch.float32) % 97 + rank).to(dev)  # 12 MB: several staging chunks
    a = x.clone()
    dist.all_reduce(a)
    b = x.cpu()
    dist.all_reduce(b, group=ref)
    out["all_reduce"] = (a.cpu(), b)
    grads = []
    for group, device in ((None, dev), (ref, torch.device("cpu"))):
        m = DDP(_model().to(device), process_group=group)
        xb, yb = _batch(rank)
        nn.functional.mse_loss(m(xb.to(device)), yb.to(device)).backward()
        grads.append([p.grad.cpu() for p in m.parameters()])
    out["ddp"] = grads
    pair = dist.new_group([0, 1], backend="hetero", timeout=timedelta(seconds=30))
    pref = dist.new_group([0, 1], backend="gloo", timeout=timedelta(seconds=30))
    if rank < 2:
        pg = []
        for group, device in ((pair, dev), (pref, torch.device("cpu"))):
            full = _model()
            sub = copy.deepcopy(full[:2] if rank == 0 else full[2:]).to(device)
            stage = PipelineStage(sub, rank, 2, device, group=group)
            sched = ScheduleGPipe(stage, n_microbatches=2, loss_fn=nn.functional.mse_loss)
            xb, yb = _batch(0)
            sched.step(xb.to(device)) if rank == 0 else sched.step(target=yb.to(device))
            pg.append([p.grad.cpu() for p in sub.parameters()])
        out["pipeline"] = pg
    return out


def test_cuda_and_cpu_ranks_in_one_world():
    outs = launch(_mixed, world=3, types=["gpu", "cpu", "cpu"], devices=["cuda:0", "cpu", "cpu"], timeout_s=240)
    libs = {g["group"]: g["library"] for g in outs[0]["describe"]["groups"]}
    assert libs["type:cpu"] == "gloo" and libs["bridge"] == "gloo", libs
    for rank, o in enumerate(outs):
        torch.testing.assert_close(*o["all_reduce"])
        for a, b in zip(*o["ddp"]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"rank {rank} ddp")
        if "pipeline" in o:
            for a, b in zip(*o["pipeline"]):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"rank {rank} pipeline")
