"""The auto-parallel search: the fastest plan for a mixed cluster that fits in memory, scored by the predictor.

What is searched (DESIGN.md, "heterogeneity rules"):

* **DP degree** ``dp``: the number of pipelines; it divides every device type's count so that each pipeline gets
  ``count_k / dp`` devices of type k, and it divides the global batch (pipelines are identical, so their batch
  shares are equal: the Plan's replica d of every stage forms pipeline d).
* **TP degree per device type** ``tp_k``: a divisor of the devices per node of that type (TP stays inside one
  node and one type); the type then contributes ``count_k / (dp * tp_k)`` pipeline stages.
* **Order of the device groups** along the pipeline (every permutation of the types; memory-rich types early is
  tried first because 1F1B keeps the most micro-batches in flight on the first stages).
* **Micro-batch size** (so the number of micro-batches), **schedule** (GPipe, 1F1B, interleaved 1F1B with two
  chunks per stage), and per stage **activation recomputation** (on only where the stage does not fit without).
* **Layers per stage**: the exact DP of ``partition.py`` (C++ core) on the predictor's per-layer times and memory.

Search structure (branch and bound): every (dp, tp per type, micro-batch, schedule) gets a cheap lower bound on
its DP objective plus the post-pipeline tail (gradient all-reduce + optimizer step); structures are visited in
order of that bound and the walk stops once the next bound cannot beat the k-th best objective so far. Each
visited structure runs the DP (with that k-th best as its bound) on three group orders (memory-rich first, its
reverse, fastest first); GPipe is skipped in the walk where 1F1B is searched (same DP objective, never less
memory). Phase 2 then tries every other group order, and GPipe, on the structures that made the pool. The pool
is scored by ``hetero.predictor.predict`` (p2p, TP and DP collectives, optimizer, schedule simulation) in
objective order until the remaining candidates cannot plausibly win, and ranked by predicted step time;
candidates that do not fit are dropped with their reason kept. ``search(..., exhaustive=True)`` turns all
pruning off and scores every feasible candidate (the reference of ``tools/bench_planner.py``).

Limits of the plan space: every device is used (the Plan covers all ranks), pipelines are identical in device
types (the Plan's replica d of every stage forms pipeline d), so DP batch shares are equal; unequal shares need
replicas of one stage on different types, which the Plan schema does not express yet.

    from hetero.autoparallel.search import SearchConfig, search
    result = search(cluster, model, SearchConfig(global_batch=1024))
    print(result.best.plan.to_dict())
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hetero.autoparallel.partition import (
    Partition,
    Slot,
    cost_arrays,
    cost_arrays_runs,
    evaluate,
    layer_rows,
    min_capacity_scale,
    partition,
)
from hetero.autoparallel.plan import Plan, Prediction, Stage, split_sizes
from hetero.cluster.spec import Cluster, DeviceType, Link
from hetero.config import ConfigError, check
from hetero.models.spec import DTYPE_BYTES, ModelSpec
from hetero.predictor import comm
from hetero.predictor.compute import optimizer_step_time
from hetero.predictor.memory import state_bytes_per_param
from hetero.predictor.pipeline import simulate
from hetero.predictor.predict import predict_detailed

GIB = 1024**3
SCHEDULES = ("1f1b", "gpipe", "interleaved_1f1b")
PHASE1_ORDERS = 3
"""Group orders tried on every structure (the rest only on the structures in the rescoring pool)."""


@dataclass(kw_only=True)
class SearchConfig:
    """What to search over and how long."""

    global_batch: int
    """Samples per optimizer step over all pipelines."""
    dtype: str = "bf16"
    """Compute dtype."""
    schedules: list[str] = field(default_factory=lambda: list(SCHEDULES))
    """Pipeline schedules to try (gpipe, 1f1b, interleaved_1f1b)."""
    micro_batch_sizes: list[int] = field(default_factory=list)
    """Micro-batch sizes to try; empty means the powers of two up to ``max_micro_batch``."""
    max_micro_batch: int = 16
    """Largest micro-batch size tried when ``micro_batch_sizes`` is empty."""
    max_tp: int = 8
    """Largest tensor-parallel degree."""
    recompute: bool = True
    """Allow activation recomputation on stages that do not fit without it."""
    orders: Literal["all", "memory"] = "all"
    """Group orders: every permutation of the device types, or only memory-rich first."""
    pool: int = 24
    """Candidates kept by the walk (best DP objectives), re-estimated with the schedule simulation."""
    objective_slack: float = 0.05
    """The walk keeps candidates whose DP objective is within this fraction of the best (the DP objective leaves
    out p2p transfers and the exact schedule, a few percent)."""
    rescore: int = 4
    """Candidates (best by the simulated estimate) that the full predictor may score."""
    rescore_margin: float = 0.02
    """Stop scoring once a candidate's DP objective exceeds the best predicted step time by this fraction..."""
    min_scored: int = 2
    """... but only after this many feasible candidates are scored (``--top K`` asks for K)."""
    time_limit_s: float | None = None
    """Stop the walk after this many seconds and return the best plan found so far."""
    virtual_stages: int = 2
    """Model chunks per stage for interleaved 1F1B."""

    def __post_init__(self):
        check(self.global_batch > 0, "global_batch", "must be > 0")
        check(self.dtype in DTYPE_BYTES, "dtype", f"must be one of {', '.join(DTYPE_BYTES)}")
        check(len(self.schedules) > 0, "schedules", "must list at least one schedule")
        for i, s in enumerate(self.schedules):
            check(s in SCHEDULES, f"schedules[{i}]", f"unknown schedule {s!r} (use {', '.join(SCHEDULES)})")
        for i, b in enumerate(self.micro_batch_sizes):
            check(b > 0, f"micro_batch_sizes[{i}]", "must be > 0")
        check(self.max_micro_batch > 0, "max_micro_batch", "must be > 0")
        check(self.max_tp > 0, "max_tp", "must be > 0")
        check(self.rescore > 0, "rescore", "must be > 0")
        check(self.pool >= self.rescore, "pool", "must be >= rescore")
        check(self.objective_slack >= 0, "objective_slack", "must be >= 0")
        check(self.rescore_margin >= 0, "rescore_margin", "must be >= 0")
        check(self.min_scored >= 1, "min_scored", "must be >= 1")
        check(self.time_limit_s is None or self.time_limit_s > 0, "time_limit_s", "must be > 0")
        check(self.virtual_stages >= 2, "virtual_stages", "must be >= 2")


