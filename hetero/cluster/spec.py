"""The cluster model: device types, links, nodes and the validated :class:`Cluster` read from YAML.

A cluster file names nodes, the device type and count on each (a catalog id or alias, or a custom type declared
under ``device_types:``), the intra-node fabric and the inter-node network::

    device_types:                       # optional: types the catalog lacks, or scaled copies of catalog types
      - {id: slow-cpu, like: cpu, scale: 0.5}
    nodes:
      - name: a100                      # with repeat: N the node is copied N times as a100-0 .. a100-{N-1}
        repeat: 2
        devices: {type: A100-SXM4-80GB, count: 8}
        intra_link: {fabric: nvlink3, bandwidth_gbs: 300}
      - name: mi250-0
        devices: {type: MI250X, count: 8}
    network: {bandwidth_gbps: 200, latency_us: 5}
    links:                              # optional per-pair overrides of the network
      - {nodes: [a100-0, mi250-0], bandwidth_gbps: 100, latency_us: 10}

    python -c "from hetero.cluster import Cluster; print(Cluster.from_yaml('examples/clusters/a100_v100.yaml'))"

Units inside the objects are SI: bytes, bytes/s, FLOP/s, seconds. YAML uses the units in the key names.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hetero.config import ConfigError, build, check, join, load_yaml, under_file

GIB = 1024**3
DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")


@dataclass(frozen=True, kw_only=True)
class DeviceType:
    """One kind of accelerator (or CPU), with the numbers the predictor starts from."""

    id: str
    """Catalog id (``nvidia_a100_sxm4_80gb``) or the user's own id for a custom type."""
    name: str = ""
    """Human-readable name."""
    vendor: str = ""
    """Vendor name."""
    memory_bytes: int
    """Device memory capacity in bytes."""
    memory_bandwidth: float
    """Peak device-memory bandwidth in bytes/s."""
    peak_flops: dict[str, float]
    """Dense peak FLOP/s by dtype (``fp32``, ``tf32``, ``bf16``, ``fp16``, ``fp8``)."""
    torch_device: str = "cuda"
    """torch device kind: cuda, xpu, npu, hpu, mlu, xla or cpu."""
    dist_backend: str = "gloo"
    """Native torch.distributed backend for this type (nccl, hccl, xccl, gloo, ...)."""
    intra_bandwidth: float = 16e9
    """Per-device unidirectional scale-up bandwidth inside a node, bytes/s."""
    inter_bandwidth: float = 12.5e9
    """Per-device scale-out (NIC) bandwidth, bytes/s."""
    matmul_efficiency: float = 0.75
    """Prior fraction of peak that large GEMMs reach (measured where the catalog has it)."""

    def __post_init__(self):
        check(bool(self.id), "id", "must not be empty")
        check(self.memory_bytes > 0, "memory_bytes", "must be > 0")
        check(self.memory_bandwidth > 0, "memory_bandwidth", "must be > 0")
        check(bool(self.peak_flops), "peak_flops", "needs at least one dtype")
        for k, v in self.peak_flops.items():
            check(k in DTYPES, f"peak_flops.{k}", f"unknown dtype (use {', '.join(DTYPES)})")
            check(v > 0, f"peak_flops.{k}", "must be > 0")
        check(0 < self.matmul_efficiency <= 1, "matmul_efficiency", "must be in (0, 1]")

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``, falling back along bf16 -> fp16 -> tf32 -> fp32 where a dtype is
        missing (e.g. V100 has no bf16 tensor cores: PyTorch runs bf16 there at roughly fp32 speed)."""
        order = {"fp8": ["fp8", "bf16", "fp16", "fp32"], "bf16": ["bf16", "fp16", "fp32"],
                 "fp16": ["fp16", "bf16", "fp32"], "tf32": ["tf32", "fp32"], "fp32": ["fp32", "tf32"]}
        for d in order.get(dtype, [dtype]):
            if d in self.peak_flops:
                return self.peak_flops[d]
        return max(self.peak_flops.values())

    def scaled(self, *, id: str, scale: float, name: str = "") -> DeviceType:
        """A copy ``scale`` times as fast (FLOP/s and memory bandwidth), e.g. an emulated slower device."""
        return dataclasses.replace(
            self, id=id, name=name or f"{self.name or self.id} x{scale:g}",
            peak_flops={k: v * scale for k, v in self.peak_flops.items()},
            memory_bandwidth=self.memory_bandwidth * scale)


@dataclass(frozen=True, kw_only=True)
class Link:
    """A communication link class: bandwidth and latency (alpha-beta model)."""

    fabric: str = "ethernet"
    """Name of the fabric (nvlink3, pcie4, infinity-fabric, hccs, roce, ib, ethernet, ...)."""
    bandwidth: float
    """Unidirectional bandwidth per device, bytes/s."""
    latency: float = 5e-6
    """One-way latency, seconds."""

    def __post_init__(self):
        check(self.bandwidth > 0, "bandwidth", "must be > 0")
        check(self.latency >= 0, "latency", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class Node:
    """A host with ``count`` devices of one type joined by ``intra_link``."""

    name: str
    """Unique node name."""
    device_type: DeviceType
    """The type of every device on this node."""
    count: int
    """Number of devices (ranks) on this node."""
    intra_link: Link
    """Link between devices of this node."""


# ----------------------------------------------------------------------------- YAML schema (validated input)

@dataclass(kw_only=True)
class _DeviceTypeYaml:
    """A custom device type in a cluster file."""

    id: str
    """Name nodes use in ``devices.type``."""
    like: str | None = None
    """Catalog id or alias to copy unspecified numbers from."""
    scale: float = 1.0
    """Speed factor applied to ``like``'s FLOP/s and memory bandwidth."""
    name: str = ""
    """Human-readable name."""
    memory_gib: float | None = None
    """Memory capacity, GiB."""
    memory_bandwidth_gbs: float | None = None
    """Memory bandwidth, GB/s."""
    peak_tflops: dict[str, float] | None = None
    """Dense peak TFLOP/s by dtype."""
    torch_device: str | None = None
    """torch device kind."""
    dist_backend: str | None = None
    """Native torch.distributed backend."""
    matmul_efficiency: float | None = None
    """Fraction of peak large GEMMs reach."""

    def __post_init__(self):
        check(self.scale > 0, "scale", "must be > 0")
        if self.like is None:
            for key in ("memory_gib", "memory_bandwidth_gbs", "peak_tflops"):
                check(getattr(self, key) is not None, key, "required when the type has no `like:`")


