"""Collectives across device types: native inside each type, one host-staged exchange between type leaders.

Every function here is blocking and runs on the ``hetero`` group's worker thread in issue order. For a group
whose ranks are of k types (type j has n_j ranks, leader = lowest rank):

* all_reduce:      reduce to the leader inside each type (native) -> all_reduce among the k leaders over the
                   bridge (host-staged, chunked so device->host copies overlap the exchange) -> broadcast inside.
                   Host tensors are pipelined in ``pipeline_bytes`` chunks: the bridge works on chunk i while
                   the in-type steps work on chunks i-1 and i+1.
* broadcast:       inside the source's type from the source -> leaders over the bridge -> inside other types.
* reduce:          reduce inside each type -> reduce among leaders to the destination's leader -> p2p to dst.
* all_gather:      all_gather inside each type (padded to the largest rank) -> leaders all_gather the type blocks
                   (padded to the largest block) -> each leader broadcasts the other types' blocks inside its type.
                   Uneven sizes are exact: the output list tells every rank every size.
* reduce_scatter:  the hierarchical all_reduce of the concatenated inputs, then each rank keeps its slice.
* gather, scatter, all_to_all, barrier: the flat host (gloo) group, device tensors staged through host memory;
                   these move per-pair data, where a hierarchy saves no cross-type bytes.

AVG is SUM followed by division by the group size (integer tensors: floor division), because gloo has no AVG.
With ``HETERO_HIERARCHICAL=0`` every cross-type collective runs flat on the host gloo group instead (faster on
one machine, where no link between types is slower than the others).

    from hetero.communicator.hierarchical import Groups, all_reduce
    all_reduce(groups, t, dist.ReduceOp.SUM)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import AllgatherOptions, AllreduceOptions, BroadcastOptions, ReduceOptions

from hetero.communicator.errors import CommError
from hetero.communicator.groups import SubGroup, as_bytes, staged, to_host
from hetero.communicator.topology import CommConfig, Topology

SUPPORTED_OPS = ("SUM", "AVG", "PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR")


@dataclass(kw_only=True)
class Groups:
    """The sub-groups one rank takes part in."""

    topo: Topology
    """Who is which type."""
    cfg: CommConfig
    """Chunk size, timeouts."""
    intra: SubGroup | None
    """Native library over this rank's type (None when the type has one rank)."""
    intra_host: SubGroup | None
    """gloo over this rank's type for host tensors when ``intra`` is not gloo (else the same as ``intra``)."""
    bridge: SubGroup | None
    """Leaders of all types, in type order (None on non-leaders and when there is one type)."""
    world: SubGroup
    """gloo over all ranks: flat host ops, size checks, cross-type point-to-point."""

    def inner(self, t: torch.Tensor) -> SubGroup | None:
        """The in-type group for tensor ``t``: native for device tensors, host gloo for host tensors."""
        if self.intra is None:
            return None
        if t.device.type == "cpu" and self.intra.library not in ("gloo", "mpi"):
            return self.intra_host
        return self.intra

    @property
    def is_leader(self) -> bool:
        """True on the lowest rank of each type."""
        return self.topo.rank == self.topo.mine.leader


def split_avg(op: dist.ReduceOp, *, group: str, name: str) -> tuple[dist.ReduceOp, bool]:
    """(op the libraries run, whether to divide by the group size afterwards); unsupported ops raise."""
    if op == dist.ReduceOp.AVG:
        return dist.ReduceOp.SUM, True
    for n in SUPPORTED_OPS:
        if op == getattr(dist.ReduceOp, n):
            return op, False
    raise CommError(op=name, group=group, ranks=[], message=f"reduce op {op} is not supported "
                    f"(supported: {', '.join(SUPPORTED_OPS)})")


def divide(t: torch.Tensor, n: int) -> None:
    """``t /= n`` in place (floor division for integer tensors)."""
    if t.is_floating_point() or t.is_complex():
        t.div_(n)
    else:
        t.div_(n, rounding_mode="floor")


def _bridge_wait(g: Groups, op: str):
    return lambda w: g.bridge.wait(op, w)


