"""Communication cost: alpha-beta models of collectives over the cluster's link classes.

A link has latency alpha (s) and bandwidth B (bytes/s). For n ranks and a message of S bytes:

    ring all-reduce      2(n-1) alpha + 2 (n-1)/n S / B
    tree all-reduce      2 ceil(log2 n) alpha + 2 S / B          (double binary tree, pipelined)
    all-gather / reduce-scatter (S = full output size)   (n-1) alpha + (n-1)/n S / B
    broadcast (pipelined chain)  (n-1) alpha + S / B;   tree: ceil(log2 n) (alpha + S / B)
    send/recv            alpha + S / B

``algo="auto"`` takes the faster of ring and tree, as NCCL's tuner does. Across device types the hierarchical
all-reduce reduces inside each type on its own fabric, exchanges between one leader per type over the bridge
link, then broadcasts inside each type.

    python -c "from hetero.predictor.comm import allreduce_time; from hetero.cluster import Link; \
print(allreduce_time(1e9, 8, Link(bandwidth=300e9, latency=2e-6)))"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from hetero.cluster.spec import Cluster, Link

Algo = Literal["ring", "tree", "auto"]


def _log2(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 0


def allreduce_time(nbytes: float, n: int, link: Link, *, algo: Algo = "auto") -> float:
    """Seconds to all-reduce ``nbytes`` over ``n`` ranks joined by ``link``."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    a, b = link.latency, link.bandwidth
    ring = 2 * (n - 1) * a + 2 * (n - 1) / n * nbytes / b
    tree = 2 * _log2(n) * a + 2 * nbytes / b
    return {"ring": ring, "tree": tree, "auto": min(ring, tree)}[algo]


def allgather_time(nbytes: float, n: int, link: Link) -> float:
    """Seconds to all-gather into an output of ``nbytes`` total (each rank contributes nbytes/n)."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    return (n - 1) * link.latency + (n - 1) / n * nbytes / link.bandwidth


def reduce_scatter_time(nbytes: float, n: int, link: Link) -> float:
    """Seconds to reduce-scatter an input of ``nbytes`` per rank (ring)."""
    return allgather_time(nbytes, n, link)


def broadcast_time(nbytes: float, n: int, link: Link, *, algo: Algo = "auto") -> float:
    """Seconds to broadcast ``nbytes`` from one rank to ``n - 1`` others."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    a, b = link.latency, link.bandwidth
    chain = (n - 1) * a + nbytes / b
    tree = _log2(n) * (a + nbytes / b)
    return {"ring": chain, "tree": tree, "auto": min(chain, tree)}[algo]


def p2p_time(nbytes: float, link: Link) -> float:
    """Seconds for one send/recv of ``nbytes``."""
    if nbytes <= 0:
        return 0.0
    return link.latency + nbytes / link.bandwidth


def hierarchical_allreduce_time(nbytes: float, groups: Sequence[tuple[int, Link]], bridge: Link) -> float:
    """Seconds for a hierarchical all-reduce across device types.

    ``groups`` is ``(ranks_of_type, link_inside_type)`` per type. Each type reduces to a leader (a
    reduce-scatter + gather, costed as a reduce-scatter plus a gather of the same size), the leaders all-reduce
    over ``bridge``, then each type broadcasts back; types work in parallel, so each phase costs its slowest
    type."""
    if sum(n for n, _ in groups) <= 1:
        return 0.0
    inside = max((2 * reduce_scatter_time(nbytes, n, lk) for n, lk in groups), default=0.0)
    across = allreduce_time(nbytes, len(groups), bridge)
    back = max((broadcast_time(nbytes, n, lk) for n, lk in groups), default=0.0)
    return inside + across + back


def measured_link(cluster: Cluster, ranks: Sequence[int], profile, op: str) -> Link | None:
    """``profile``'s fitted link for ``op`` (``DeviceProfile.collective_links``) when all ``ranks`` share one node,
    the fabric a profile measures; None otherwise (the cluster's numbers apply)."""
    links = getattr(profile, "collective_links", None) if profile is not None else None
    if not links or op not in links:
        return None
    return links[op] if len({cluster.rank_node(r) for r in ranks}) == 1 else None


def group_link(cluster: Cluster, ranks: Sequence[int]) -> Link:
    """The bottleneck link of a collective over ``ranks``: the intra-node link when all share a node, else the
    slowest inter-node link between the nodes involved (with its largest latency)."""
    names = list(dict.fromkeys(cluster.rank_node(r) for r in ranks))
    nodes = [cluster.node(n) for n in names]
    if len(nodes) == 1:
        return nodes[0].intra_link
    if cluster.pair_links:
        links = [cluster.link(a.name, b.name) for i, a in enumerate(nodes) for b in nodes[i + 1:]]
    else:  # every pair of distinct nodes uses the default network
        links = [cluster.network]
    intra = [n.intra_link for n in nodes]
    bw = min(min(lk.bandwidth for lk in links), min(lk.bandwidth for lk in intra))
    lat = max(lk.latency for lk in links)
    return Link(fabric=links[0].fabric, bandwidth=bw, latency=lat)


def dp_allreduce_time(cluster: Cluster, ranks: Sequence[int], nbytes: float, *, bucket_bytes: float = 25 * 2**20,
                      link: Link | None = None) -> float:
    """Gradient all-reduce of ``nbytes`` over the DP group ``ranks`` in buckets (as DDP does), hierarchical when
    the group spans device types. ``link`` replaces the cluster's link for a single-type group (a measured
    all-reduce fit, ``DeviceProfile.collective_links``)."""
    n = len(ranks)
    if n <= 1 or nbytes <= 0:
        return 0.0
    types = cluster.rank_types()
    by_type: dict[str, list[int]] = {}
    for r in ranks:
        by_type.setdefault(types[r], []).append(r)
    buckets = max(1, math.ceil(nbytes / bucket_bytes))
    size = nbytes / buckets
    if len(by_type) == 1:
        if link is not None:
            return buckets * allreduce_time(size, n, link, algo="ring")
        return buckets * allreduce_time(size, n, group_link(cluster, ranks))
    groups = [(len(rs), group_link(cluster, rs)) for rs in by_type.values()]
    leaders = [rs[0] for rs in by_type.values()]
    bridge = group_link(cluster, leaders)
    return buckets * hierarchical_allreduce_time(size, groups, bridge)