@dataclass(kw_only=True)
class _DevicesYaml:
    type: str
    """Device type: catalog id or alias, or a custom id from device_types."""
    count: int
    """Devices on the node."""

    def __post_init__(self):
        check(self.count > 0, "count", "must be > 0")


@dataclass(kw_only=True)
class _LinkYaml:
    fabric: str = ""
    """Fabric name."""
    bandwidth_gbs: float | None = None
    """Unidirectional bandwidth per device, GB/s (bytes)."""
    latency_us: float = 2.0
    """Latency, microseconds."""

    def __post_init__(self):
        if self.bandwidth_gbs is not None:
            check(self.bandwidth_gbs > 0, "bandwidth_gbs", "must be > 0")
        check(self.latency_us >= 0, "latency_us", "must be >= 0")


@dataclass(kw_only=True)
class _NodeYaml:
    name: str
    """Node name (a prefix when repeat > 1)."""
    devices: _DevicesYaml
    """Type and count of devices."""
    intra_link: _LinkYaml | None = None
    """Intra-node fabric; defaults to the device type's scale-up bandwidth."""
    repeat: int = 1
    """Number of identical nodes this entry stands for."""

    def __post_init__(self):
        check(bool(self.name), "name", "must not be empty")
        check(self.repeat > 0, "repeat", "must be > 0")