def _host_view(t: torch.Tensor) -> torch.Tensor:
    """Flat contiguous host tensor with ``t``'s data (``t`` itself viewed when possible)."""
    if t.device.type == "cpu" and t.is_contiguous():
        return t.view(-1)
    return t.detach().reshape(-1).to("cpu").contiguous()


def _flat_all_reduce(g: Groups, t: torch.Tensor, red: dist.ReduceOp) -> None:
    h = _host_view(t)
    g.world.all_reduce(h, red)
    if h.data_ptr() != t.data_ptr():
        t.copy_(h.view(t.shape))


def all_reduce(g: Groups, t: torch.Tensor, op: dist.ReduceOp) -> None:
    """In-place all-reduce of ``t`` (any shape) over all ranks of all types."""
    red, avg = split_avg(op, group=g.world.name, name="all_reduce")
    if not g.cfg.hierarchical:
        _flat_all_reduce(g, t, red)
        if avg:
            divide(t, g.topo.size)
        return
    x = t if t.is_contiguous() else t.contiguous()
    flat = x.view(-1)
    inner = g.inner(flat)
    if flat.device.type == "cpu":
        _pipelined_all_reduce(g, inner, flat, red)
    else:
        if inner is not None:
            inner.reduce(flat, red, root=0)
        if g.bridge is not None:
            o = AllreduceOptions()
            o.reduceOp = red
            staged(flat, lambda c: g.bridge.backend.allreduce([c], o), chunk_bytes=g.cfg.chunk_bytes,
                   wait=_bridge_wait(g, "all_reduce"))
        if inner is not None:
            inner.broadcast(flat, root=0)
    if avg:
        divide(flat, g.topo.size)
    if x is not t:
        t.copy_(x)


