"""Every collective of the ``hetero`` backend equals plain gloo, for fp32 / bf16 / int64, even and uneven sizes.

Ranks declare two or three device types (all run on CPU; the types decide the grouping, so the hierarchical
paths run). Each worker computes every op twice, over ``hetero`` (the default group) and over a plain gloo group
of the same ranks, and reports mismatches; ops gloo lacks (uneven all_gather, AVG) are checked against values
computed from the known inputs.

    python -m pytest -q tests/test_comm_collectives.py
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from test_comm_harness import launch  # noqa: I001 - tests/ is on sys.path under pytest

AG_SINGLE = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
RS_SINGLE = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
DTYPES = [torch.float32, torch.bfloat16, torch.int64]


def _data(rank: int, n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Integer-valued data (exact in bf16 sums of <= 4 ranks), shape [n]."""
    g = torch.Generator().manual_seed(seed * 131 + rank)
    return torch.randint(-16, 17, (n,), generator=g).to(dtype)


def _suite(rank: int, world: int) -> list[str]:
    import hetero.communicator as hc

    ref = dist.new_group(backend="gloo", timeout=timedelta(seconds=20))
    bad: list[str] = []

    def same(name, got, want):
        if isinstance(got, (list, tuple)):
            for i, (a, b) in enumerate(zip(got, want)):
                same(f"{name}[{i}]", a, b)
            return
        if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
            bad.append(f"rank {rank} {name}: got {got.flatten()[:6].tolist()} want {want.flatten()[:6].tolist()}")

    desc = hc.describe()
    if desc["backend"] not in ("hetero", "hetero-mpi") or not desc["groups"]:
        bad.append(f"describe() is wrong: {desc}")
    seed = 0
    for dt in DTYPES:
        for n in (1, 1000, 1 << 16):
            seed += 1
            x = _data(rank, n, dt, seed)
            for opn in ("SUM", "MAX", "MIN"):
                op = getattr(dist.ReduceOp, opn)
                a, b = x.clone(), x.clone()
                dist.all_reduce(a, op=op)
                dist.all_reduce(b, op=op, group=ref)
                same(f"all_reduce {opn} {dt} n={n}", a, b)
            a, b = x.clone(), x.clone()
            dist.all_reduce(a, op=dist.ReduceOp.AVG)
            dist.all_reduce(b, group=ref)
            b = b / world if dt.is_floating_point else torch.div(b, world, rounding_mode="floor")
            same(f"all_reduce AVG {dt} n={n}", a, b.to(dt))
            # async all_reduce through a future, as DDP uses it
            a = x.clone()
            fut = dist.all_reduce(a, async_op=True).get_future()
            b = x.clone()
            dist.all_reduce(b, group=ref)
            same(f"all_reduce async future {dt} n={n}", fut.wait()[0], b)
            for src in range(world):
                a = x.clone()
                b = x.clone()
                dist.broadcast(a, src=src)
                dist.broadcast(b, src=src, group=ref)
                same(f"broadcast src={src} {dt} n={n}", a, b)
            for dst in range(world):
                a, b = x.clone(), x.clone()
                dist.reduce(a, dst=dst)
                dist.reduce(b, dst=dst, group=ref)
                # only dst has a defined result: gloo leaves partial sums elsewhere, hetero across types leaves
                # the input unchanged, hetero on one type passes straight to gloo
                if rank == dst or not torch.equal(a, x):
                    same(f"reduce dst={dst} {dt} n={n}", a, b)
            # even all_gather against gloo; uneven against the known inputs
            outs = [torch.empty_like(x) for _ in range(world)]
            refs = [torch.empty_like(x) for _ in range(world)]
            dist.all_gather(outs, x)
            dist.all_gather(refs, x, group=ref)
            same(f"all_gather even {dt} n={n}", outs, refs)
            sizes = [n + 3 * r for r in range(world)]
            mine = _data(rank, sizes[rank], dt, seed + 1000)
            outs = [torch.empty(s, dtype=dt) for s in sizes]
            dist.all_gather(outs, mine)
            same(f"all_gather uneven {dt} n={n}", outs, [_data(r, sizes[r], dt, seed + 1000) for r in range(world)])
            big = torch.empty(world * n, dtype=dt)
            bigr = torch.empty(world * n, dtype=dt)
            AG_SINGLE(big, x)
            AG_SINGLE(bigr, x, group=ref)
            same(f"all_gather_into_tensor {dt} n={n}", big, bigr)
            # reduce_scatter: list form with uneven entries, tensor form even
            ins = [_data(rank, n + r, dt, seed + 2000 + r) for r in range(world)]
            out = torch.empty(n + rank, dtype=dt)
            dist.reduce_scatter(out, [i.clone() for i in ins])
            want = sum(_data(q, n + rank, dt, seed + 2000 + rank).to(torch.float64) for q in range(world)).to(dt)
            same(f"reduce_scatter uneven {dt} n={n}", out, want)
            flat = _data(rank, world * n, dt, seed + 3000)
            o1, o2 = torch.empty(n, dtype=dt), torch.empty(n, dtype=dt)
            RS_SINGLE(o1, flat.clone())
            RS_SINGLE(o2, flat.clone(), group=ref)
            same(f"reduce_scatter_tensor {dt} n={n}", o1, o2)
            # gather / scatter from the last rank (another type than rank 0)
            root = world - 1
            g1 = [torch.empty_like(x) for _ in range(world)] if rank == root else None
            g2 = [torch.empty_like(x) for _ in range(world)] if rank == root else None
            dist.gather(x, g1, dst=root)
            dist.gather(x, g2, dst=root, group=ref)
            if rank == root:
                same(f"gather {dt} n={n}", g1, g2)
            sl = [_data(r, n, dt, seed + 4000) for r in range(world)] if rank == root else None
            s1, s2 = torch.empty_like(x), torch.empty_like(x)
            dist.scatter(s1, sl, src=root)
            dist.scatter(s2, [t.clone() for t in sl] if sl else None, src=root, group=ref)
            same(f"scatter {dt} n={n}", s1, s2)
            # all_to_all_single with uneven splits: rank r sends (q + r + 1) rows to rank q
            in_splits = [q + rank + 1 for q in range(world)]
            out_splits = [rank + q + 1 for q in range(world)]
            inp = _data(rank, sum(in_splits) * 2, dt, seed + 5000).view(-1, 2)
            o1 = torch.empty(sum(out_splits), 2, dtype=dt)
            o2 = torch.empty(sum(out_splits), 2, dtype=dt)
            dist.all_to_all_single(o1, inp, out_splits, in_splits)
            dist.all_to_all_single(o2, inp, out_splits, in_splits, group=ref)
            same(f"all_to_all_single uneven {dt} n={n}", o1, o2)
            ins = [_data(rank, q + 1, dt, seed + 6000 + q) for q in range(world)]
            outs = [torch.empty(rank + 1, dtype=dt) for _ in range(world)]
            dist.all_to_all(outs, ins)
            same(f"all_to_all list uneven {dt} n={n}", outs,
                 [_data(q, rank + 1, dt, seed + 6000 + rank) for q in range(world)])
            # point to point: ring with send/recv, isend/irecv and batch_isend_irecv
            nxt, prv = (rank + 1) % world, (rank - 1) % world
            got = torch.empty_like(x)
            if rank % 2 == 0:
                dist.send(x, nxt)
                dist.recv(got, prv)
            else:
                dist.recv(got, prv)
                dist.send(x, nxt)
            same(f"send/recv {dt} n={n}", got, _data(prv, n, dt, seed))
            got = torch.empty_like(x)
            reqs = [dist.irecv(got, prv, tag=7), dist.isend(x, nxt, tag=7)]
            for q in reqs:
                q.wait()
            same(f"isend/irecv {dt} n={n}", got, _data(prv, n, dt, seed))
            got = torch.empty_like(x)
            ops = [dist.P2POp(dist.irecv, got, prv), dist.P2POp(dist.isend, x, nxt)]
            for q in dist.batch_isend_irecv(ops):
                q.wait()
            same(f"batch_isend_irecv {dt} n={n}", got, _data(prv, n, dt, seed))
            dist.barrier()
    # an all_reduce of a non-contiguous view
    m = _data(rank, 64, torch.float32, 99).view(8, 8)
    a, b = m.t().clone(), m.t().contiguous()
    v = m.clone().t()
    dist.all_reduce(v)
    dist.all_reduce(b, group=ref)
    same("all_reduce non-contiguous", v.contiguous(), b)
    del a
    return bad


CONFIGS = {
    "w2-two-types": ["a100", "cpu-slow"],
    "w4-three-types": ["a100", "a100", "mi250", "cpu-slow"],
    "w4-two-types-interleaved": ["h100", "l4", "h100", "l4"],
    "w2-one-type": ["cpu", "cpu"],
    "w3-two-types-flat": ["a100", "cpu-slow", "a100"],
}


# small pipeline chunks in one config, so the pipelined hierarchical all_reduce runs with many chunks in flight
# and one world with HETERO_HIERARCHICAL=0 (cross-type collectives flat on the host group)
ENVS = {"w4-two-types-interleaved": {"HETERO_PIPELINE_BYTES": "8192"},
        "w3-two-types-flat": {"HETERO_HIERARCHICAL": "0"}}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_collectives_equal_gloo(name):
    types = CONFIGS[name]
    outs = launch(_suite, world=len(types), types=types, timeout_s=150, env=ENVS.get(name))
    bad = [b for o in outs for b in o]
    assert not bad, "\n".join(bad[:30])
