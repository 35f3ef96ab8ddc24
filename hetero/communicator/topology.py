"""Topology of a ``hetero`` process group: which rank is which device type, and which library carries which group.

Every rank declares its device type (``HETERO_DEVICE_TYPE`` from ``hetero-run``, or discovery from the torch
device) and its torch device kind (``HETERO_DEVICE``: ``cuda:0``, ``cpu``, ...). The ranks exchange these through
the rendezvous store; the result, a :class:`Topology`, says for every type its ranks, its leader (lowest rank) and
its native collective library, chosen by what this torch build and machine actually have:

    cuda -> nccl   xpu -> xccl   npu -> hccl (torch_npu registered)   cpu -> gloo

A kind whose library is missing falls back to gloo over host memory, and the fallback is named in the map that
``describe()`` returns and logged at init; nothing falls back silently.

    from hetero.communicator.topology import CommConfig, local_declaration
    cfg = CommConfig(timeout_s=60.0, bridge="gloo")
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist

from hetero.config import ConfigError, check

BRIDGES = ("gloo", "mpi")


@dataclass(frozen=True, kw_only=True)
class CommConfig:
    """Settings of one ``hetero`` process group (read from the environment by :meth:`from_env`)."""

    timeout_s: float = 300.0
    """Seconds any collective, point-to-point op or rendezvous step may wait before raising CommError."""
    bridge: Literal["gloo", "mpi"] = "gloo"
    """Library between device types: gloo over host memory, or MPI through mpi4py (HETERO_BRIDGE)."""
    chunk_bytes: int = 4 << 20
    """Bytes per staging chunk when a device tensor crosses to host memory (copy of chunk i+1 overlaps send of i)."""
    pipeline_bytes: int = 1 << 20
    """Chunk size of the pipelined hierarchical all_reduce on host tensors (in-type and bridge steps overlap)."""
    check_every: int = 64
    """Exchange (op, numel, dtype, root) before the first call of each op on a group and every Nth call after, and
    raise on mismatch (1: every call; 0: never). Every rank issues the same calls in the same order, so all ranks
    check the same calls; a check costs one small all_gather (HETERO_CHECK_SIZES=N, or always / off)."""
    hierarchical: bool = True
    """Reduce/gather inside each type first and cross types once per type (HETERO_HIERARCHICAL=0: flat host ops)."""

    def __post_init__(self):
        check(self.timeout_s > 0, "timeout_s", f"must be > 0, got {self.timeout_s}")
        check(self.bridge in BRIDGES, "bridge", f"must be one of {', '.join(BRIDGES)}, got {self.bridge!r}")
        check(self.chunk_bytes >= 4096, "chunk_bytes", f"must be >= 4096, got {self.chunk_bytes}")
        check(self.pipeline_bytes >= 4096, "pipeline_bytes", f"must be >= 4096, got {self.pipeline_bytes}")
        check(self.check_every >= 0, "check_every", f"must be >= 0, got {self.check_every}")

    @property
    def timeout(self) -> timedelta:
        """``timeout_s`` as a timedelta."""
        return timedelta(seconds=self.timeout_s)

    @classmethod
    def from_env(cls, *, timeout: timedelta | None = None, env: dict[str, str] | None = None) -> CommConfig:
        """Config from HETERO_BRIDGE, HETERO_CHUNK_BYTES, HETERO_PIPELINE_BYTES, HETERO_CHECK_SIZES,
        HETERO_HIERARCHICAL; bad values
        raise ConfigError naming the variable."""
        env = os.environ if env is None else env
        kw: dict = {}
        if timeout is not None:
            kw["timeout_s"] = timeout.total_seconds()
        if "HETERO_BRIDGE" in env:
            kw["bridge"] = env["HETERO_BRIDGE"].strip().lower()
            check(kw["bridge"] in BRIDGES, "HETERO_BRIDGE", f"must be gloo or mpi, got {env['HETERO_BRIDGE']!r}")
        if "HETERO_CHUNK_BYTES" in env:
            kw["chunk_bytes"] = _env_int(env, "HETERO_CHUNK_BYTES")
        if "HETERO_PIPELINE_BYTES" in env:
            kw["pipeline_bytes"] = _env_int(env, "HETERO_PIPELINE_BYTES")
        if "HETERO_CHECK_SIZES" in env:
            v = env["HETERO_CHECK_SIZES"].strip().lower()
            words = {"always": 1, "true": 1, "on": 1, "off": 0, "false": 0}
            check(v in words or (v.isdigit()), "HETERO_CHECK_SIZES",
                  f"must be always, off or a call interval N >= 0, got {env['HETERO_CHECK_SIZES']!r}")
            kw["check_every"] = words[v] if v in words else int(v)
        if "HETERO_HIERARCHICAL" in env:
            v = env["HETERO_HIERARCHICAL"].strip().lower()
            check(v in ("0", "1", "true", "false"), "HETERO_HIERARCHICAL", f"must be 0 or 1, got {env['HETERO_HIERARCHICAL']!r}")
            kw["hierarchical"] = v in ("1", "true")
        try:
            return cls(**kw)
        except ConfigError as e:
            raise e.under("communicator") from None


def _env_int(env, var: str) -> int:
    try:
        return int(env[var])
    except ValueError:
        raise ConfigError(var, f"must be an integer, got {env[var]!r}") from None


@dataclass(frozen=True, kw_only=True)
class Declaration:
    """What one rank says about itself at init."""

    device_type: str
    """Device type id (catalog id or a custom id such as ``cpu-slow``)."""
    device_kind: str
    """torch device kind of this rank's compute tensors: cuda, xpu, npu, cpu, ..."""
    library: str = "gloo"
    """Native library this rank can use for its kind (from :func:`native_backend`)."""
    reason: str = "cpu tensors"
    """Why that library."""