def _pipelined_all_reduce(g: Groups, inner: SubGroup | None, flat: torch.Tensor, red: dist.ReduceOp) -> None:
    """Host tensor [n]: chunk c goes reduce-in-type -> bridge all_reduce -> broadcast-in-type, with the
    chunks in flight at once, so the slow bridge link stays busy while the in-type steps run. Every rank posts
    its in-type ops in the same order (all reduces, then all broadcasts)."""
    step = max(1, g.cfg.pipeline_bytes // flat.element_size())
    chunks = [flat[s:s + step] for s in range(0, flat.numel(), step)]
    if inner is None:  # the only rank of its type: just the bridge
        if g.bridge is not None:
            works = [g.bridge.post_all_reduce(c, red) for c in chunks]
            for w in works:
                g.bridge.wait("all_reduce", w)
        return
    if g.bridge is None:  # not a leader: send partial sums up, receive the results
        reds = [inner.post_reduce(c, red, 0) for c in chunks]
        bcs = [inner.post_broadcast(c, 0) for c in chunks]
        for w in reds:
            inner.wait("all_reduce", w, [inner.ranks[0]])
        for w in bcs:
            inner.wait("all_reduce", w, [inner.ranks[0]])
        return
    reds = [inner.post_reduce(c, red, 0) for c in chunks]
    bridges, bcs = [], []
    for i, c in enumerate(chunks):
        inner.wait("all_reduce", reds[i])
        bridges.append(g.bridge.post_all_reduce(c, red))
        if i > 0:
            g.bridge.wait("all_reduce", bridges[i - 1])
            bcs.append(inner.post_broadcast(chunks[i - 1], 0))
    g.bridge.wait("all_reduce", bridges[-1])
    bcs.append(inner.post_broadcast(chunks[-1], 0))
    for w in bcs:
        inner.wait("all_reduce", w)


def broadcast(g: Groups, t: torch.Tensor, src: int) -> None:
    """Broadcast ``t`` from group rank ``src`` to all ranks."""
    topo = g.topo
    if not g.cfg.hierarchical:
        h = _host_view(t)
        g.world.broadcast(h, root=src)
        if h.data_ptr() != t.data_ptr():
            t.copy_(h.view(t.shape))
        return
    ti, mi = topo.type_index(src), topo.type_index(topo.rank)
    src_leader = topo.types[ti].leader
    x = t if t.is_contiguous() else t.contiguous()
    flat = x.view(-1)
    inner = g.inner(flat)
    if mi == ti and inner is not None and src != src_leader:
        inner.broadcast(flat, root=inner.local(src))
    if g.bridge is not None:
        o = BroadcastOptions()
        o.rootRank, o.rootTensor = ti, 0
        staged(flat, lambda c: g.bridge.backend.broadcast([c], o), chunk_bytes=g.cfg.chunk_bytes,
               wait=_bridge_wait(g, "broadcast"), writes=topo.rank != src_leader)
    if inner is not None and (mi != ti or src == src_leader):
        inner.broadcast(flat, root=0)
    if x is not t:
        t.copy_(x)


def reduce(g: Groups, t: torch.Tensor, op: dist.ReduceOp, dst: int) -> None:
    """Reduce ``t`` from all ranks into group rank ``dst``; other ranks' ``t`` is left unchanged."""
    red, avg = split_avg(op, group=g.world.name, name="reduce")
    topo = g.topo
    if not g.cfg.hierarchical:
        buf = t.detach().reshape(-1).to("cpu", copy=True)
        g.world.reduce(buf, red, root=dst)
        if topo.rank == dst:
            if avg:
                divide(buf, topo.size)
            t.copy_(buf.view(t.shape))
        return
    ti, mi = topo.type_index(dst), topo.type_index(topo.rank)
    dst_leader = topo.types[ti].leader
    buf = t.reshape(-1).clone()
    inner = g.inner(buf)
    if inner is not None:
        inner.reduce(buf, red, root=0)
    if g.bridge is not None:
        o = ReduceOptions()
        o.reduceOp, o.rootRank, o.rootTensor = red, ti, 0
        staged(buf, lambda c: g.bridge.backend.reduce([c], o), chunk_bytes=g.cfg.chunk_bytes,
               wait=_bridge_wait(g, "reduce"), writes=topo.rank == dst_leader)
    if mi == ti and dst != dst_leader and inner is not None:
        if topo.rank == dst_leader:
            inner.wait("reduce", inner.send(buf, inner.local(dst), 0), [dst])
        elif topo.rank == dst:
            inner.wait("reduce", inner.recv(buf, 0, 0), [dst_leader])
    if topo.rank == dst:
        if avg:
            divide(buf, topo.size)
        t.copy_(buf.view(t.shape))


def _pad(b: torch.Tensor, n: int) -> torch.Tensor:
    """``b`` (uint8 [m]) zero-padded to [n] (``b`` itself when m == n)."""
    if b.numel() == n:
        return b
    out = torch.zeros(n, dtype=torch.uint8, device=b.device)
    out[: b.numel()] = b
    return out


def all_gather(g: Groups, outs: list[torch.Tensor], inp: torch.Tensor) -> None:
    """Gather ``inp`` of every rank into ``outs[rank]``; sizes may differ per rank (``outs`` says which)."""
    topo, me = g.topo, g.topo.mine
    sizes = [o.numel() * o.element_size() for o in outs]
    if not g.cfg.hierarchical:
        m = max(sizes)
        parts = [torch.empty(m, dtype=torch.uint8) for _ in outs]
        g.world.all_gather(parts, _pad(as_bytes(to_host(inp.contiguous())), m))
        for o, p, n in zip(outs, parts, sizes):
            _write_bytes(o, p[:n].to(o.device))
        return
    inb = as_bytes(inp.contiguous())
    dev = inp.device
    pieces: dict[int, torch.Tensor] = {}
    inner = g.inner(inp)
    if inner is not None:
        tb = [sizes[r] for r in me.ranks]
        m = max(tb)
        parts = [torch.empty(m, dtype=torch.uint8, device=dev) for _ in me.ranks]
        inner.all_gather(parts, _pad(inb, m))
        for i, r in enumerate(me.ranks):
            pieces[r] = parts[i][: tb[i]]
    else:
        pieces[topo.rank] = inb
    blocks = [sum(sizes[r] for r in tg.ranks) for tg in topo.types]
    mi = topo.type_index(topo.rank)
    foreign_n = sum(b for j, b in enumerate(blocks) if j != mi)
    foreign = None
    if g.bridge is not None:
        mine_block = to_host(torch.cat([pieces[r] for r in me.ranks]))
        mb = max(blocks)
        outs_b = [torch.empty(mb, dtype=torch.uint8) for _ in topo.types]
        o = AllgatherOptions()
        g.bridge.call("all_gather", lambda: g.bridge.backend.allgather([outs_b], [_pad(mine_block, mb)], o))
        foreign = torch.cat([outs_b[j][: blocks[j]] for j in range(len(blocks)) if j != mi]).to(dev)
    if inner is not None and foreign_n > 0:
        if foreign is None:
            foreign = torch.empty(foreign_n, dtype=torch.uint8, device=dev)
        inner.broadcast(foreign, root=0)
    off = 0
    for j, tg in enumerate(topo.types):
        if j == mi:
            continue
        for r in tg.ranks:
            pieces[r] = foreign[off: off + sizes[r]]
            off += sizes[r]
    for r, o in enumerate(outs):
        _write_bytes(o, pieces[r])


def _write_bytes(o: torch.Tensor, b: torch.Tensor) -> None:
    """Copy uint8 ``b`` into the bytes of ``o``."""
    if o.is_contiguous():
        as_bytes(o).copy_(b)
    else:
        tmp = torch.empty(o.shape, dtype=o.dtype, device=o.device)
        as_bytes(tmp).copy_(b)
        o.copy_(tmp)


def reduce_scatter(g: Groups, out: torch.Tensor, ins: list[torch.Tensor], op: dist.ReduceOp) -> None:
    """Reduce the list ``ins`` (entry r goes to rank r) over all ranks; ``out`` gets entry ``rank``."""
    flat = torch.cat([i.reshape(-1) for i in ins])
    all_reduce(g, flat, op)
    start = sum(i.numel() for i in ins[: g.topo.rank])
    out.copy_(flat[start: start + out.numel()].view(out.shape))


# -- flat host ops ----------------------------------------------------------------------------------------
def gather(g: Groups, outs: list[torch.Tensor] | None, inp: torch.Tensor, dst: int) -> None:
    """Gather equal-size ``inp`` into ``outs`` on ``dst`` over the host group."""
    hin = to_host(inp.contiguous())
    houts = [to_host(o) if o.device.type == "cpu" else torch.empty_like(o, device="cpu") for o in outs] \
        if outs is not None else None
    g.world.gather(houts, hin, root=dst)
    if outs is not None:
        for o, h in zip(outs, houts):
            if o is not h:
                o.copy_(h)


def scatter(g: Groups, out: torch.Tensor, ins: list[torch.Tensor] | None, src: int) -> None:
    """Scatter equal-size ``ins`` from ``src`` into ``out`` over the host group."""
    hins = [to_host(i.contiguous()) for i in ins] if ins is not None else None
    hout = out if out.device.type == "cpu" and out.is_contiguous() else torch.empty(out.shape, dtype=out.dtype)
    g.world.scatter(hout, hins, root=src)
    if hout is not out:
        out.copy_(hout)


def all_to_all_single(g: Groups, out: torch.Tensor, inp: torch.Tensor, out_splits: list[int],
                      in_splits: list[int]) -> None:
    """All-to-all of dim-0 slices over the host group (uneven splits allowed)."""
    hin = to_host(inp.contiguous())
    hout = out if out.device.type == "cpu" and out.is_contiguous() else torch.empty(out.shape, dtype=out.dtype)
    g.world.all_to_all_single(hout, hin, list(out_splits), list(in_splits))
    if hout is not out:
        out.copy_(hout)


def all_to_all(g: Groups, outs: list[torch.Tensor], ins: list[torch.Tensor]) -> None:
    """All-to-all of tensor lists (entry r to/from rank r; any sizes) as one byte all-to-all on the host group."""
    hin = torch.cat([as_bytes(to_host(i.contiguous())) for i in ins])
    out_splits = [o.numel() * o.element_size() for o in outs]
    hout = torch.empty(sum(out_splits), dtype=torch.uint8)
    g.world.all_to_all_single(hout, hin, out_splits, [i.numel() * i.element_size() for i in ins])
    off = 0
    for o, n in zip(outs, out_splits):
        _write_bytes(o, hout[off: off + n].to(o.device))
        off += n
