"""DDP, FSDP2 and a 2-stage torch.distributed.pipelining schedule give the same gradients over ``hetero`` as
over plain gloo, with ranks of two device types (all on CPU).

One launch of 4 ranks declared [a100, mi250, a100, mi250]: DDP and FSDP2 over the whole world; two pipelines
of 2 stages each over hetero sub-groups {0, 1} and {2, 3} (each pipeline crosses device types).

    python -m pytest -q tests/test_comm_training.py
"""

from __future__ import annotations

import copy
from datetime import timedelta

import torch
import torch.distributed as dist
from test_comm_harness import launch  # noqa: I001
from torch import nn


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _batch(rank: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(n, 16, generator=g), torch.randn(n, 4, generator=g)


def _ddp_grads(rank: int, group) -> list[torch.Tensor]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    m = DDP(_model(), process_group=group, bucket_cap_mb=0.001)  # several buckets -> overlapped async ops
    x, y = _batch(rank)
    for _ in range(2):
        m.zero_grad()
        nn.functional.mse_loss(m(x), y).backward()
    return [p.grad.clone() for p in m.parameters()]


def _fsdp_grads(rank: int, group) -> list[torch.Tensor]:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    mesh = DeviceMesh.from_group(group, "cpu")
    m = _model()
    for layer in (m[0], m[2], m[4]):
        fully_shard(layer, mesh=mesh)
    fully_shard(m, mesh=mesh)
    x, y = _batch(rank)
    nn.functional.mse_loss(m(x), y).backward()
    return [p.grad.full_tensor().clone() for p in m.parameters()]


def _pipe_grads(rank: int, group, pair: list[int]) -> list[torch.Tensor]:
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    full = _model()
    stage_idx = pair.index(rank)
    sub = copy.deepcopy(full[:2] if stage_idx == 0 else full[2:])
    stage = PipelineStage(sub, stage_idx, 2, torch.device("cpu"), group=group)
    sched = ScheduleGPipe(stage, n_microbatches=2, loss_fn=nn.functional.mse_loss)
    x, y = _batch(pair[0])
    if stage_idx == 0:
        sched.step(x)
    else:
        sched.step(target=y)
    return [p.grad.clone() for p in sub.parameters()]


def _training(rank: int, world: int) -> dict:
    ref = dist.new_group(backend="gloo", timeout=timedelta(seconds=20))
    out = {"ddp": (_ddp_grads(rank, None), _ddp_grads(rank, ref))}
    out["fsdp2"] = (_fsdp_grads(rank, dist.group.WORLD), _fsdp_grads(rank, ref))
    pairs = [[0, 1], [2, 3]]
    hpairs = [dist.new_group(p, backend="hetero", timeout=timedelta(seconds=20)) for p in pairs]
    gpairs = [dist.new_group(p, backend="gloo", timeout=timedelta(seconds=20)) for p in pairs]
    mine = rank // 2
    out["pipeline"] = (_pipe_grads(rank, hpairs[mine], pairs[mine]), _pipe_grads(rank, gpairs[mine], pairs[mine]))
    import hetero.communicator as hc

    out["pair_describe"] = hc.describe(hpairs[mine])
    return out


def test_ddp_fsdp2_pipelining_match_gloo():
    outs = launch(_training, world=4, types=["a100", "mi250", "a100", "mi250"], timeout_s=180)
    for rank, o in enumerate(outs):
        for what in ("ddp", "fsdp2", "pipeline"):
            het, ref = o[what]
            assert len(het) == len(ref) > 0
            for i, (a, b) in enumerate(zip(het, ref)):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"rank {rank} {what} grad {i}")
        d = o["pair_describe"]
        assert d["backend"] == "hetero" and d["size"] == 2 and len(set(d["rank_types"])) == 2
    # the DDP gradients are averaged: equal on every rank
    for o in outs[1:]:
        for a, b in zip(o["ddp"][0], outs[0]["ddp"][0]):
            torch.testing.assert_close(a, b)