def local_declaration(device_type: str | None = None, device: str | None = None) -> Declaration:
    """This rank's declaration: ``device_type`` / ``device`` arguments, else HETERO_DEVICE_TYPE / HETERO_DEVICE,
    else discovery from the torch device (the accelerator torch sees, or cpu)."""
    dev = device or os.environ.get("HETERO_DEVICE") or ""
    if dev:
        try:
            kind = torch.device(dev).type
        except RuntimeError:
            raise ConfigError("HETERO_DEVICE", f"not a torch device string: {dev!r}") from None
    else:
        acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        kind = acc.type if acc is not None else "cpu"
    dtype_id = device_type or os.environ.get("HETERO_DEVICE_TYPE") or ""
    if not dtype_id:
        dtype_id = _discovered_type(kind)
    check(all(c not in dtype_id for c in "/\n"), "HETERO_DEVICE_TYPE", f"must not contain '/' or newlines: {dtype_id!r}")
    lib, why = native_backend(kind)
    return Declaration(device_type=dtype_id, device_kind=kind, library=lib, reason=why)


def _discovered_type(kind: str) -> str:
    """A type id from the torch device name, matched against the catalog when possible."""
    if kind == "cpu":
        return "cpu"
    try:
        name = torch.get_device_module(kind).get_device_name()
    except Exception:
        return kind
    try:
        from hetero.cluster.catalog import resolve

        return resolve(name).id
    except Exception:
        return name.strip().lower().replace(" ", "_") or kind


def native_backend(kind: str) -> tuple[str, str]:
    """(library, reason) for the collectives inside one device type of torch device ``kind``, by what is
    available here; ``gloo`` with the reason when the native one is missing."""
    if kind == "cpu":
        return "gloo", "cpu tensors"
    want = {"cuda": "nccl", "xpu": "xccl", "npu": "hccl", "hpu": "hccl"}.get(kind)
    if want == "nccl" and dist.is_nccl_available() and torch.cuda.is_available():
        return "nccl", "cuda device, nccl built in"
    if want == "xccl" and getattr(dist, "is_xccl_available", lambda: False)() and torch.xpu.is_available():
        return "xccl", "xpu device, xccl built in"
    if want == "hccl" and "HCCL" in dist.Backend._plugins:
        return "hccl", f"{kind} device, hccl registered by the vendor plugin"
    why = f"no {want} in this torch build" if want else f"no known native library for {kind!r}"
    return "gloo", f"host-staged fallback: {why}"


