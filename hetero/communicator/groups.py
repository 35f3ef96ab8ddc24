"""Sub-groups of a ``hetero`` group (one per device type, the bridge between leaders, the flat host group) and
host staging of device tensors.

A :class:`SubGroup` wraps one native c10d backend object (ProcessGroupGloo, ProcessGroupNCCL, ..., or the MPI
process group of :mod:`hetero.communicator.mpi`) built directly on a prefix of the parent group's store, so no
extra ``dist.new_group`` call is needed. Its methods take plain tensors and group-local ranks, block until done
and turn any library error (timeout, dead peer) into :class:`CommError` naming the op, the group and its ranks.

    sub = SubGroup.create(library="gloo", store=store, name="type:cpu", ranks=(0, 2), my_rank=2, timeout=td)
    sub.all_reduce(t, dist.ReduceOp.SUM)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import (
    AllgatherOptions,
    AllreduceOptions,
    AllToAllOptions,
    BarrierOptions,
    BroadcastOptions,
    GatherOptions,
    PrefixStore,
    ReduceOptions,
    ScatterOptions,
)

from hetero.communicator.errors import CommError


def make_native_backend(library: str, store: dist.Store, rank: int, size: int, timeout: timedelta):
    """A c10d backend object of ``library`` (gloo, nccl, xccl, hccl) for ``size`` ranks over ``store``."""
    if library == "gloo":
        return dist.ProcessGroupGloo(store, rank, size, timeout)
    if library == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, size, opts)
    if library == "xccl":
        opts = dist.ProcessGroupXCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupXCCL(store, rank, size, opts)
    plugin = dist.Backend._plugins.get(library.upper())
    if plugin is None:
        raise ValueError(f"no torch.distributed library {library!r} in this process")
    if plugin.extended_api:
        opts = dist.distributed_c10d._DistributedBackendOptions()
        opts.store, opts.group_rank, opts.group_size, opts.timeout = store, rank, size, timeout
        return plugin.creator_fn(opts, None)
    return plugin.creator_fn(store, rank, size, timeout)


@dataclass(kw_only=True)
class SubGroup:
    """One library-backed group over some ranks of the parent group."""

    name: str
    """Name used in errors and in ``describe()``: ``type:<id>``, ``type:<id>/host``, ``bridge``, ``host``."""
    library: str
    """Library that carries it (gloo, nccl, xccl, hccl, mpi)."""
    ranks: tuple[int, ...]
    """Parent-group ranks of the members, in sub-group rank order."""
    rank: int
    """This process's rank inside the sub-group."""
    backend: object
    """The backend object (c10d Backend or a ProcessGroup) that runs the ops."""

    @classmethod
    def create(cls, *, library: str, store: dist.Store, name: str, ranks: Sequence[int], my_rank: int,
               timeout: timedelta, backend: object | None = None) -> SubGroup:
        """Build the sub-group over ``store`` (prefixed by ``name``); ``my_rank`` is a parent-group rank."""
        ranks = tuple(ranks)
        local = ranks.index(my_rank)
        if backend is None:
            try:
                backend = make_native_backend(library, PrefixStore(f"hetero/{name}/", store), local,
                                              len(ranks), timeout)
            except Exception as e:
                raise CommError(op="init", group=name, ranks=ranks, message=f"{library}: {e}") from None
        return cls(name=name, library=library, ranks=ranks, rank=local, backend=backend)

    @property
    def size(self) -> int:
        """Number of members."""
        return len(self.ranks)

    def local(self, parent_rank: int) -> int:
        """Sub-group rank of parent-group rank ``parent_rank``."""
        return self.ranks.index(parent_rank)

    def wait(self, op: str, work, peers: Sequence[int] | None = None):
        """Wait for ``work``; a library error becomes CommError naming ``op``, this group and ``peers``."""
        try:
            if work is not None:
                work.wait()
        except CommError:
            raise
        except Exception as e:
            raise self.error(op, e, peers) from None

    def error(self, op: str, e: BaseException | str, peers: Sequence[int] | None = None) -> CommError:
        """A CommError for ``op`` on this group, waiting for ``peers`` (default: all other members)."""
        waited = [r for r in self.ranks if r != self.ranks[self.rank]] if peers is None else list(peers)
        return CommError(op=op, group=self.name, ranks=waited, message=f"{self.library}: {e}")

    def call(self, op: str, fn: Callable[[], object], peers: Sequence[int] | None = None):
        """Run ``fn()`` (which posts a library op and returns its Work) and wait for it, translating errors."""
        try:
            work = fn()
        except CommError:
            raise
        except Exception as e:
            raise self.error(op, e, peers) from None
        self.wait(op, work, peers)

    # -- posting (async) ops: return the library Work, wait with ``wait(op, work)`` ---------------------
    def post(self, op: str, fn: Callable[[], object], peers: Sequence[int] | None = None):
        """Post a library op (``fn`` returns its Work) without waiting; errors become CommError."""
        try:
            return fn()
        except CommError:
            raise
        except Exception as e:
            raise self.error(op, e, peers) from None

    def post_all_reduce(self, t: torch.Tensor, op: dist.ReduceOp):
        """Post an in-place all-reduce of ``t``."""
        o = AllreduceOptions()
        o.reduceOp = op
        return self.post("all_reduce", lambda: self.backend.allreduce([t], o))

    def post_reduce(self, t: torch.Tensor, op: dist.ReduceOp, root: int):
        """Post a reduce of ``t`` into sub-group rank ``root``."""
        o = ReduceOptions()
        o.reduceOp, o.rootRank, o.rootTensor = op, root, 0
        return self.post("reduce", lambda: self.backend.reduce([t], o))

    def post_broadcast(self, t: torch.Tensor, root: int):
        """Post a broadcast of ``t`` from sub-group rank ``root``."""
        o = BroadcastOptions()
        o.rootRank, o.rootTensor = root, 0
        return self.post("broadcast", lambda: self.backend.broadcast([t], o))

    # -- blocking ops, ranks are sub-group ranks --------------------------------------------------------
    def all_reduce(self, t: torch.Tensor, op: dist.ReduceOp) -> None:
        """In-place all-reduce of ``t``."""
        o = AllreduceOptions()
        o.reduceOp = op
        self.call("all_reduce", lambda: self.backend.allreduce([t], o))

    def reduce(self, t: torch.Tensor, op: dist.ReduceOp, root: int) -> None:
        """Reduce ``t`` into sub-group rank ``root`` (in place there)."""
        o = ReduceOptions()
        o.reduceOp, o.rootRank, o.rootTensor = op, root, 0
        self.call("reduce", lambda: self.backend.reduce([t], o))

    def broadcast(self, t: torch.Tensor, root: int) -> None:
        """Broadcast ``t`` from sub-group rank ``root``."""
        o = BroadcastOptions()
        o.rootRank, o.rootTensor = root, 0
        peers = None if self.rank == root else [self.ranks[root]]
        self.call("broadcast", lambda: self.backend.broadcast([t], o), peers)

    def all_gather(self, outs: list[torch.Tensor], t: torch.Tensor) -> None:
        """Gather equal-size ``t`` from every member into ``outs`` (length ``size``)."""
        self.call("all_gather", lambda: self.backend.allgather([outs], [t], AllgatherOptions()))

    def gather(self, outs: list[torch.Tensor] | None, t: torch.Tensor, root: int) -> None:
        """Gather equal-size ``t`` into ``outs`` on ``root`` (``outs`` None elsewhere)."""
        o = GatherOptions()
        o.rootRank = root
        peers = None if self.rank == root else [self.ranks[root]]
        self.call("gather", lambda: self.backend.gather([outs] if outs is not None else [], [t], o), peers)

    def scatter(self, out: torch.Tensor, ins: list[torch.Tensor] | None, root: int) -> None:
        """Scatter equal-size ``ins`` from ``root`` into ``out``."""
        o = ScatterOptions()
        o.rootRank = root
        peers = None if self.rank == root else [self.ranks[root]]
        self.call("scatter", lambda: self.backend.scatter([out], [ins] if ins is not None else [], o), peers)

    def all_to_all_single(self, out: torch.Tensor, inp: torch.Tensor, out_splits: list[int],
                          in_splits: list[int]) -> None:
        """All-to-all of dim-0 slices of ``inp`` into ``out`` (uneven ``*_splits`` allowed, empty = even)."""
        fn = getattr(self.backend, "alltoall_base", None) or self.backend.all_to_all_single
        self.call("all_to_all", lambda: fn(out, inp, out_splits, in_splits, AllToAllOptions()))

    def barrier(self) -> None:
        """Wait for all members."""
        o = BarrierOptions()
        o.device = torch.device("cpu")
        self.call("barrier", lambda: self.backend.barrier(o))

    def send(self, t: torch.Tensor, dst: int, tag: int):
        """Post a send of ``t`` to sub-group rank ``dst``; returns the library Work."""
        try:
            return self.backend.send([t], dst, tag)
        except Exception as e:
            raise self.error("send", e, [self.ranks[dst]]) from None

    def recv(self, t: torch.Tensor, src: int, tag: int):
        """Post a receive into ``t`` from sub-group rank ``src``; returns the library Work."""
        try:
            return self.backend.recv([t], src, tag)
        except Exception as e:
            raise self.error("recv", e, [self.ranks[src]]) from None

    def shutdown(self) -> None:
        """Release the library's resources (best effort)."""
        fn = getattr(self.backend, "shutdown", None)
        if fn is not None:
            try:
                fn()
            except Exception:
                pass


