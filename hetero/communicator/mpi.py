"""MPI through mpi4py as a torch.distributed process group: the ``hetero-mpi`` backend and the MPI bridge.

``pip install mpi4py mpich`` gives a working MPI (no root flags). Two uses:

* on its own, under an MPI launcher (ranks come from the launcher: PMI_RANK / OMPI_COMM_WORLD_RANK / ...):

      mpiexec -n 4 python train.py      # train.py: hetero.communicator.init_process_group(backend="hetero-mpi")

* as the bridge between device-type leaders of a ``hetero`` group with ``HETERO_BRIDGE=mpi`` (all ranks must be
  started by one ``mpiexec``; torch ranks are mapped to MPI ranks through the rendezvous store).

Collectives run as blocking MPI calls on the group's own daemon thread (MPI_THREAD_MULTIPLE) and the caller
waits for them with the group timeout, so a dead or stuck peer gives a CommError naming the op, the group and
the ranks instead of a hang (polling non-blocking requests from Python was 4x slower on a loaded machine). Host (CPU) tensors are used in place;
device tensors are staged through host memory. fp16/bf16 reductions are computed in fp32 and rounded back.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import socket
import threading
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import _create_work_from_future

from hetero.communicator.errors import CommError
from hetero.communicator.groups import SubGroup, as_bytes

RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS")


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise CommError(op="init", group="mpi", ranks=[], message="mpi4py is not installed: "
                        "pip install 'hetero[mpi]' (mpi4py + mpich)") from None
    return MPI


def launcher_rank_size(env=None) -> tuple[int, int] | None:
    """(rank, size) from an MPI launcher's environment variables, or None when not under one."""
    env = os.environ if env is None else env
    r = next((env[v] for v in RANK_VARS if v in env), None)
    s = next((env[v] for v in SIZE_VARS if v in env), None)
    if r is None or s is None:
        return None
    return int(r), int(s)


def _reduce_op(MPI, op: dist.ReduceOp):
    for name, mop in (("SUM", MPI.SUM), ("AVG", MPI.SUM), ("PRODUCT", MPI.PROD), ("MIN", MPI.MIN),
                      ("MAX", MPI.MAX), ("BAND", MPI.BAND), ("BOR", MPI.BOR), ("BXOR", MPI.BXOR)):
        if op == getattr(dist.ReduceOp, name):
            return mop, name == "AVG"
    raise ValueError(f"reduce op {op} is not supported by the MPI group")


class _Host:
    """A CPU contiguous working copy of a tensor (the tensor itself when it already is one)."""

    def __init__(self, t: torch.Tensor, *, upcast: bool = False):
        self.t = t
        self.upcast = upcast and t.dtype in (torch.float16, torch.bfloat16)
        direct = t.device.type == "cpu" and t.is_contiguous() and not self.upcast
        if direct:
            self.h = t
        else:
            self.h = t.detach().to("cpu", torch.float32 if self.upcast else t.dtype).contiguous()

    def array(self):
        """numpy view of the host buffer (bytes for dtypes numpy lacks)."""
        h = self.h.detach()
        if h.dtype in (torch.bfloat16,) or h.dtype.is_complex:
            return as_bytes(h).numpy()
        return h.numpy()

    def back(self) -> None:
        """Copy the host buffer back into the tensor when it was a copy."""
        if self.h is not self.t:
            self.t.copy_(self.h)


class _CallThread:
    """A daemon thread running blocking MPI calls in order; ``call`` waits with a timeout."""

    def __init__(self):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="hetero-mpi", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, fut = self._q.get()
            if fn is None:
                return
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - delivered to the waiter
                fut.set_exception(e)

    def call(self, fn, timeout_s: float):
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._q.put((fn, fut))
        return fut.result(timeout_s)

    def stop(self) -> None:
        self._q.put((None, None))