@dataclass(frozen=True)
class TypeGroup:
    """The devices of one type: ranks grouped by node and the weakest intra-node link among those nodes."""

    device: DeviceType
    ranks_by_node: tuple[tuple[int, ...], ...]
    intra: Link

    @property
    def count(self) -> int:
        """Devices of this type."""
        return sum(len(r) for r in self.ranks_by_node)

    @property
    def per_node(self) -> int:
        """Devices per node (the gcd over this type's nodes)."""
        return math.gcd(*[len(r) for r in self.ranks_by_node])

    def label(self, n: int = 0) -> str:
        """``4×A100-SXM4-80GB`` style label."""
        name = self.device.id
        return f"{n}×{name}" if n else name


@dataclass(frozen=True)
class Structure:
    """Everything but the layer split: dp, tp per type, micro-batch size, schedule."""

    dp: int
    tp: tuple[int, ...]
    """TP degree per device type (in the cluster's type order)."""
    mbs: int
    m: int
    """Micro-batches per pipeline."""
    schedule: str
    v: int
    """Virtual stages (interleaved 1F1B), else 1."""


@dataclass
class Candidate:
    """One complete plan candidate: structure, group order, layer split, and (once scored) the prediction."""

    structure: Structure
    order: tuple[int, ...]
    """Device-type indices along the pipeline."""
    slots: list[tuple[int, int]]
    """(type index, tp) per stage."""
    split: Partition
    objective: float
    """DP objective plus the DP-collective/optimizer tail estimate, seconds (the search's ranking key)."""
    plan: Plan | None = None
    report: object | None = None
    """predictor Report (stages, simulations) once scored."""

    @property
    def step_time(self) -> float:
        """Predicted step time (inf before scoring)."""
        return self.plan.predicted.step_time_s if self.plan and self.plan.predicted else math.inf


@dataclass
class SearchResult:
    """Ranked candidates (best first), with what the search did and why candidates were dropped."""

    ranked: list[Candidate]
    structures: int
    """Structures considered."""
    evaluated: int
    """(structure, order) pairs the DP ran on."""
    pruned: int
    """Structures skipped by the lower bound."""
    infeasible: dict[str, int]
    """Reason -> count of structures dropped for it."""
    search_s: float
    time_limited: bool
    """True when ``time_limit_s`` cut the walk short."""

    @property
    def best(self) -> Candidate:
        """The fastest feasible candidate."""
        return self.ranked[0]


def type_groups(cluster: Cluster) -> list[TypeGroup]:
    """The cluster's devices grouped by type, in order of first appearance."""
    by: dict[str, list] = {}
    for node in cluster.nodes:
        by.setdefault(node.device_type.id, []).append(node)
    out, r0 = [], {}
    r = 0
    for node in cluster.nodes:
        r0[node.name] = r
        r += node.count
    for nodes in by.values():
        ranks = tuple(tuple(range(r0[n.name], r0[n.name] + n.count)) for n in nodes)
        weakest = min((n.intra_link for n in nodes), key=lambda lk: (lk.bandwidth, -lk.latency))
        out.append(TypeGroup(device=nodes[0].device_type, ranks_by_node=ranks, intra=weakest))
    return out