# -- host staging -----------------------------------------------------------------------------------------
def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of contiguous ``t`` (shape [t.numel() * t.element_size()])."""
    return t.reshape(-1).view(torch.uint8)


def host_buffer(like: torch.Tensor) -> torch.Tensor:
    """An empty host tensor shaped like ``like``; pinned when ``like`` lives on an accelerator."""
    pin = like.device.type != "cpu" and torch.accelerator.is_available()
    return torch.empty(like.shape, dtype=like.dtype, pin_memory=pin)


def to_host(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when already in host memory, else a pinned host copy."""
    if t.device.type == "cpu":
        return t
    h = host_buffer(t)
    h.copy_(t)
    return h


def staged(t: torch.Tensor, op: Callable[[torch.Tensor], object], *, chunk_bytes: int,
           wait: Callable[[object], None], writes: bool = True) -> None:
    """Run ``op(chunk)`` on host memory for every chunk of flat contiguous ``t`` (shape [n]).

    Host tensors are used in place (no copy). Device tensors are copied to pinned host memory chunk by chunk
    on the device's stream, each copy recorded by an event, so the library works on chunk i while chunk i+1 is
    still being copied; results are copied back when ``writes``. ``op`` posts a library op and returns its
    Work; ``wait(work)`` waits for it (and translates errors).
    """
    if t.device.type == "cpu":
        wait(op(t))
        return
    host = host_buffer(t)
    step = max(1, chunk_bytes // max(1, t.element_size()))
    mod = torch.get_device_module(t.device.type)
    chunks, events = [], []
    for s in range(0, t.numel(), step):
        host[s:s + step].copy_(t[s:s + step], non_blocking=True)
        ev = mod.Event() if hasattr(mod, "Event") else None
        if ev is not None:
            ev.record()
        chunks.append((s, min(s + step, t.numel())))
        events.append(ev)
    if not events or events[0] is None:
        mod.synchronize()
    works = []
    for (s, e), ev in zip(chunks, events):
        if ev is not None:
            ev.synchronize()
        works.append(op(host[s:e]))
    for (s, e), w in zip(chunks, works):
        wait(w)
        if writes:
            t[s:e].copy_(host[s:e], non_blocking=True)
    if writes:
        mod.synchronize()