class MPIProcessGroup(dist.ProcessGroup):
    """A torch.distributed process group whose ops run on an mpi4py communicator."""

    def __init__(self, comm, *, timeout: timedelta, name: str = "mpi"):
        super().__init__(comm.Get_rank(), comm.Get_size())
        self.comm = comm
        self.timeout = timeout
        self._name = name
        self.MPI = _mpi()
        self._thread = _CallThread()

    def getBackendName(self) -> str:  # noqa: N802 - torch API
        return "hetero-mpi"

    def _set_group_name(self, name: str) -> None:
        self._group_name = name
        super()._set_group_name(name)

    @property
    def group_name(self) -> str:
        """The name torch.distributed gave this group."""
        return getattr(self, "_group_name", self._name)

    def _err(self, op: str, msg: str, peers=None) -> CommError:
        peers = [r for r in range(self.size()) if r != self.rank()] if peers is None else peers
        return CommError(op=op, group=self._name, ranks=peers, message=f"mpi: {msg}")

    def _block(self, op: str, fn, peers=None):
        """Run blocking MPI call ``fn`` on the group's thread; CommError on MPI error or timeout."""
        try:
            return self._thread.call(fn, self.timeout.total_seconds())
        except concurrent.futures.TimeoutError:
            raise self._err(op, f"timed out after {self.timeout.total_seconds():.0f}s", peers) from None
        except self.MPI.Exception as e:
            raise self._err(op, str(e), peers) from None

    def _wait(self, op: str, req, peers=None) -> None:
        """Wait for request ``req`` (blocking Wait on the group's thread, bounded by the timeout)."""
        self._block(op, req.Wait, peers)

    def _sync(self, op: str, post, peers=None, value=None) -> dist.Work:
        self._block(op, post, peers)
        fut = torch.futures.Future()
        fut.set_result(value)
        return _create_work_from_future(fut)

    # -- collectives ----------------------------------------------------------------------------------------
    def allreduce(self, tensors, opts=None):
        t = tensors[0]
        mop, avg = _reduce_op(self.MPI, opts.reduceOp if opts is not None else dist.ReduceOp.SUM)
        h = _Host(t, upcast=True)
        w = self._sync("all_reduce", lambda: self.comm.Allreduce(self.MPI.IN_PLACE, h.array(), mop), value=[t])
        if avg:
            h.h.div_(self.size()) if h.h.is_floating_point() else h.h.div_(self.size(), rounding_mode="floor")
        h.back()
        return w

    def allreduce_coalesced(self, tensors, opts=None):
        for t in tensors:
            self.allreduce([t], opts).wait()
        return _done(list(tensors))

    def broadcast(self, tensors, opts=None):
        t = tensors[0]
        root = opts.rootRank if opts is not None else 0
        h = _Host(t)
        peers = None if root == self.rank() else [root]
        w = self._sync("broadcast", lambda: self.comm.Bcast(as_bytes(h.h).numpy(), root=root), peers, [t])
        h.back()
        return w

    def reduce(self, tensors, opts=None):
        t = tensors[0]
        mop, avg = _reduce_op(self.MPI, opts.reduceOp)
        root = opts.rootRank
        h = _Host(t, upcast=True)
        a = h.array()
        if self.rank() == root:
            w = self._sync("reduce", lambda: self.comm.Reduce(self.MPI.IN_PLACE, a, mop, root=root), value=[t])
            if avg:
                h.h.div_(self.size()) if h.h.is_floating_point() else h.h.div_(self.size(), rounding_mode="floor")
            h.back()
            return w
        return self._sync("reduce", lambda: self.comm.Reduce(a, None, mop, root=root), [root], [t])

    def allgather(self, output_tensors, input_tensors, opts=None):
        outs, t = list(output_tensors[0]), input_tensors[0]
        counts = [o.numel() * o.element_size() for o in outs]
        displs = [sum(counts[:i]) for i in range(len(counts))]
        recv = torch.empty(sum(counts), dtype=torch.uint8)
        send = as_bytes(_Host(t).h)
        if len(set(counts)) == 1:  # equal sizes: plain Allgather (MPICH's Allgatherv path is much slower)
            self._sync("all_gather", lambda: self.comm.Allgather(send.numpy(), recv.numpy()))
        else:
            self._sync("all_gather", lambda: self.comm.Allgatherv(
                send.numpy(), [recv.numpy(), counts, displs, self.MPI.BYTE]))
        for o, c, d in zip(outs, counts, displs):
            _write(o, recv[d:d + c])
        return _done([outs])

    def all_gather_single(self, output, input, opts=None):  # noqa: A002 - torch API
        k = input.numel()
        flat = output.view(-1)
        return self.allgather([[flat[i * k:(i + 1) * k] for i in range(self.size())]], [input], opts)

    _allgather_base = all_gather_single

    def reduce_scatter(self, output_tensors, input_tensors, opts=None):
        out, ins = output_tensors[0], list(input_tensors[0])
        mop, avg = _reduce_op(self.MPI, opts.reduceOp if opts is not None else dist.ReduceOp.SUM)
        flat = torch.cat([i.reshape(-1) for i in ins])
        h = _Host(flat, upcast=True)
        counts = [i.numel() for i in ins]
        res = torch.empty(out.numel(), dtype=h.h.dtype)
        rh = _Host(res)
        self._sync("reduce_scatter", lambda: self.comm.Reduce_scatter(h.array(), rh.array(), counts, mop))
        if avg:
            res.div_(self.size()) if res.is_floating_point() else res.div_(self.size(), rounding_mode="floor")
        out.copy_(res.view(out.shape))
        return _done([out])

    def reduce_scatter_single(self, output, input, opts=None):  # noqa: A002 - torch API
        k = output.numel()
        flat = input.reshape(-1)
        return self.reduce_scatter([output.view(-1)], [[flat[i * k:(i + 1) * k] for i in range(self.size())]],
                                   opts)

    _reduce_scatter_base = reduce_scatter_single

    def gather(self, output_tensors, input_tensors, opts=None):
        t, root = input_tensors[0], opts.rootRank
        send = as_bytes(_Host(t).h)
        n = send.numel()
        if self.rank() == root:
            recv = torch.empty(n * self.size(), dtype=torch.uint8)
            w = self._sync("gather", lambda: self.comm.Gather(send.numpy(), recv.numpy(), root=root))
            for i, o in enumerate(output_tensors[0]):
                _write(o, recv[i * n:(i + 1) * n])
            return w
        return self._sync("gather", lambda: self.comm.Gather(send.numpy(), None, root=root), [root])

    def scatter(self, output_tensors, input_tensors, opts=None):
        out, root = output_tensors[0], opts.rootRank
        n = out.numel() * out.element_size()
        recv = torch.empty(n, dtype=torch.uint8)
        if self.rank() == root:
            send = torch.cat([as_bytes(_Host(i).h) for i in input_tensors[0]])
            w = self._sync("scatter", lambda: self.comm.Scatter(send.numpy(), recv.numpy(), root=root))
        else:
            w = self._sync("scatter", lambda: self.comm.Scatter(None, recv.numpy(), root=root), [root])
        _write(out, recv)
        return w

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):  # noqa: A002
        n = self.size()
        row_o = output[0].numel() * output.element_size() if output.dim() and output.shape[0] else 0
        row_i = input[0].numel() * input.element_size() if input.dim() and input.shape[0] else 0
        osz = list(output_split_sizes) or [output.shape[0] // n] * n
        isz = list(input_split_sizes) or [input.shape[0] // n] * n
        oc, ic = [s * row_o for s in osz], [s * row_i for s in isz]
        od, idp = [sum(oc[:i]) for i in range(n)], [sum(ic[:i]) for i in range(n)]
        send = as_bytes(_Host(input).h)
        recv = torch.empty(sum(oc), dtype=torch.uint8)
        w = self._sync("all_to_all", lambda: self.comm.Alltoallv(
            [send.numpy(), ic, idp, self.MPI.BYTE], [recv.numpy(), oc, od, self.MPI.BYTE]))
        _write(output, recv)
        return w

    alltoall_base = all_to_all_single

    def alltoall(self, output_tensors, input_tensors, opts=None):
        n = self.size()
        ic = [i.numel() * i.element_size() for i in input_tensors]
        oc = [o.numel() * o.element_size() for o in output_tensors]
        send = torch.cat([as_bytes(_Host(i).h) for i in input_tensors])
        recv = torch.empty(sum(oc), dtype=torch.uint8)
        od, idp = [sum(oc[:i]) for i in range(n)], [sum(ic[:i]) for i in range(n)]
        self._sync("all_to_all", lambda: self.comm.Alltoallv(
            [send.numpy(), ic, idp, self.MPI.BYTE], [recv.numpy(), oc, od, self.MPI.BYTE]))
        for o, c, d in zip(output_tensors, oc, od):
            _write(o, recv[d:d + c])
        return _done(list(output_tensors))

    def barrier(self, opts=None):
        return self._sync("barrier", lambda: self.comm.Barrier())

    # -- point to point -------------------------------------------------------------------------------------
    def send(self, tensors, dstRank, tag=0):  # noqa: N803 - torch API
        h = _Host(tensors[0])
        req = self.comm.Isend(as_bytes(h.h).numpy(), dest=dstRank, tag=tag)
        return _ReqWork(self, "send", req, [dstRank], keep=h)

    def recv(self, tensors, srcRank, tag=0):  # noqa: N803 - torch API
        h = _Host(tensors[0])
        req = self.comm.Irecv(as_bytes(h.h).numpy(), source=srcRank, tag=tag)
        return _ReqWork(self, "recv", req, [srcRank], keep=h, then=h.back)

    def recv_anysource(self, tensors, tag=0):
        h = _Host(tensors[0])
        req = self.comm.Irecv(as_bytes(h.h).numpy(), source=self.MPI.ANY_SOURCE, tag=tag)
        return _ReqWork(self, "recv", req, None, keep=h, then=h.back)

    def shutdown(self) -> None:
        self._thread.stop()
        try:
            if self.comm != self.MPI.COMM_WORLD:
                self.comm.Free()
        except Exception:
            pass


class _ReqWork(dist.Work):
    """Work of one MPI request; ``wait`` polls it against the group timeout."""

    def __init__(self, pg: MPIProcessGroup, op: str, req, peers, keep, then=None):
        super().__init__()
        self._pg, self._op, self._req, self._peers, self._keep, self._then = pg, op, req, peers, keep, then
        self._done = False

    def wait(self, timeout=None) -> bool:
        if not self._done:
            self._pg._wait(self._op, self._req, self._peers)
            if self._then is not None:
                self._then()
            self._done = True
        return True

    def is_completed(self) -> bool:
        return self._done

    def get_future(self):
        fut = torch.futures.Future()
        try:
            self.wait()
            fut.set_result([self._keep.t])
        except Exception as e:
            fut.set_exception(e)
        return fut


def _done(value) -> dist.Work:
    fut = torch.futures.Future()
    fut.set_result(value)
    return _create_work_from_future(fut)


def _write(o: torch.Tensor, b: torch.Tensor) -> None:
    """Copy uint8 ``b`` into the bytes of ``o`` (any device, any layout)."""
    if o.device.type == "cpu" and o.is_contiguous():
        as_bytes(o).copy_(b)
        return
    tmp = torch.empty(o.shape, dtype=o.dtype)
    as_bytes(tmp).copy_(b)
    o.copy_(tmp)


# -- the hetero-mpi backend -------------------------------------------------------------------------------
def create_mpi_pg(opts, backend_options=None) -> MPIProcessGroup:
    """Creator registered as ``hetero-mpi``: a group over ``opts.global_ranks_in_group`` of MPI_COMM_WORLD
    (torch global rank == MPI world rank, as :func:`init_mpi_process_group` arranges)."""
    MPI = _mpi()
    world = MPI.COMM_WORLD
    ranks = list(opts.global_ranks_in_group) or list(range(opts.group_size))
    if max(ranks) >= world.Get_size():
        raise CommError(op="init", group=str(opts.group_id), ranks=ranks, message=f"MPI world has "
                        f"{world.Get_size()} processes but the group names ranks up to {max(ranks)}; start all "
                        "ranks with one mpiexec")
    if ranks == list(range(world.Get_size())):
        comm = world.Dup()
    else:
        comm = world.Create_group(world.Get_group().Incl(ranks))
    if comm.Get_rank() != opts.group_rank:
        raise CommError(op="init", group=str(opts.group_id), ranks=ranks, message=f"torch group rank "
                        f"{opts.group_rank} is MPI rank {comm.Get_rank()}; torch ranks must equal MPI ranks")
    return MPIProcessGroup(comm, timeout=opts.timeout, name=str(opts.group_id) or "mpi")


def init_mpi_process_group(*, timeout: timedelta) -> None:
    """``dist.init_process_group("hetero-mpi")`` with rank and size from MPI and a TCPStore whose address
    rank 0 broadcasts over MPI (so ``new_group`` and store-based helpers work)."""
    MPI = _mpi()
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    env = launcher_rank_size()
    if env is not None and env != (rank, size):
        raise CommError(op="init", group="hetero-mpi", ranks=[], message=f"launcher says rank/size {env}, "
                        f"MPI says {(rank, size)}")
    addr = None
    store = None
    if rank == 0:
        host = os.environ.get("MASTER_ADDR") or socket.gethostbyname(socket.gethostname())
        store = dist.TCPStore(host, 0, size, True, timeout=timeout, wait_for_workers=False)
        addr = (host, store.port)
    addr = world.bcast(addr, root=0)
    if rank != 0:
        store = dist.TCPStore(addr[0], addr[1], size, False, timeout=timeout)
    dist.init_process_group("hetero-mpi", store=store, rank=rank, world_size=size, timeout=timeout)


# -- the MPI bridge of a hetero group ---------------------------------------------------------------------
def bridge_group(*, store: dist.Store, topo, timeout: timedelta) -> SubGroup | None:
    """Called on every rank of a ``hetero`` group with HETERO_BRIDGE=mpi: publishes this rank's MPI world rank
    and, on type leaders, returns the MPI sub-group of the leaders (None elsewhere)."""
    MPI = _mpi()
    world = MPI.COMM_WORLD
    if world.Get_size() < topo.size:
        raise CommError(op="init", group="bridge", ranks=list(topo.leaders), message=f"HETERO_BRIDGE=mpi needs "
                        f"all {topo.size} ranks started by one mpiexec; this MPI world has {world.Get_size()} "
                        "process(es)")
    store.set(f"hetero/mpi_rank/{topo.rank}", str(world.Get_rank()))
    if topo.rank not in topo.leaders:
        return None
    keys = [f"hetero/mpi_rank/{r}" for r in topo.leaders]
    store.wait(keys, timeout)
    mpi_ranks = [int(store.get(k)) for k in keys]
    comm = world.Create_group(world.Get_group().Incl(mpi_ranks))
    pg = MPIProcessGroup(comm, timeout=timeout, name="bridge")
    return SubGroup(name="bridge", library="mpi", ranks=tuple(topo.leaders), rank=comm.Get_rank(), backend=pg)