@dataclass(kw_only=True)
class _NetworkYaml:
    bandwidth_gbps: float
    """Inter-node bandwidth per node pair, Gb/s (bits)."""
    latency_us: float = 5.0
    """Inter-node latency, microseconds."""
    fabric: str = "ethernet"
    """Fabric name."""

    def __post_init__(self):
        check(self.bandwidth_gbps > 0, "bandwidth_gbps", "must be > 0")
        check(self.latency_us >= 0, "latency_us", "must be >= 0")


@dataclass(kw_only=True)
class _PairLinkYaml(_NetworkYaml):
    nodes: list[str]
    """The two node names this override applies to."""

    def __post_init__(self):
        super().__post_init__()
        check(len(self.nodes) == 2, "nodes", "must name exactly two nodes")


@dataclass(kw_only=True)
class _ClusterYaml:
    nodes: list[_NodeYaml]
    """The nodes."""
    network: _NetworkYaml | None = None
    """Inter-node network (required with more than one node)."""
    links: list[_PairLinkYaml] = field(default_factory=list)
    """Per-pair overrides of the network."""
    device_types: list[_DeviceTypeYaml] = field(default_factory=list)
    """Custom device types."""
    name: str = ""
    """Cluster name."""

    def __post_init__(self):
        check(len(self.nodes) > 0, "nodes", "must list at least one node")


# ----------------------------------------------------------------------------- the Cluster

