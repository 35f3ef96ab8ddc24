"""hetero.communicator: a torch.distributed backend whose ranks may sit on different kinds of devices.

Importing this package registers two backends with ``torch.distributed.Backend.register_backend``:

* ``hetero``: one native group per device type (nccl / xccl / hccl / gloo by availability), a host-staged bridge
  between types (gloo, or MPI with HETERO_BRIDGE=mpi), hierarchical collectives across types;
* ``hetero-mpi``: a process group over mpi4py, for scripts started by ``mpiexec``.

A script needs one call (``hetero.init(plan)`` makes it for you)::

    import hetero.communicator as hc
    hc.init_process_group()                 # env:// rendezvous from torchrun / hetero-run variables
    print(hc.describe())                    # which library carries which group
    dist.all_reduce(t)                      # and DDP, FSDP2, pipelining ... as usual
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import torch.distributed as dist

from hetero.communicator.backend import HeteroProcessGroup
from hetero.communicator.errors import CommError
from hetero.communicator.mpi import MPIProcessGroup, create_mpi_pg, init_mpi_process_group
from hetero.communicator.topology import CommConfig

__all__ = ["CommConfig", "CommError", "HeteroOptions", "HeteroProcessGroup", "MPIProcessGroup", "describe",
           "init_process_group"]

DEVICES = ["cpu", "cuda", "xpu"]


class HeteroOptions:
    """``pg_options`` of a ``hetero`` group: this rank's declaration and the communicator config."""

    def __init__(self, *, device_type: str | None = None, device: str | None = None,
                 config: CommConfig | None = None):
        self.device_type = device_type
        self.device = device
        self.config = config


def _create_hetero_pg(opts, backend_options=None) -> HeteroProcessGroup:
    o = backend_options if isinstance(backend_options, HeteroOptions) else HeteroOptions()
    device_type, device, cfg = o.device_type, o.device, o.config
    if dist.is_initialized():  # a sub-group inherits this rank's declaration and config from the default group
        default = dist.distributed_c10d._get_default_group()
        if isinstance(default, HeteroProcessGroup):
            device_type = device_type or default.topo.rank_types[default.rank()]
            device = device or default.topo.mine.device_kind
            cfg = cfg or CommConfig(**{**default.cfg.__dict__, "timeout_s": opts.timeout.total_seconds()})
    cfg = cfg or CommConfig.from_env(timeout=opts.timeout)
    return HeteroProcessGroup(opts.store, opts.group_rank, opts.group_size, cfg, name=str(opts.group_id),
                              device_type=device_type, device=device)


def _register() -> None:
    if "HETERO" not in dist.Backend._plugins:
        dist.Backend.register_backend("hetero", _create_hetero_pg, extended_api=True, devices=DEVICES)
    if "HETERO-MPI" not in dist.Backend._plugins:
        dist.Backend.register_backend("hetero-mpi", create_mpi_pg, extended_api=True, devices=DEVICES)


_register()


def init_process_group(*, backend: Literal["hetero", "hetero-mpi"] = "hetero", device_type: str | None = None,
                       device: str | None = None, timeout: timedelta = timedelta(seconds=300),
                       init_method: str | None = None, rank: int | None = None, world_size: int | None = None,
                       store: dist.Store | None = None, config: CommConfig | None = None) -> dist.ProcessGroup:
    """Initialise the default process group over ``hetero`` (stable signature; ``hetero.init`` calls it).

    Args (all keyword-only):
        backend: ``hetero`` (default) or ``hetero-mpi`` (ranks from ``mpiexec``; init_method/rank/world_size
            /store must then be left unset).
        device_type: this rank's device type id; default HETERO_DEVICE_TYPE, else discovered.
        device: this rank's torch device string (``cuda:0``, ``cpu``); default HETERO_DEVICE, else discovered.
        timeout: limit for rendezvous and for every collective / point-to-point op (then CommError).
        init_method, rank, world_size, store: as in ``torch.distributed.init_process_group``; default env://
            (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from torchrun / hetero-run).
        config: communicator settings; default ``CommConfig.from_env`` (HETERO_BRIDGE, HETERO_CHECK_SIZES, ...).

    Returns the default group (a HeteroProcessGroup or MPIProcessGroup). Raises CommError / ConfigError with
    the reason when a rank does not arrive, a device type is inconsistent, or a library is missing.
    """
    if backend == "hetero-mpi":
        if any(v is not None for v in (init_method, rank, world_size, store)):
            raise ValueError("hetero-mpi takes rank, size and rendezvous from MPI; leave init_method, rank, "
                             "world_size and store unset")
        init_mpi_process_group(timeout=timeout)
        return dist.group.WORLD
    if backend != "hetero":
        raise ValueError(f"backend must be 'hetero' or 'hetero-mpi', got {backend!r}")
    cfg = config or CommConfig.from_env(timeout=timeout)
    kw = {}
    if init_method is not None:
        kw["init_method"] = init_method
    if store is not None:
        kw["store"] = store
    if rank is not None:
        kw["rank"] = rank
    if world_size is not None:
        kw["world_size"] = world_size
    dist.init_process_group("hetero", timeout=timeout,
                            pg_options=HeteroOptions(device_type=device_type, device=device, config=cfg), **kw)
    return dist.group.WORLD


def describe(group: dist.ProcessGroup | None = None) -> dict:
    """Which library carries which sub-group of ``group`` (default: the default group), as logged at init:
    ``{"backend": "hetero", "rank_types": [...], "groups": [{"group", "ranks", "device", "library",
    "reason"}, ...]}``. Plain torch groups are described by their backend name."""
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    if isinstance(pg, HeteroProcessGroup):
        return pg.describe()
    if isinstance(pg, MPIProcessGroup):
        return {"backend": "hetero-mpi", "rank": pg.rank(), "size": pg.size(),
                "groups": [{"group": "world", "ranks": list(range(pg.size())), "device": "cpu",
                            "library": "mpi", "reason": "hetero-mpi backend"}]}
    name = dist.get_backend(pg)
    return {"backend": name, "rank": pg.rank(), "size": pg.size(),
            "groups": [{"group": "world", "ranks": list(range(pg.size())), "device": "", "library": name,
                        "reason": "plain torch.distributed backend"}]}