def _sub_cluster(cluster: Cluster, ranks: list[int]) -> tuple[Cluster, list[int]]:
    """The cluster restricted to the nodes that hold ``ranks``, and the ranks renumbered in it (collective costs
    over those ranks are the same; the predictor's helpers then scan fewer devices)."""
    devs = cluster.devices()
    keep: list = []
    for r in ranks:
        node = devs[r][1]
        if not keep or keep[-1].name != node.name and node.name not in {n.name for n in keep}:
            keep.append(node)
    start, off = {}, 0
    for n in keep:
        start[n.name] = off
        off += n.count
    sub = dataclasses.replace(cluster, nodes=tuple(keep))
    return sub, [start[devs[r][1].name] + devs[r][2] for r in ranks]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class Searcher:
    """One search over one (cluster, model, config); see the module docstring."""

    def __init__(self, cluster: Cluster, model: ModelSpec, config: SearchConfig, *,
                 profiles: Mapping | None = None):
        self.cluster, self.model, self.cfg = cluster, model, config
        self.profiles = profiles or {}
        self.groups = type_groups(cluster)
        self.counts = [g.count for g in self.groups]
        self.layer_params = [float(layer.params) for layer in model.layers]
        self.rows_cache: dict = {}
        self.slot_cache: dict = {}
        self.tail_cache: dict = {}
        self.L = model.num_layers
        wb, gb, ob = state_bytes_per_param(config.dtype, model.param_dtype)
        self.state_bytes = model.params * (wb + gb + ob)

    # -- structure enumeration
    def _slot(self, k: int, tp: int) -> Slot:
        key = (k, tp)
        if key not in self.slot_cache:
            g = self.groups[k]
            prof = self.profiles.get(g.device.id)
            self.slot_cache[key] = Slot(device=g.device, tp=tp, tp_link=g.intra if tp > 1 else None,
                                        overhead_bytes=float(getattr(prof, "memory_overhead_bytes", 0) or 0))
        return self.slot_cache[key]

    def _mbs_options(self, per_pipeline: int) -> list[int]:
        opts = self.cfg.micro_batch_sizes or [2**i for i in range(0, 16) if 2**i <= self.cfg.max_micro_batch]
        return [b for b in opts if per_pipeline % b == 0]

    def structures(self, *, walk: bool = False) -> tuple[list[Structure], dict[str, int]]:
        """Every structure that passes the cheap checks, and counts of those that did not (by reason). With
        ``walk``, GPipe is left out where 1F1B is searched (phase 2 of ``search`` adds it back)."""
        reasons: dict[str, int] = {}
        counts = [g.count for g in self.groups]
        out = []
        dps = _divisors(math.gcd(*counts))
        batch_ok = [d for d in dps if self.cfg.global_batch % d == 0]
        if not batch_ok:
            raise ConfigError("global_batch", f"{self.cfg.global_batch} is not divisible by any usable DP degree "
                              f"({', '.join(map(str, dps))}: divisors of the device counts {counts})")
        for dp in dps:
            if self.cfg.global_batch % dp:
                reasons[f"global batch {self.cfg.global_batch} not divisible by dp {dp}"] = 1
                continue
            per = [c // dp for c in counts]
            cap = sum(n * g.device.memory_bytes for n, g in zip(per, self.groups))
            if cap < self.state_bytes:
                key = (f"dp {dp}: a pipeline's {cap / GIB:.0f} GiB < {self.state_bytes / GIB:.0f} GiB of model "
                       f"state ({self.model.params / 1e9:.1f}B params)")
                reasons[key] = reasons.get(key, 0) + 1
                continue
            tp_opts = []
            for n, g in zip(per, self.groups):
                tp_opts.append([t for t in _divisors(g.per_node) if t <= self.cfg.max_tp and n % t == 0])
            mbs_opts = self._mbs_options(self.cfg.global_batch // dp)
            if not mbs_opts:
                tried = self.cfg.micro_batch_sizes or [2**i for i in range(16) if 2**i <= self.cfg.max_micro_batch]
                reasons[f"dp {dp}: no micro-batch size in {tried} divides the {self.cfg.global_batch // dp} "
                        f"samples per pipeline"] = 1
                continue
            for tps in itertools.product(*tp_opts):
                pp = sum(n // t for n, t in zip(per, tps))
                if pp > self.L:
                    key = f"more stages than layers ({self.L})"
                    reasons[key] = reasons.get(key, 0) + 1
                    continue
                for mbs in mbs_opts:
                    m = self.cfg.global_batch // (dp * mbs)
                    for sched in self.cfg.schedules:
                        if walk and sched == "gpipe" and "1f1b" in self.cfg.schedules:
                            continue
                        v = 1
                        if sched == "interleaved_1f1b":
                            if pp == 1 or m % pp or self.L < 2 * pp:
                                continue
                            v = self.cfg.virtual_stages
                        out.append(Structure(dp=dp, tp=tuple(tps), mbs=mbs, m=m, schedule=sched, v=v))
        return out, reasons

    def stage_counts(self, st: Structure) -> list[int]:
        """Pipeline stages contributed by each device type."""
        return [c // st.dp // t for c, t in zip(self.counts, st.tp)]

    def _rows(self, k: int, tp: int, mbs: int) -> dict[str, np.ndarray]:
        return layer_rows(self.model, self._slot(k, tp), mbs=mbs, dtype=self.cfg.dtype,
                          profile=self.profiles.get(self.groups[k].device.id), cache=self.rows_cache)

    def _stage_tail(self, k: int, tp: int, dp: int, params: float) -> float:
        """Gradient all-reduce over the DP group plus the optimizer step of one stage of type k holding
        ``params`` parameters per rank (the predictor's comm and compute formulas)."""
        a, b = self._allreduce_line(k, tp, dp)
        g = self.groups[k]
        return a + b * params * 4 + optimizer_step_time(params, g.device, profile=self.profiles.get(g.device.id))

    def tail(self, st: Structure, slots: list[tuple[int, int]] | None = None,
             ranges: list[tuple[int, int]] | None = None) -> float:
        """What follows the pipeline: the slowest stage's gradient all-reduce + optimizer step. With ``slots`` and
        ``ranges`` (a layer split) it is that split's value; without, a lower bound valid for any split (each
        stage holds at least the smallest layer)."""
        if slots is not None and ranges is not None:
            return max(self._stage_tail(k, t, st.dp, sum(self.layer_params[lo:hi]) / t)
                       for (k, t), (lo, hi) in zip(slots, ranges))
        key = ("lb", st.dp, st.tp)
        if key not in self.tail_cache:
            counts = self.stage_counts(st)
            smallest = min(self.layer_params)
            self.tail_cache[key] = max(self._stage_tail(k, t, st.dp, smallest / t)
                                       for k, t in enumerate(st.tp) if counts[k])
        return self.tail_cache[key]

    def _allreduce_line(self, k: int, tp: int, dp: int) -> tuple[float, float]:
        """Intercept and slope (s, s/byte) of the predictor's bucketed DP all-reduce over the DP group of a stage
        of type k, from two evaluations of ``comm.dp_allreduce_time`` (it is linear in the bytes up to one
        bucket's latency); memoised because the predictor's group-link lookup is costly on big clusters."""
        key = ("ar", k, tp, dp)
        if key not in self.tail_cache:
            if dp == 1:
                self.tail_cache[key] = (0.0, 0.0)
            else:
                ranks = self._stage_ranks(k, tp, dp, 1, 0)
                dp_ranks = [ranks[d * tp] for d in range(dp)]
                sub = _sub_cluster(self.cluster, dp_ranks)
                lo, hi = 2.0**30, 2.0**31
                t_lo = comm.dp_allreduce_time(sub[0], sub[1], lo)
                t_hi = comm.dp_allreduce_time(sub[0], sub[1], hi)
                slope = (t_hi - t_lo) / (hi - lo)
                self.tail_cache[key] = (max(t_lo - slope * lo, 0.0), slope)
        return self.tail_cache[key]

    def lower_bound(self, st: Structure) -> float:
        """A valid lower bound on the DP objective (plus tail) of any order and split of this structure:
        max_s T_s >= sum_l min_s y_s t_s(l) for any weights y summing to 1 (y_s proportional to each slot's
        speed on the whole model), and sum_s T_s >= sum_l min_s t_s(l)."""
        counts = self.stage_counts(st)
        t_rows = [self._rows(k, t, st.mbs)["time0"] for k, t in enumerate(st.tp) if counts[k]]
        n = [c for c in counts if c]
        full = np.array([r.sum() for r in t_rows])
        y = 1.0 / full
        norm = float(np.dot(n, y))
        stack = np.stack(t_rows)
        lb_max = float(np.min(stack * (y / norm)[:, None], axis=0).sum())
        lb_sum = float(np.min(stack, axis=0).sum())
        w_max, w_sum = st.m - 1.0 / st.v, 1.0 / st.v
        return w_max * lb_max + w_sum * lb_sum + self.tail(st)

    def orders(self, st: Structure) -> list[tuple[int, ...]]:
        """Group orders to try: memory-rich (per stage) first; with orders="all" then its reverse, fastest first,
        and every other permutation. The walk tries the first three on every structure, the rest only on the
        structures that reach the rescoring pool."""
        present = [k for k, c in enumerate(self.stage_counts(st)) if c]
        first = tuple(sorted(present, key=lambda k: (-self.groups[k].device.memory_bytes * st.tp[k],
                                                     -self.groups[k].device.peak(self.cfg.dtype))))
        if self.cfg.orders == "memory":
            return [first]
        fast = tuple(sorted(present, key=lambda k: -self.groups[k].device.peak(self.cfg.dtype)))
        out = list(dict.fromkeys([first, first[::-1], fast]))
        return out + [p for p in itertools.permutations(present) if p not in out]

    def slots_for(self, st: Structure, order: tuple[int, ...]) -> list[tuple[int, int]]:
        """(type index, tp) per pipeline stage."""
        counts = self.stage_counts(st)
        return [(k, st.tp[k]) for k in order for _ in range(counts[k])]

    def run_dp(self, st: Structure, order: tuple[int, ...], bound: float = math.inf) -> Candidate | None:
        """The exact layer split for one structure and order (None if nothing fits or beats ``bound``)."""
        slots = self.slots_for(st, order)
        counts = self.stage_counts(st)
        c = cost_arrays_runs(self.model, [(self._slot(k, st.tp[k]), counts[k]) for k in order], mbs=st.mbs,
                             num_microbatches=st.m, schedule=st.schedule, virtual_stages=st.v, dtype=self.cfg.dtype,
                             profiles=self.profiles, cache=self.rows_cache)
        r = partition(c, allow_recompute=self.cfg.recompute, bound=bound - self.tail(st))
        if r is None:
            return None
        if st.v > 1 and min(hi - lo for lo, hi in r.ranges) < st.v:
            return None  # a stage too short to hold v chunks
        return Candidate(structure=st, order=order, slots=slots, split=r,
                         objective=r.objective + self.tail(st, slots, r.ranges))

    def refine(self, cand: Candidate) -> float:
        """A closer estimate of a candidate's step time than the DP objective: the predictor's schedule simulation
        (``pipeline.simulate``) of one pipeline with the split's per-stage forward/backward times and the p2p
        transfers between stages (``comm.p2p_time`` over ``comm.group_link``), then each stage's gradient
        all-reduce and optimizer step after it finishes (the predictor's step-time rule)."""
        st = cand.structure
        counts = self.stage_counts(st)
        scale = DTYPE_BYTES[self.cfg.dtype] / DTYPE_BYTES[self.model.dtype]
        fwd, bwd, first_rank, seen = [], [], [], dict.fromkeys(range(len(self.groups)), 0)
        for (k, t), (lo, hi), rc in zip(cand.slots, cand.split.ranges, cand.split.recompute):
            rows = self._rows(k, t, st.mbs)
            fwd.append(float(rows["fwd_rc" if rc else "fwd0"][lo:hi].sum()))
            bwd.append(float(rows["bwd_rc" if rc else "bwd0"][lo:hi].sum()))
            first_rank.append(self._stage_ranks(k, t, st.dp, counts[k], seen[k])[0])
            seen[k] += 1
        p2p = []
        for i in range(len(fwd) - 1):
            nbytes = self.model.layers[cand.split.ranges[i][1] - 1].act_out_bytes * scale * st.mbs
            p2p.append(comm.p2p_time(nbytes, comm.group_link(self.cluster, [first_rank[i], first_rank[i + 1]])))
        sim = simulate(fwd, bwd, st.m, schedule=st.schedule, p2p=p2p, virtual_stages=st.v)
        return max(f + self._stage_tail(k, t, st.dp, sum(self.layer_params[lo:hi]) / t)
                   for f, (k, t), (lo, hi) in zip(sim.finish, cand.slots, cand.split.ranges))

    # -- plans
    def _stage_ranks(self, k: int, tp: int, dp: int, stages_k: int, j: int) -> list[int]:
        """Ranks of the j-th stage of type k: TP groups of consecutive ranks on one node; the dp replicas of a
        stage are adjacent (their gradient all-reduce stays on as few nodes as possible)."""
        g = self.groups[k]
        groups = [node[i:i + tp] for node in g.ranks_by_node for i in range(0, len(node), tp)]
        out: list[int] = []
        for d in range(dp):
            out.extend(groups[j * dp + d])
        return out

    def build_plan(self, cand: Candidate) -> Plan:
        """The Plan of a candidate (without prediction)."""
        st = cand.structure
        counts = self.stage_counts(st)
        seen = dict.fromkeys(range(len(self.groups)), 0)
        stages = []
        share = self.cfg.global_batch // st.dp
        for (k, tp), (lo, hi), rc in zip(cand.slots, cand.split.ranges, cand.split.recompute):
            ranks = self._stage_ranks(k, tp, st.dp, counts[k], seen[k])
            seen[k] += 1
            stages.append(Stage(layers=(lo, hi), device_type=self.groups[k].device.id, ranks=ranks, tp=tp, dp=st.dp,
                                batch_shares=[share] * st.dp, recompute=rc))
        return Plan(model=self.model.name, num_layers=self.L, global_batch=self.cfg.global_batch,
                    num_microbatches=st.m, seq_len=self.model.seq_len, schedule=st.schedule,
                    virtual_stages=st.v, dtype=self.cfg.dtype, stages=stages, model_hash=self.model.fingerprint(),
                    cluster_hash=self.cluster.fingerprint(),
                    meta={"planner": "hetero.autoparallel.search", "dp_objective_s": cand.objective})

    def score(self, cand: Candidate) -> Candidate:
        """Build the plan and score it with the predictor (sets cand.plan.predicted, cand.report)."""
        plan = self.build_plan(cand)
        rep = predict_detailed(self.cluster, self.model, plan, profiles=self.profiles)
        plan.predicted = rep.prediction
        cand.plan, cand.report = plan, rep
        return cand

    # -- DP across device types (weighted DP: the whole model on every replica, batch shares by speed)
    def cross_tp_options(self) -> list[int]:
        """TP degrees every type can use on its nodes (replicas of one stage share one degree)."""
        return [t for t in _divisors(min(g.per_node for g in self.groups))
                if t <= self.cfg.max_tp and all(g.per_node % t == 0 for g in self.groups)]

    def cross_type_dp(self, tp: int, rounds: int = 3) -> Candidate | None:
        """One stage holding every layer, replicated over all devices (TP ``tp`` inside each node), each replica
        on its own type; batch shares proportional to each replica's predicted samples/s (re-balanced ``rounds``
        times on the predictor's per-replica compute time, shares in whole micro-batches); gradient accumulation
        ``m`` is the smallest that fits every replica's memory. None when no ``m`` fits."""
        reps = [(k, grp) for k, g in enumerate(self.groups)
                for node in g.ranks_by_node for grp in (node[i:i + tp] for i in range(0, len(node), tp))]
        n, gb = len(reps), self.cfg.global_batch
        if gb < n or self.state_bytes / tp > min(g.device.memory_bytes for g in self.groups):
            return None  # every replica holds the whole model state
        ranks = [r for _, grp in reps for r in grp]
        types = [self.groups[k].device.id for k, _ in reps]
        speed = [self.groups[k].device.peak(self.cfg.dtype) for k, _ in reps]
        for m in (x for x in _divisors(gb) if gb // x >= n):  # gb // m >= n: every replica gets a sample
            shares = split_sizes(gb // m, [x / sum(speed) for x in speed], n, what="samples")
            plan = rep = None
            for _ in range(rounds):
                stage = Stage(layers=(0, self.L), device_type=types[0], ranks=ranks, tp=tp, dp=n,
                              batch_shares=[x * m for x in shares], replica_types=types)
                plan = Plan(model=self.model.name, num_layers=self.L, global_batch=gb, num_microbatches=m,
                            seq_len=self.model.seq_len, schedule="1f1b", dtype=self.cfg.dtype, stages=[stage],
                            model_hash=self.model.fingerprint(), cluster_hash=self.cluster.fingerprint(),
                            meta={"planner": "hetero.autoparallel.search", "family": "cross-type weighted DP"})
                rep = predict_detailed(self.cluster, self.model, plan, profiles=self.profiles)
                rate = [x / max(sim.finish[0], 1e-12) for x, sim in zip(shares, rep.simulations)]
                new = split_sizes(gb // m, [x / sum(rate) for x in rate], n, what="samples")
                if new == shares:
                    break
                shares = new
            plan.predicted = rep.prediction
            if _fits(self.cluster, plan):
                split = Partition(bounds=[0, self.L], recompute=[False], stage_time=[rep.stages[0].busy_s],
                                  objective=rep.prediction.step_time_s)
                st = Structure(dp=n, tp=(tp,) * len(self.groups), mbs=max(shares), m=m, schedule="1f1b", v=1)
                return Candidate(structure=st, order=tuple(range(len(self.groups))), slots=[(0, tp)], split=split,
                                 objective=rep.prediction.step_time_s, plan=plan, report=rep)
        return None

    def overflow(self, st: Structure, order: tuple[int, ...]) -> tuple[float, str]:
        """How far a structure is from fitting: (capacity factor needed, the binding stage in words)."""
        slots = self.slots_for(st, order)
        c = cost_arrays(self.model, [self._slot(k, t) for k, t in slots], mbs=st.mbs, num_microbatches=st.m,
                        schedule=st.schedule, virtual_stages=st.v, dtype=self.cfg.dtype, profiles=self.profiles,
                        cache=self.rows_cache)
        k = min_capacity_scale(c)
        if not math.isfinite(k):
            return k, "no split fits even with 10000x the memory"
        r = partition(c, allow_recompute=self.cfg.recompute, capacity_scale=k * (1 + 1e-9))
        worst, text = 0.0, ""
        for s, ((ki, tp), (lo, hi), rc) in enumerate(zip(slots, r.ranges, r.recompute)):
            need = c.stage_memory(s, lo, hi, rc)
            ratio = need / c.capacity[s]
            if ratio > worst:
                g = self.groups[ki]
                worst = ratio
                text = (f"stage {s} on {st.dp * tp}×{g.device.id} (layers {lo}-{hi - 1}, tp {tp}, dp {st.dp}) needs "
                        f"{need / GIB:.1f} GiB per device at micro-batch {st.mbs}"
                        f"{' even with recomputation' if self.cfg.recompute else ''}, but has "
                        f"{g.device.memory_bytes / GIB:.1f} GiB")
        return k, text


def search(cluster: Cluster, model: ModelSpec, config: SearchConfig, *, profiles: Mapping | None = None,
           progress: Callable[[int, int], None] | None = None, exhaustive: bool = False) -> SearchResult:
    """Search plans (see the module docstring); raises ConfigError naming the binding constraint when no plan fits.

    ``progress(done, total)`` is called as structures are visited. ``exhaustive=True`` turns off the lower-bound
    pruning and the DP's bound, tries every group order and scores every feasible candidate with the predictor
    (for benchmarks: it is the reference the pruned search is compared with)."""
    t0 = time.monotonic()
    s = Searcher(cluster, model, config, profiles=profiles)
    structs, reasons = s.structures(walk=not exhaustive)
    if not structs:
        if sum(g.count * g.device.memory_bytes for g in s.groups) < s.state_bytes:
            raise ConfigError("cluster", no_plan_message(s, [], reasons))
        raise ConfigError("cluster", "no candidate structure: " + "; ".join(reasons) if reasons else
                          "no candidate structure (check --max-tp and micro-batch sizes)")
    keyed = sorted(((s.lower_bound(st), i, st) for i, st in enumerate(structs)), key=lambda x: (x[0], x[1]))
    pool: list[tuple[float, int, Candidate]] = []  # max-heap on objective via negation, size <= rescore
    keep = math.inf if exhaustive else config.pool
    allc: list[Candidate] = []
    evaluated = pruned = 0
    infeasible_structs: list[Structure] = []
    time_limited = False
    counter = itertools.count()
    for n_done, (lb, _, st) in enumerate(keyed):
        bound = _bound(pool, keep, config)
        if not exhaustive and lb >= bound:
            pruned = len(keyed) - n_done
            break
        if config.time_limit_s is not None and time.monotonic() - t0 > config.time_limit_s and pool:
            time_limited = True
            pruned = len(keyed) - n_done
            break
        any_fit = False
        for order in (s.orders(st) if exhaustive else s.orders(st)[:PHASE1_ORDERS]):
            bound = _bound(pool, keep, config)
            cand = s.run_dp(st, order, bound=math.inf if exhaustive else bound)
            evaluated += 1
            if cand is None:
                continue
            any_fit = True
            if exhaustive:
                allc.append(cand)
            else:
                _push(pool, cand, keep, counter)
        if not any_fit and bound == math.inf:
            infeasible_structs.append(st)
        if progress is not None:
            progress(n_done + 1, len(keyed))
    if not exhaustive:
        # phase 2, for the structures that made the pool: the other group orders, and GPipe in place of 1F1B
        # (same DP objective, never less memory, so the walk skipped it; the predictor may still prefer it)
        tried = set()
        for _, _, c in sorted(pool, key=lambda x: -x[0]):
            if c.structure in tried:
                continue
            tried.add(c.structure)
            extra = [(c.structure, o) for o in s.orders(c.structure)[PHASE1_ORDERS:]] \
                if config.orders == "all" else []
            if c.structure.schedule == "1f1b" and "gpipe" in config.schedules:
                g = dataclasses.replace(c.structure, schedule="gpipe")
                extra += [(g, c.order)]
            for st2, order in extra:
                bound = _bound(pool, keep, config)
                cand = s.run_dp(st2, order, bound=bound)
                evaluated += 1
                if cand is not None:
                    _push(pool, cand, keep, counter)
    if progress is not None:
        progress(len(keyed), len(keyed))
    cands = allc if exhaustive else [c for _, _, c in pool]
    if not cands:
        raise ConfigError("cluster", no_plan_message(s, infeasible_structs, reasons))
    if not exhaustive:
        for c in cands:  # the predictor's schedule simulation of one pipeline, plus the exact tail
            c.objective = s.refine(c)
    ranked: list[Candidate] = []
    for c in sorted(cands, key=lambda c: c.objective):
        if not exhaustive and len(ranked) >= config.min_scored and (len(ranked) >= config.rescore or
                c.objective * min(x.step_time / x.objective for x in ranked) >
                min(x.step_time for x in ranked) * (1 + config.rescore_margin)):
            break  # scaled by the smallest prediction/estimate ratio seen, it cannot plausibly win
        s.score(c)
        if not _fits(cluster, c.plan):
            reasons["predictor memory above capacity"] = reasons.get("predictor memory above capacity", 0) + 1
            continue
        ranked.append(c)
    if len(s.groups) > 1:  # DP across device types: one stage, shares by speed
        ranked.extend(c for c in (s.cross_type_dp(t) for t in s.cross_tp_options()) if c is not None)
    if not ranked:
        raise ConfigError("cluster", no_plan_message(s, infeasible_structs, reasons))
    ranked.sort(key=lambda c: c.step_time)
    for c in ranked:
        c.plan.meta["search_s"] = round(time.monotonic() - t0, 4)
    if infeasible_structs:
        key = "does not fit in memory (any split, with recomputation)" if config.recompute else \
            "does not fit in memory (any split)"
        reasons[key] = reasons.get(key, 0) + len(infeasible_structs)
    return SearchResult(ranked=ranked, structures=len(structs), evaluated=evaluated, pruned=pruned,
                        infeasible=reasons, search_s=time.monotonic() - t0, time_limited=time_limited)


def _bound(pool: list, keep: float, config: SearchConfig) -> float:
    """The objective a new candidate must beat to enter the pool: the pool's worst when full, and never more than
    ``objective_slack`` above the best so far."""
    if not pool:
        return math.inf
    worst = -pool[0][0] if len(pool) >= keep else math.inf
    best = min(-x[0] for x in pool)
    return min(worst, best * (1 + config.objective_slack))


def _push(pool: list, cand: Candidate, keep: float, counter) -> None:
    heapq.heappush(pool, (-cand.objective, next(counter), cand))
    if len(pool) > keep:
        heapq.heappop(pool)


def _fits(cluster: Cluster, plan: Plan) -> bool:
    types = cluster.device_types()
    mem = plan.predicted.rank_memory_bytes
    return all(mem.get(r, 0) <= types[st.device_type].memory_bytes * (1 + 1e-9) for st in plan.stages for r in st.ranks)


def no_plan_message(s: Searcher, infeasible: list[Structure], reasons: dict[str, int]) -> str:
    """The binding constraint when nothing fits: the structure closest to fitting and its worst stage."""
    cluster_mem = sum(g.count * g.device.memory_bytes for g in s.groups)
    if cluster_mem < s.state_bytes:
        return (f"model too big for the cluster: {s.model.name} ({s.model.params / 1e9:.1f}B params) needs "
                f"{s.state_bytes / GIB:.0f} GiB for weights, gradients and optimizer state alone, the cluster has "
                f"{cluster_mem / GIB:.0f} GiB in total")
    if not infeasible:
        return "no feasible plan: " + "; ".join(f"{k} ({v}x)" for k, v in reasons.items())
    # closest to fitting: smallest micro-batch, most memory per pipeline (smallest dp), each structure's first order
    mbs = min(st.mbs for st in infeasible)
    pool = sorted((st for st in infeasible if st.mbs == mbs), key=lambda st: (st.dp, -max(st.tp)))[:4]
    best = min((s.overflow(st, s.orders(st)[0]) for st in pool), key=lambda x: x[0])
    return f"no plan fits in memory; closest: {best[1]} (needs {best[0]:.2f}x the memory)"


def naive(cluster: Cluster, model: ModelSpec, config: SearchConfig, *,
          profiles: Mapping | None = None) -> Candidate:
    """The baseline that ignores device speed: layers split evenly over the stages (the remainder to the first
    ones) and the batch evenly over the pipelines, with recomputation where a stage needs it. Its structure
    (dp, tp, micro-batch, schedule) is the best such even plan by the predictor, so the baseline is, if
    anything, stronger than a hand-written even split."""
    s = Searcher(cluster, model, config, profiles=profiles)
    structs, reasons = s.structures()
    pool: list = []
    counter = itertools.count()
    for st in structs:
        order = s.orders(st)[0]
        slots = s.slots_for(st, order)
        c = cost_arrays(model, [s._slot(k, t) for k, t in slots], mbs=st.mbs, num_microbatches=st.m,
                        schedule=st.schedule, virtual_stages=st.v, dtype=config.dtype, profiles=profiles,
                        cache=s.rows_cache)
        p = len(slots)
        q, r = divmod(s.L, p)
        bounds = [0]
        for i in range(p):
            bounds.append(bounds[-1] + q + (1 if i < r else 0))
        split = evaluate(c, bounds, allow_recompute=config.recompute)
        if split is None:
            continue
        _push(pool, Candidate(structure=st, order=order, slots=slots, split=split,
                              objective=split.objective + s.tail(st, slots, split.ranges)), config.rescore, counter)
    ranked: list[Candidate] = []
    for c in sorted((c for _, _, c in pool), key=lambda c: c.objective):
        if ranked and c.objective * min(x.step_time / x.objective for x in ranked) > \
                min(x.step_time for x in ranked) * (1 + config.rescore_margin):
            break
        s.score(c)
        if _fits(cluster, c.plan):
            ranked.append(c)
    if not ranked:
        raise ConfigError("cluster", "no even split fits in memory")
    return min(ranked, key=lambda c: c.step_time)


def efficiency(cluster: Cluster, model: ModelSpec, config: SearchConfig, throughput: float, *,
               profiles: Mapping | None = None) -> tuple[float | None, dict[str, float]]:
    """Heterogeneous efficiency: ``throughput`` / sum over device types of the best throughput that type's devices
    reach alone (each its own homogeneous cluster and best plan; 0 where that type alone cannot hold the model).

    Returns (efficiency or None if no type fits alone, samples/s per type)."""
    per: dict[str, float] = {}
    types = cluster.device_types()
    if len(types) == 1:
        return 1.0, {next(iter(types)): throughput}
    for tid in types:
        sub = cluster.subset(tid)
        try:
            res = search(sub, model, dataclasses.replace(config, time_limit_s=None), profiles=profiles)
            per[tid] = res.best.plan.predicted.throughput_samples_s
        except ConfigError:
            per[tid] = 0.0
    total = sum(per.values())
    return (throughput / total if total > 0 else None), per


def prediction_summary(p: Prediction) -> dict:
    """The headline figures of a prediction."""
    return {"step_time_s": p.step_time_s, "throughput_samples_s": p.throughput_samples_s,
            "throughput_tokens_s": p.throughput_tokens_s, "bubble_fraction": p.bubble_fraction,
            "efficiency": p.efficiency}
