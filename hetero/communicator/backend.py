"""The ``hetero`` torch.distributed backend: one process group over ranks of several device types.

``import hetero.communicator`` registers it; then ``dist.init_process_group("hetero")`` (or
``hetero.communicator.init_process_group()``, or ``hetero.init(plan)``) is all a script needs. At init every rank
declares its device type (HETERO_DEVICE_TYPE / HETERO_DEVICE, see :mod:`topology`), and the group builds:

* one native sub-group per device type (nccl / xccl / hccl / gloo, chosen by availability),
* a bridge between the type leaders (gloo over host memory, or MPI with ``HETERO_BRIDGE=mpi``),
* a flat gloo host group over all ranks (gather, scatter, all_to_all, barrier, cross-type send/recv, checks).

With one device type every op goes straight to the native library on the caller's thread. With several, the
collectives of :mod:`hierarchical` run on a per-group worker thread in issue order and return future-backed
Work objects, so ``async_op=True``, DDP's overlapped buckets and ``Work.get_future()`` behave as usual.
Point-to-point ops are posted at once (same type: native; across types: host gloo, device tensors staged).

Errors (timeout, dead peer, sizes that differ across ranks) raise :class:`CommError` naming op, group, ranks.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import AllgatherOptions, _create_work_from_future

from hetero.communicator import hierarchical as H
from hetero.communicator.errors import CommError
from hetero.communicator.groups import SubGroup, as_bytes, to_host
from hetero.communicator.topology import CommConfig, Topology, exchange_declarations, local_declaration

log = logging.getLogger("hetero.communicator")

_DTYPE_CODES = {dt: i for i, dt in enumerate([
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128])}
_OP_CODES = {n: i for i, n in enumerate(
    ["all_reduce", "broadcast", "reduce", "all_gather", "reduce_scatter", "gather", "scatter", "all_to_all",
     "barrier", "all_gather_into_tensor", "reduce_scatter_tensor", "all_to_all_single", "all_reduce_coalesced"])}


def _done(value) -> dist.Work:
    """A completed Work whose future holds ``value``."""
    fut = torch.futures.Future()
    fut.set_result(value)
    return _create_work_from_future(fut)


class _Worker:
    """One daemon thread running submitted callables in order; results land in torch Futures."""

    def __init__(self, name: str):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.inflight = 0
        """Submitted tasks not finished yet (0: a synchronous op may run on the caller's thread)."""
        self._t = threading.Thread(target=self._loop, name=name, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, fut = item
            try:
                value, exc = fn(), None
            except BaseException as e:  # noqa: BLE001 - delivered to the waiter
                value, exc = None, e
            with self._lock:
                self.inflight -= 1
            if exc is None:
                fut.set_result(value)
            else:
                fut.set_exception(exc)

    def submit(self, fn: Callable[[], object]) -> torch.futures.Future:
        fut = torch.futures.Future()
        with self._lock:
            self.inflight += 1
        self._q.put((fn, fut))
        return fut

    def stop(self, timeout_s: float) -> None:
        """Finish queued work (up to ``timeout_s``) and end the thread."""
        self._q.put(None)
        self._t.join(timeout_s)


class _FutureWork(dist.Work):
    """Work backed by a torch Future (set by the worker thread or a library callback); ``wait`` re-raises
    the CommError the op ended with."""

    def __init__(self, fut: torch.futures.Future):
        super().__init__()
        self._fut = fut

    def wait(self, timeout=None) -> bool:
        self._fut.wait()
        return True

    def is_completed(self) -> bool:
        return self._fut.done()

    def is_success(self) -> bool:
        if not self._fut.done():
            return False
        try:
            self._fut.wait()
            return True
        except Exception:
            return False

    def exception(self):
        try:
            self._fut.wait()
            return None
        except Exception as e:
            return e

    def get_future(self) -> torch.futures.Future:
        return self._fut


def _checked(work: dist.Work, sub: SubGroup, op: str, peers=None, then=None, result=None) -> dist.Work:
    """A Work over native ``work``: ``wait`` finishes with ``then()`` and turns errors into CommError; the
    future (built only when asked for, e.g. by DDP) does the same without blocking."""
    return _LazyWork(work, sub, op, peers, then, result)


def _chained(work: dist.Work, sub: SubGroup, op: str, peers, then, result) -> torch.futures.Future:
    fut = torch.futures.Future()

    def done(nf):
        try:
            nf.wait()
            if then is not None:
                then()
            fut.set_result(result)
        except Exception as e:
            fut.set_exception(e if isinstance(e, CommError) else sub.error(op, e, peers))
    work.get_future().add_done_callback(done)
    return fut


class _LazyWork(dist.Work):
    """Work over a native Work without a future (gloo send/recv): waits on it directly."""

    def __init__(self, work: dist.Work, sub: SubGroup, op: str, peers=None, then=None, result=None):
        super().__init__()
        self._w, self._sub, self._op, self._peers, self._then, self._result = work, sub, op, peers, then, result
        self._finished = False
        self._lock = threading.Lock()

    def wait(self, timeout=None) -> bool:
        with self._lock:
            if not self._finished:
                self._sub.wait(self._op, self._w, self._peers)
                if self._then is not None:
                    self._then()
                self._finished = True
        return True

    def is_completed(self) -> bool:
        return self._finished or self._w.is_completed()

    def get_future(self) -> torch.futures.Future:
        try:
            return _chained(self._w, self._sub, self._op, self._peers, self._then, self._result)
        except RuntimeError:  # a library Work without a future (gloo send/recv): complete it now
            fut = torch.futures.Future()
            try:
                self.wait()
                fut.set_result(self._result)
            except Exception as e:
                fut.set_exception(e)
            return fut


class HeteroProcessGroup(dist.ProcessGroup):
    """torch.distributed process group spanning device types; see the module docstring."""

    def __init__(self, store: dist.Store, rank: int, size: int, cfg: CommConfig, *, name: str = "hetero",
                 device_type: str | None = None, device: str | None = None):
        super().__init__(rank, size)
        self.cfg = cfg
        self._name = name
        decls = exchange_declarations(store, rank=rank, size=size, mine=local_declaration(device_type, device),
                                      timeout=cfg.timeout)
        self.topo = Topology.build(rank=rank, declarations=decls)
        self.groups = _build_groups(store, self.topo, cfg, name)
        self._worker = None if self.topo.single_type else _Worker(f"hetero-comm-{name}")
        self._calls: dict[str, int] = {}  # calls per op on this group (the size-check schedule)
        self._recheck = False
        self._map = _describe(self.topo, self.groups, cfg, name)
        _log_map(self._map, rank)
        # resolved once, off the per-op path: rank, size, the in-type group for host tensors, and point-to-point
        # routes (peer -> (sub-group, its rank there)) for host and device tensors
        self._me, self._n = rank, size
        self._host_sub = self.groups.intra_host or self.groups.world
        dev_sub = self.groups.intra or self.groups.world
        same = [self.topo.type_index(r) == self.topo.type_index(rank) for r in range(size)]
        self._p2p_host = [(self._host_sub, self._host_sub.local(r)) if same[r] else (self.groups.world, r)
                          for r in range(size)]
        self._p2p_dev = [(dev_sub, dev_sub.local(r)) if same[r] else (self.groups.world, r) for r in range(size)]

    # -- identity -------------------------------------------------------------------------------------------
    def getBackendName(self) -> str:  # noqa: N802 - torch API
        return "hetero"

    def _set_group_name(self, name: str) -> None:
        self._group_name = name
        super()._set_group_name(name)

    @property
    def group_name(self) -> str:
        """The name torch.distributed gave this group (DeviceMesh and functional collectives look it up)."""
        return getattr(self, "_group_name", self._name)

    def describe(self) -> dict:
        """Which library carries which sub-group (the map logged at init)."""
        return dict(self._map)

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.stop(self.cfg.timeout_s)
            self._worker = None
        if self.groups is None:
            return
        for sub in {id(s): s for s in _all_subs(self.groups)}.values():
            sub.shutdown()
        # drop the native groups now (destroy_process_group), not at interpreter exit, where a library's
        # destructor tearing down its threads can abort the process
        self.groups, self._host_sub, self._p2p_host, self._p2p_dev = None, None, [], []

    # -- helpers --------------------------------------------------------------------------------------------
    def _check(self, op: str, *values: int) -> None:
        """All ranks must call ``op`` with the same (numel, dtype, root, ...); raise CommError otherwise. Runs on
        the first call of ``op`` and every ``cfg.check_every``-th after (the same calls on every rank), and on the
        call after a caught mismatch."""
        every = self.cfg.check_every
        n = self._calls.get(op, 0)
        self._calls[op] = n + 1
        if every <= 0 or (n % every and not self._recheck):
            return
        self._recheck = False
        me = torch.tensor([_OP_CODES[op], *values], dtype=torch.int64)
        outs = [torch.empty_like(me) for _ in range(self._n)]
        self.groups.world.call(op, lambda: self.groups.world.backend.allgather([outs], [me],
                                                                               AllgatherOptions()))
        rows = [o.tolist() for o in outs]
        bad = [r for r in range(len(rows)) if rows[r] != rows[self._me]]
        if bad:
            self._recheck = True  # every rank saw it: check the next call too
            names = ["op", "numel", "dtype", "root", "extra"]
            detail = "; ".join(f"rank {r}: " + ", ".join(f"{names[i]}={v}" for i, v in enumerate(rows[r]))
                               for r in [self._me, *bad])
            raise CommError(op=op, group=self._name, ranks=bad,
                            message=f"ranks called it with different arguments ({detail}); nothing was sent")

    def _run(self, op: str, fn: Callable[[], object], check: tuple[int, ...] | None,
             async_op: bool = True) -> dist.Work:
        """Mixed-type path: run check + ``fn``; a synchronous op with nothing queued runs on the caller's thread,
        anything else on the worker thread in issue order (a future-backed Work)."""
        def task():
            if check is not None:
                self._check(op, *check)
            return fn()
        if not async_op and self._worker.inflight == 0:
            return _done(task())
        return _FutureWork(self._worker.submit(task))

    def _native(self, t: torch.Tensor) -> SubGroup:
        """Single-type path: the native group for ``t`` (host gloo for host tensors under nccl & co.)."""
        if t.device.type == "cpu":
            return self._host_sub
        g = self.groups.inner(t)
        return g if g is not None else self.groups.world

    # -- collectives ----------------------------------------------------------------------------------------
    def allreduce(self, tensors, opts=None):
        opts = opts or dist.AllreduceOptions()
        t = _one(tensors, "all_reduce")
        op = opts.reduceOp
        if self.topo.single_type:
            self._check("all_reduce", t.numel(), _dcode(t), -1, 0)
            sub = self._native(t)
            red, avg = H.split_avg(op, group=self._name, name="all_reduce")
            if sub.library == "gloo" or not avg:
                o = opts
                if avg:  # gloo has no AVG: SUM, then divide
                    o = dist.AllreduceOptions()
                    o.reduceOp = red
                w = sub.backend.allreduce([t], o)
                then = (lambda: H.divide(t, self._n)) if (avg and sub.library == "gloo") else None
                return _checked(w, sub, "all_reduce", then=then, result=[t])
        return self._run("all_reduce", lambda: (H.all_reduce(self.groups, t, op), [t])[1],
                         (t.numel(), _dcode(t), -1, 0), opts.asyncOp)

    def allreduce_coalesced(self, tensors, opts=None):
        op = opts.reduceOp if opts is not None else dist.ReduceOp.SUM
        flat = torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.empty(0)

        def unpack():
            off = 0
            for t in tensors:
                t.copy_(flat[off: off + t.numel()].view(t.shape))
                off += t.numel()
            return list(tensors)
        o = dist.AllreduceOptions()
        o.reduceOp = op
        w = self.allreduce([flat], o)
        w.wait()
        return _done(unpack())

    def broadcast(self, tensors, opts=None):
        opts = opts or dist.BroadcastOptions()
        t = _one(tensors, "broadcast")
        src = opts.rootRank
        if self.topo.single_type:
            self._check("broadcast", t.numel(), _dcode(t), src, 0)
            sub = self._native(t)  # the same ranks in the same order: the caller's options apply as they are
            peers = None if src == self._me else [src]
            return _checked(sub.backend.broadcast([t], opts), sub, "broadcast", peers, result=[t])
        return self._run("broadcast", lambda: (H.broadcast(self.groups, t, src), [t])[1],
                         (t.numel(), _dcode(t), src, 0), opts.asyncOp)

    def reduce(self, tensors, opts=None):
        opts = opts or dist.ReduceOptions()
        t = _one(tensors, "reduce")
        dst, op = opts.rootRank, opts.reduceOp
        if self.topo.single_type:
            self._check("reduce", t.numel(), _dcode(t), dst, 0)
            sub = self._native(t)
            red, avg = H.split_avg(op, group=self._name, name="reduce")
            o = dist.ReduceOptions()
            o.reduceOp, o.rootRank, o.rootTensor = red, dst, 0
            then = (lambda: H.divide(t, self._n)) if (avg and self._me == dst) else None
            return _checked(sub.backend.reduce([t], o), sub, "reduce", then=then, result=[t])
        return self._run("reduce", lambda: (H.reduce(self.groups, t, op, dst), [t])[1],
                         (t.numel(), _dcode(t), dst, 0), opts.asyncOp)

    def allgather(self, output_tensors, input_tensors, opts=None):
        outs = list(output_tensors[0])
        t = _one(input_tensors, "all_gather")
        self._check_outs("all_gather", outs, t)
        sizes = [o.numel() for o in outs]
        if self.topo.single_type and len(set(sizes)) == 1:
            self._check("all_gather", len(sizes), _dcode(t), -1, sum(sizes))
            sub = self._native(t)
            return _checked(sub.backend.allgather([outs], [t], AllgatherOptions()), sub, "all_gather",
                                result=[outs])
        if self.topo.single_type:
            self._check("all_gather", len(sizes), _dcode(t), -1, sum(sizes))
            return self._padded_allgather(outs, t)
        return self._run("all_gather", lambda: (H.all_gather(self.groups, outs, t), [outs])[1],
                         (len(sizes), _dcode(t), -1, sum(sizes)), _async(opts))

    def _padded_allgather(self, outs, t) -> dist.Work:
        """Uneven all_gather on one native library: pad every rank's bytes to the largest, then unpack."""
        sub = self._native(t)
        sizes = [o.numel() * o.element_size() for o in outs]
        m = max(sizes)
        parts = [torch.empty(m, dtype=torch.uint8, device=t.device) for _ in outs]
        sub.call("all_gather", lambda: sub.backend.allgather([parts], [H._pad(as_bytes(t.contiguous()), m)],
                                                             AllgatherOptions()))
        for o, p, n in zip(outs, parts, sizes):
            H._write_bytes(o, p[:n])
        return _done([outs])

    def _check_outs(self, op: str, outs, t) -> None:
        if len(outs) != self._n:
            raise CommError(op=op, group=self._name, ranks=[], message=f"output list has {len(outs)} tensors, "
                            f"group has {self._n} ranks")
        if outs[self._me].numel() != t.numel() or any(o.dtype != t.dtype for o in outs):
            raise CommError(op=op, group=self._name, ranks=[], message=f"output[{self._me}] has "
                            f"{outs[self._me].numel()} elements ({outs[self._me].dtype}) but the input has "
                            f"{t.numel()} ({t.dtype})")

    def all_gather_single(self, output, input, opts=None):  # noqa: A002 - torch API
        k = input.numel()
        if output.numel() != k * self._n:
            raise CommError(op="all_gather_into_tensor", group=self._name, ranks=[],
                            message=f"output has {output.numel()} elements, expected {self._n} x {k}")
        sub = self._native(input) if self.topo.single_type else None
        if sub is not None and hasattr(sub.backend, "_allgather_base") and input.is_contiguous() \
                and output.is_contiguous():
            self._check("all_gather", self._n, _dcode(input), -1, output.numel())
            return _checked(sub.backend._allgather_base(output, input, AllgatherOptions()), sub,
                            "all_gather_into_tensor", result=[output])
        flat = output.view(-1)
        return self.allgather([[flat[i * k:(i + 1) * k] for i in range(self._n)]], [input.reshape(-1)], opts)

    _allgather_base = all_gather_single

    def allgather_into_tensor_coalesced(self, outputs, inputs, opts=None):
        for o, i in zip(outputs, inputs):
            self.all_gather_single(o, i, opts).wait()
        return _done(list(outputs))

    all_gather_single_coalesced = allgather_into_tensor_coalesced

    def reduce_scatter(self, output_tensors, input_tensors, opts=None):
        op = opts.reduceOp if opts is not None else dist.ReduceOp.SUM
        out = _one(output_tensors, "reduce_scatter")
        ins = list(input_tensors[0])
        if len(ins) != self._n or ins[self._me].numel() != out.numel():
            raise CommError(op="reduce_scatter", group=self._name, ranks=[],
                            message=f"input list must have {self._n} tensors, entry {self._me} with "
                            f"{out.numel()} elements")
        total = sum(i.numel() for i in ins)
        if self.topo.single_type:
            self._check("reduce_scatter", len(ins), _dcode(out), -1, total)
            flat = torch.cat([i.reshape(-1) for i in ins])
            o = dist.AllreduceOptions()
            o.reduceOp = op
            self.allreduce([flat], o).wait()
            start = sum(i.numel() for i in ins[: self._me])
            out.copy_(flat[start: start + out.numel()].view(out.shape))
            return _done([out])
        return self._run("reduce_scatter", lambda: (H.reduce_scatter(self.groups, out, ins, op), [out])[1],
                         (len(ins), _dcode(out), -1, total), _async(opts))

    def reduce_scatter_single(self, output, input, opts=None):  # noqa: A002 - torch API
        k = output.numel()
        if input.numel() != k * self._n:
            raise CommError(op="reduce_scatter_tensor", group=self._name, ranks=[],
                            message=f"input has {input.numel()} elements, expected {self._n} x {k}")
        op = opts.reduceOp if opts is not None else dist.ReduceOp.SUM
        sub = self._native(input) if self.topo.single_type else None
        if sub is not None and hasattr(sub.backend, "_reduce_scatter_base") and input.is_contiguous() \
                and output.is_contiguous():
            self._check("reduce_scatter_tensor", k, _dcode(output), -1, input.numel())
            red, avg = H.split_avg(op, group=self._name, name="reduce_scatter_tensor")
            o = dist.ReduceScatterOptions()
            o.reduceOp = red if sub.library == "gloo" else op
            then = (lambda: H.divide(output, self._n)) if (avg and sub.library == "gloo") else None
            return _checked(sub.backend._reduce_scatter_base(output, input, o), sub, "reduce_scatter_tensor",
                            then=then, result=[output])
        flat = input.reshape(-1)
        return self.reduce_scatter([output.view(-1)], [[flat[i * k:(i + 1) * k] for i in range(self._n)]],
                                   opts)

    _reduce_scatter_base = reduce_scatter_single

    def reduce_scatter_tensor_coalesced(self, outputs, inputs, opts=None):
        for o, i in zip(outputs, inputs):
            self.reduce_scatter_single(o, i, opts).wait()
        return _done(list(outputs))

    reduce_scatter_single_coalesced = reduce_scatter_tensor_coalesced

    def gather(self, output_tensors, input_tensors, opts=None):
        opts = opts or dist.GatherOptions()
        t = _one(input_tensors, "gather")
        dst = opts.rootRank
        outs = list(output_tensors[0]) if output_tensors else None
        if outs is not None and (len(outs) != self._n or any(o.numel() != t.numel() for o in outs)):
            raise CommError(op="gather", group=self._name, ranks=[],
                            message=f"gather_list must hold {self._n} tensors of {t.numel()} elements")
        fn = lambda: (H.gather(self.groups, outs, t, dst), [outs or []])[1]  # noqa: E731
        return self._maybe_thread("gather", fn, (t.numel(), _dcode(t), dst, 0), _async(opts))

    def scatter(self, output_tensors, input_tensors, opts=None):
        opts = opts or dist.ScatterOptions()
        out = _one(output_tensors, "scatter")
        src = opts.rootRank
        ins = list(input_tensors[0]) if input_tensors else None
        if ins is not None and (len(ins) != self._n or any(i.numel() != out.numel() for i in ins)):
            raise CommError(op="scatter", group=self._name, ranks=[],
                            message=f"scatter_list must hold {self._n} tensors of {out.numel()} elements")
        fn = lambda: (H.scatter(self.groups, out, ins, src), [out])[1]  # noqa: E731
        return self._maybe_thread("scatter", fn, (out.numel(), _dcode(out), src, 0), _async(opts))

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):  # noqa: A002
        osz, isz = list(output_split_sizes), list(input_split_sizes)
        n = self._n
        if (osz and len(osz) != n) or (isz and len(isz) != n):
            raise CommError(op="all_to_all_single", group=self._name, ranks=[],
                            message=f"split sizes must have {n} entries, got {len(osz)} and {len(isz)}")
        if self.topo.single_type:
            sub = self._native(input)
            if sub.library != "gloo" or (input.device.type == "cpu" and output.device.type == "cpu"):
                self._check("all_to_all_single", 0, _dcode(input), -1, 0)
                fn = getattr(sub.backend, "alltoall_base", None) or sub.backend.all_to_all_single
                return _checked(fn(output, input, osz, isz, dist.AllToAllOptions()), sub, "all_to_all_single",
                                    result=[output])
        fn = lambda: (H.all_to_all_single(self.groups, output, input, osz, isz), [output])[1]  # noqa: E731
        return self._maybe_thread("all_to_all_single", fn, (0, _dcode(input), -1, 0), _async(opts))

    alltoall_base = all_to_all_single

    def alltoall(self, output_tensors, input_tensors, opts=None):
        outs, ins = list(output_tensors), list(input_tensors)
        if len(outs) != self._n or len(ins) != self._n:
            raise CommError(op="all_to_all", group=self._name, ranks=[],
                            message=f"input and output lists must hold {self._n} tensors each")
        fn = lambda: (H.all_to_all(self.groups, outs, ins), outs)[1]  # noqa: E731
        dc = _dcode(ins[0])
        return self._maybe_thread("all_to_all", fn, (len(ins), dc, -1, 0), _async(opts))

    def barrier(self, opts=None):
        fn = lambda: (self.groups.world.barrier(), [])[1]  # noqa: E731
        return self._maybe_thread("barrier", fn, None, _async(opts))

    def monitored_barrier(self, timeout=None, wait_all_ranks=False):
        self.barrier().wait()

    def _maybe_thread(self, op: str, fn, check, async_op: bool = True) -> dist.Work:
        if self._worker is not None:
            return self._run(op, fn, check, async_op)
        if check is not None:
            self._check(op, *check)
        return _done(fn())

    # -- point to point -------------------------------------------------------------------------------------
    def _p2p_group(self, peer: int, t: torch.Tensor) -> tuple[SubGroup, int]:
        """(sub-group, rank there) that carries a message to/from ``peer``: the type's own group when
        ``peer`` has this rank's type (host gloo for host tensors), else the flat host group."""
        routes = self._p2p_host if t.device.type == "cpu" else self._p2p_dev
        if not 0 <= peer < len(routes):
            raise CommError(op="send/recv", group=self._name, ranks=[peer],
                            message=f"peer rank {peer} is outside the group of size {len(routes)}")
        return routes[peer]

    def send(self, tensors, dstRank, tag=0):  # noqa: N803 - torch API
        t = _one(tensors, "send")
        sub, peer = self._p2p_group(dstRank, t)
        h = t if t.device.type == "cpu" or sub is not self.groups.world else to_host(t.contiguous())
        return _LazyWork(sub.send(h, peer, tag), sub, "send", [dstRank], result=[t])

    def recv(self, tensors, srcRank, tag=0):  # noqa: N803 - torch API
        t = _one(tensors, "recv")
        sub, peer = self._p2p_group(srcRank, t)
        staged = sub is self.groups.world and (t.device.type != "cpu" or not t.is_contiguous())
        h = torch.empty(t.shape, dtype=t.dtype) if staged else t
        return _LazyWork(sub.recv(h, peer, tag), sub, "recv", [srcRank], then=(lambda: t.copy_(h)) if staged else None,
                         result=[t])

    def recv_anysource(self, tensors, tag=0):
        t = _one(tensors, "recv")
        if not self.topo.single_type:
            raise CommError(op="recv", group=self._name, ranks=list(range(self._n)),
                            message="receiving from any source is only supported when all ranks are one device "
                            "type; pass src=")
        sub = self._native(t)
        return _LazyWork(sub.backend.recv_anysource([t], tag), sub, "recv", result=[t])

    def __repr__(self) -> str:
        return f"HeteroProcessGroup(rank={self._me}, size={self._n}, types={len(self.topo.types)})"


def _async(opts) -> bool:
    """Whether the caller asked for an async op (options default to async, as in torch)."""
    return True if opts is None else bool(getattr(opts, "asyncOp", True))


def _one(tensors, op: str) -> torch.Tensor:
    if len(tensors) != 1:
        raise CommError(op=op, group="hetero", ranks=[], message=f"expects exactly one tensor, got {len(tensors)}")
    return tensors[0]


def _dcode(t: torch.Tensor) -> int:
    return _DTYPE_CODES.get(t.dtype, 99)


def _all_subs(g: H.Groups) -> list[SubGroup]:
    return [s for s in (g.intra, g.intra_host, g.bridge, g.world) if s is not None]


def _build_groups(store: dist.Store, topo: Topology, cfg: CommConfig, name: str) -> H.Groups:
    """Create the sub-groups this rank belongs to (collective over each sub-group's members)."""
    me = topo.mine
    world = None
    intra = intra_host = None
    if len(me.ranks) > 1:
        intra = SubGroup.create(library=me.library, store=store, name=f"type:{me.device_type}", ranks=me.ranks,
                                my_rank=topo.rank, timeout=cfg.timeout)
        if me.library == "gloo":
            intra_host = intra
        else:
            intra_host = SubGroup.create(library="gloo", store=store, name=f"type:{me.device_type}/host",
                                         ranks=me.ranks, my_rank=topo.rank, timeout=cfg.timeout)
    if topo.single_type and intra_host is not None:
        world = SubGroup(name="host", library="gloo", ranks=intra_host.ranks, rank=intra_host.rank,
                         backend=intra_host.backend)
    if world is None:
        world = SubGroup.create(library="gloo", store=store, name="host", ranks=range(topo.size),
                                my_rank=topo.rank, timeout=cfg.timeout)
    bridge = None
    if not topo.single_type and topo.rank in topo.leaders:
        if cfg.bridge == "mpi":
            from hetero.communicator.mpi import bridge_group

            bridge = bridge_group(store=store, topo=topo, timeout=cfg.timeout)
        else:
            bridge = SubGroup.create(library="gloo", store=store, name="bridge", ranks=topo.leaders,
                                     my_rank=topo.rank, timeout=cfg.timeout)
    elif not topo.single_type and cfg.bridge == "mpi":
        from hetero.communicator.mpi import bridge_group

        bridge_group(store=store, topo=topo, timeout=cfg.timeout)  # non-leaders take part in the MPI map
    return H.Groups(topo=topo, cfg=cfg, intra=intra, intra_host=intra_host, bridge=bridge, world=world)


def _describe(topo: Topology, g: H.Groups, cfg: CommConfig, name: str) -> dict:
    groups = []
    for t in topo.types:
        groups.append({"group": f"type:{t.device_type}", "ranks": list(t.ranks), "device": t.device_kind,
                       "library": t.library if len(t.ranks) > 1 else "none (one rank)", "reason": t.reason})
    if not topo.single_type:
        groups.append({"group": "bridge", "ranks": list(topo.leaders), "device": "cpu",
                       "library": cfg.bridge, "reason": "host-staged exchange between type leaders"})
    groups.append({"group": "host", "ranks": list(range(topo.size)), "device": "cpu", "library": "gloo",
                   "reason": "gather/scatter/all_to_all/barrier, cross-type send/recv, size checks"})
    return {"backend": "hetero", "name": name, "rank": topo.rank, "size": topo.size,
            "rank_types": list(topo.rank_types),
            "hierarchical": (not topo.single_type) and cfg.hierarchical,
            "check_every": cfg.check_every, "groups": groups}


def _log_map(m: dict, rank: int) -> None:
    for grp in m["groups"]:
        if grp["reason"].startswith("host-staged fallback") and rank in grp["ranks"]:
            log.warning("hetero: %s (ranks %s) runs on gloo: %s", grp["group"], grp["ranks"], grp["reason"])
    if rank == 0:
        lines = [f"  {g['group']:<24} ranks {g['ranks']}: {g['library']} ({g['reason']})" for g in m["groups"]]
        log.info("hetero process group %s, %d ranks:\n%s", m["name"], m["size"], "\n".join(lines))