@dataclass(frozen=True, kw_only=True)
class Cluster:
    """A validated cluster: nodes (each of one device type), the inter-node network and per-pair overrides.

    Ranks are numbered node by node in file order; ``devices()`` lists them."""

    name: str = ""
    """Cluster name."""
    nodes: tuple[Node, ...]
    """Nodes in rank order."""
    network: Link
    """Default link between two nodes (per node pair)."""
    pair_links: dict[tuple[str, str], Link] = field(default_factory=dict)
    """Overrides of ``network`` keyed by sorted node-name pairs."""
    custom_types: tuple[dict, ...] = ()
    """The ``device_types:`` entries as written, kept for ``to_yaml``."""

    # -- construction
    @classmethod
    def from_yaml(cls, path: str | Path) -> Cluster:
        """Read and validate a cluster file; errors are ConfigError naming the file and key path."""
        data = load_yaml(path)
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise under_file(path, e) from None

    @classmethod
    def from_dict(cls, data: Any) -> Cluster:
        """Validate a parsed cluster mapping (the YAML schema in the module docstring)."""
        from hetero.cluster.catalog import resolve

        raw = build(_ClusterYaml, data)
        types: dict[str, DeviceType] = {}
        for i, t in enumerate(raw.device_types):
            p = join(join("device_types", i), "")[:-1]
            base = resolve(t.like, join(p, "like")) if t.like else None
            try:
                dt = _custom_type(t, base)
            except ConfigError as e:
                raise e.under(p) from None
            check(t.id not in types, join(p, "id"), f"duplicate device type {t.id!r}")
            types[t.id] = dt
        nodes: list[Node] = []
        for i, n in enumerate(raw.nodes):
            p = join("nodes", i)
            dtype = types.get(n.devices.type) or resolve(n.devices.type, join(p, "devices.type"))
            il = n.intra_link or _LinkYaml()
            intra = Link(fabric=il.fabric or "default",
                         bandwidth=(il.bandwidth_gbs * 1e9) if il.bandwidth_gbs else dtype.intra_bandwidth,
                         latency=il.latency_us * 1e-6)
            names = [n.name] if n.repeat == 1 else [f"{n.name}-{k}" for k in range(n.repeat)]
            for name in names:
                nodes.append(Node(name=name, device_type=dtype, count=n.devices.count, intra_link=intra))
        seen: set[str] = set()
        for nd in nodes:
            check(nd.name not in seen, "nodes", f"duplicate node name {nd.name!r}")
            seen.add(nd.name)
        if raw.network is None:
            check(len(nodes) == 1, "network", "missing required key (the cluster has more than one node)")
            network = Link(fabric="none", bandwidth=nodes[0].device_type.inter_bandwidth, latency=5e-6)
        else:
            network = _net(raw.network)
        pairs: dict[tuple[str, str], Link] = {}
        for i, lk in enumerate(raw.links):
            for j, nm in enumerate(lk.nodes):
                check(nm in seen, f"links[{i}].nodes[{j}]", f"names missing node {nm!r} (nodes: {_few(seen)})")
            pairs[tuple(sorted(lk.nodes))] = _net(lk)
        return cls(name=raw.name, nodes=tuple(nodes), network=network, pair_links=pairs,
                   custom_types=tuple(_plain(t) for t in raw.device_types))

    # -- queries
    @property
    def world_size(self) -> int:
        """Total number of devices (ranks)."""
        return sum(n.count for n in self.nodes)

    def devices(self) -> list[tuple[int, Node, int]]:
        """``(rank, node, local_index)`` for every device in rank order."""
        return list(self._devices)

    @functools.cached_property
    def _devices(self) -> tuple[tuple[int, Node, int], ...]:
        # computed once per Cluster (frozen, so it cannot change); the planner and predictor call devices() often
        out, r = [], 0
        for n in self.nodes:
            for k in range(n.count):
                out.append((r, n, k))
                r += 1
        return tuple(out)

    @functools.cached_property
    def _node_index(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def device_types(self) -> dict[str, DeviceType]:
        """Distinct device types by id, in order of first appearance."""
        return dict(self._device_types)

    @functools.cached_property
    def _device_types(self) -> dict[str, DeviceType]:
        out: dict[str, DeviceType] = {}
        for n in self.nodes:
            out.setdefault(n.device_type.id, n.device_type)
        return out

    def type_counts(self) -> dict[str, int]:
        """Number of devices of each type."""
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.device_type.id] = out.get(n.device_type.id, 0) + n.count
        return out

    def rank_types(self) -> list[str]:
        """Device type id of each rank."""
        return list(self._rank_types)

    @functools.cached_property
    def _rank_types(self) -> tuple[str, ...]:
        return tuple(n.device_type.id for _, n, _ in self._devices)

    def rank_node(self, rank: int) -> str:
        """Name of the node that holds ``rank``."""
        return self._rank_nodes[rank]

    @functools.cached_property
    def _rank_nodes(self) -> tuple[str, ...]:
        return tuple(n.name for _, n, _ in self._devices)

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        n = self._node_index.get(name)
        if n is None:
            raise KeyError(f"no node named {name!r}")
        return n

    def link(self, a: str, b: str) -> Link:
        """The link between nodes ``a`` and ``b`` (the intra-node link when a == b)."""
        if a == b:
            return self.node(a).intra_link
        if not self.pair_links:
            return self.network
        return self.pair_links.get((a, b) if a < b else (b, a), self.network)

    def subset(self, type_id: str) -> Cluster:
        """The homogeneous sub-cluster of the nodes of one device type."""
        nodes = tuple(n for n in self.nodes if n.device_type.id == type_id)
        if not nodes:
            raise KeyError(f"no devices of type {type_id!r}")
        names = {n.name for n in nodes}
        return dataclasses.replace(self, name=f"{self.name}[{type_id}]", nodes=nodes,
                                   pair_links={k: v for k, v in self.pair_links.items() if set(k) <= names})

    def calibrated(self, factors: dict[str, float]) -> Cluster:
        """A copy whose device types run ``factors[type]`` times slower (FLOP/s and memory bandwidth divided):
        measured / predicted compute time per type from a run (``hetero.runtime.hooks.type_calibration``), so
        the planner re-plans with what the devices did rather than what their specs say."""
        types = self.device_types()
        for t, f in factors.items():
            check(t in types, f"calibration.{t}", f"the cluster has no device type {t!r} (types: {', '.join(types)})")
            check(isinstance(f, (int, float)) and f > 0, f"calibration.{t}", f"must be a number > 0, got {f!r}")
        nodes = tuple(n if n.device_type.id not in factors else dataclasses.replace(
            n, device_type=n.device_type.scaled(id=n.device_type.id, scale=1.0 / factors[n.device_type.id],
                                                name=n.device_type.name)) for n in self.nodes)
        return dataclasses.replace(self, nodes=nodes)

    # -- output
    def to_dict(self) -> dict:
        """The YAML schema form (round-trips through ``from_dict``)."""
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        if self.custom_types:
            out["device_types"] = [dict(t) for t in self.custom_types]
        out["nodes"] = []
        for n in self.nodes:
            dt = n.device_type
            out["nodes"].append({
                "name": n.name,
                "devices": {"type": dt.id, "count": n.count},
                "intra_link": {"fabric": n.intra_link.fabric, "bandwidth_gbs": n.intra_link.bandwidth / 1e9,
                               "latency_us": n.intra_link.latency * 1e6},
            })
        out["network"] = _net_dict(self.network)
        if self.pair_links:
            out["links"] = [{"nodes": list(k), **_net_dict(v)} for k, v in sorted(self.pair_links.items())]
        return out

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of ``to_dict()``; written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def fingerprint(self) -> str:
        """Short stable hash of the cluster description (a Plan records it)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def __str__(self) -> str:
        parts = [f"{c}x{t}" for t, c in self.type_counts().items()]
        return f"Cluster({self.name or 'unnamed'}: {len(self.nodes)} nodes, {self.world_size} devices: {', '.join(parts)})"


def _few(names: set[str], k: int = 6) -> str:
    s = sorted(names)
    return ", ".join(s[:k]) + (", ..." if len(s) > k else "")


def _net(n: _NetworkYaml) -> Link:
    return Link(fabric=n.fabric, bandwidth=n.bandwidth_gbps * 1e9 / 8, latency=n.latency_us * 1e-6)


def _net_dict(lk: Link) -> dict:
    return {"bandwidth_gbps": lk.bandwidth * 8 / 1e9, "latency_us": lk.latency * 1e6, "fabric": lk.fabric}


def _plain(t: _DeviceTypeYaml) -> dict:
    return {k: v for k, v in dataclasses.asdict(t).items() if v is not None and not (k == "scale" and v == 1.0)
            and not (k == "name" and not v)}


def _custom_type(t: _DeviceTypeYaml, base: DeviceType | None) -> DeviceType:
    if base is not None:
        dt = base.scaled(id=t.id, scale=t.scale, name=t.name) if t.scale != 1.0 else \
            dataclasses.replace(base, id=t.id, name=t.name or base.name)
    else:
        dt = None
    kw: dict[str, Any] = {}
    if t.memory_gib is not None:
        check(t.memory_gib > 0, "memory_gib", "must be > 0")
        kw["memory_bytes"] = int(t.memory_gib * GIB)
    if t.memory_bandwidth_gbs is not None:
        check(t.memory_bandwidth_gbs > 0, "memory_bandwidth_gbs", "must be > 0")
        kw["memory_bandwidth"] = t.memory_bandwidth_gbs * 1e9 * (t.scale if base is None else 1.0)
    if t.peak_tflops is not None:
        for k, v in t.peak_tflops.items():
            check(k in DTYPES, f"peak_tflops.{k}", f"unknown dtype (use {', '.join(DTYPES)})")
            check(v > 0, f"peak_tflops.{k}", "must be > 0")
        kw["peak_flops"] = {k: v * 1e12 * (t.scale if base is None else 1.0) for k, v in t.peak_tflops.items()}
    for key in ("torch_device", "dist_backend", "matmul_efficiency"):
        if getattr(t, key) is not None:
            kw[key] = getattr(t, key)
    if dt is None:
        return DeviceType(id=t.id, name=t.name or t.id, **kw)
    return dataclasses.replace(dt, **kw)