@dataclass(frozen=True, kw_only=True)
class TypeGroup:
    """The ranks of one device type inside a group."""

    device_type: str
    """Device type id."""
    device_kind: str
    """torch device kind shared by these ranks."""
    ranks: tuple[int, ...]
    """Group ranks of this type, ascending; ``ranks[0]`` is the leader."""
    library: str
    """Library carrying collectives inside this type (nccl, xccl, hccl, gloo)."""
    reason: str
    """Why this library was chosen."""

    @property
    def leader(self) -> int:
        """The rank that exchanges with the other types."""
        return self.ranks[0]


@dataclass(frozen=True, kw_only=True)
class Topology:
    """Device types of all ranks of one group and the sub-groups built from them."""

    rank: int
    """This process's rank in the group."""
    size: int
    """Group size."""
    rank_types: tuple[str, ...]
    """Device type id of every group rank."""
    types: tuple[TypeGroup, ...] = field(default=())
    """One entry per device type, ordered by leader rank."""

    @classmethod
    def build(cls, *, rank: int, declarations: list[Declaration]) -> Topology:
        """Group ranks by device type; every rank of one type must use the same torch device kind."""
        by_type: dict[str, list[int]] = {}
        for r, d in enumerate(declarations):
            by_type.setdefault(d.device_type, []).append(r)
        types = []
        for tid, ranks in by_type.items():
            kinds = {declarations[r].device_kind for r in ranks}
            if len(kinds) != 1:
                detail = ", ".join(f"rank {r}: {declarations[r].device_kind}" for r in ranks)
                raise ConfigError("HETERO_DEVICE", f"ranks of device type {tid!r} use different torch devices "
                                  f"({detail}); give each kind its own device type id")
            kind = kinds.pop()
            libs = {declarations[r].library for r in ranks}
            if len(libs) != 1:
                detail = ", ".join(f"rank {r}: {declarations[r].library}" for r in ranks)
                raise ConfigError("HETERO_DEVICE_TYPE", f"ranks of device type {tid!r} have different native "
                                  f"libraries available ({detail}); install the same torch build on all of them")
            lib, why = declarations[ranks[0]].library, declarations[ranks[0]].reason
            types.append(TypeGroup(device_type=tid, device_kind=kind, ranks=tuple(ranks), library=lib, reason=why))
        return cls(rank=rank, size=len(declarations), rank_types=tuple(d.device_type for d in declarations),
                   types=tuple(types))

    @property
    def mine(self) -> TypeGroup:
        """The type group this rank belongs to."""
        return self.types[self.type_index(self.rank)]

    def type_index(self, rank: int) -> int:
        """Index into ``types`` of the type of group rank ``rank``."""
        for i, t in enumerate(self.types):
            if rank in t.ranks:
                return i
        raise ValueError(f"rank {rank} is not in this group of size {self.size}")

    @property
    def leaders(self) -> tuple[int, ...]:
        """Leader rank of every type, in ``types`` order (the bridge group's members)."""
        return tuple(t.leader for t in self.types)

    @property
    def single_type(self) -> bool:
        """True when all ranks are one device type (every op goes straight to the native library)."""
        return len(self.types) == 1


def exchange_declarations(store: dist.Store, *, rank: int, size: int, mine: Declaration,
                          timeout: timedelta) -> list[Declaration]:
    """Publish this rank's declaration in ``store`` and read everyone's; a rank that does not show up within
    ``timeout`` raises TimeoutError naming the missing ranks."""
    store.set(f"hetero/decl/{rank}", json.dumps({"type": mine.device_type, "kind": mine.device_kind,
                                                      "library": mine.library, "reason": mine.reason}))
    keys = [f"hetero/decl/{r}" for r in range(size)]
    try:
        store.wait(keys, timeout)
    except Exception as e:
        missing = [r for r in range(size) if not store.check([keys[r]])]
        raise TimeoutError(f"hetero init: ranks {missing} did not declare their device type within "
                           f"{timeout.total_seconds():.0f}s ({e})") from None
    out = []
    for k in keys:
        d = json.loads(store.get(k))
        out.append(Declaration(device_type=d["type"], device_kind=d["kind"], library=d["library"],
                               reason=d["reason"]))
    return out
