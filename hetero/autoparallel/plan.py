"""The Plan: the contract between planner, predictor, runtime and RL scheduler.

A Plan says how one training step of a model runs on a cluster: the global batch, the number of micro-batches,
the pipeline schedule, and a list of **stages**. Each stage owns a contiguous layer range ``[start, end)`` of the
ModelSpec, runs on devices of one type, and is replicated ``dp`` times, each replica tensor-parallel over ``tp``
ranks. Replica ``d`` of every stage forms pipeline ``d``; its batch share (samples per step) may differ from the
other replicas' (weighted DP), and its micro-batch size is ``batch_shares[d] / num_microbatches``.

Rank layout inside a stage: ``ranks[d * tp + t]`` is DP replica ``d``, TP index ``t``.

    plan = Plan.from_file("plan.yaml"); plan.validate(world_size=8, num_layers=26)
    plan.to_file("plan.json")     # YAML or JSON by suffix; round-trips without loss
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hetero.autoparallel.roles import RolePlan
from hetero.config import ConfigError, build, check, load_json, load_yaml, to_dict, under_file

PLAN_VERSION = 1
Schedule = Literal["gpipe", "1f1b", "interleaved_1f1b"]


@dataclass(kw_only=True)
class Stage:
    """One pipeline stage: a layer range on ``tp * dp`` devices (one type per DP replica)."""

    layers: tuple[int, int]
    """Layer range [start, end) into ModelSpec.layers."""
    device_type: str
    """Device type id of the stage's ranks (of replica 0 when ``replica_types`` is given)."""
    ranks: list[int]
    """Global ranks, ``ranks[d * tp + t]`` = DP replica d, TP index t."""
    tp: int = 1
    """Tensor-parallel degree (inside one node, one device type)."""
    dp: int = 1
    """Data-parallel degree (number of replicas of this stage)."""
    batch_shares: list[int] = field(default_factory=list)
    """Samples per step for each DP replica (may be unequal); empty means an equal split."""
    tp_shares: list[float] | None = None
    """Fraction of each TP shard (speed-proportional); None means equal shards."""
    recompute: bool = False
    """Activation recomputation on this stage."""
    replica_types: list[str] | None = None
    """Device type of each DP replica when they differ (weighted DP across types, shares by speed); None: all
    replicas are ``device_type``."""

    def __post_init__(self):
        self.layers = tuple(self.layers)
        check(len(self.layers) == 2 and 0 <= self.layers[0] < self.layers[1], "layers",
              f"must be [start, end) with 0 <= start < end, got {list(self.layers)}")
        check(self.tp >= 1, "tp", "must be >= 1")
        check(self.dp >= 1, "dp", "must be >= 1")
        check(len(self.ranks) == self.tp * self.dp, "ranks",
              f"has {len(self.ranks)} ranks but tp*dp = {self.tp}*{self.dp} = {self.tp * self.dp}")
        check(len(set(self.ranks)) == len(self.ranks), "ranks", "lists a rank twice")
        check(all(r >= 0 for r in self.ranks), "ranks", "must be >= 0")
        if self.batch_shares:
            check(len(self.batch_shares) == self.dp, "batch_shares",
                  f"has {len(self.batch_shares)} entries but dp = {self.dp}")
            check(all(s > 0 for s in self.batch_shares), "batch_shares", "must all be > 0")
        if self.tp_shares is not None:
            check(len(self.tp_shares) == self.tp, "tp_shares", f"has {len(self.tp_shares)} entries but tp = {self.tp}")
            check(all(s > 0 for s in self.tp_shares), "tp_shares", "must all be > 0")
            check(abs(sum(self.tp_shares) - 1.0) < 1e-6, "tp_shares", f"must sum to 1, got {sum(self.tp_shares):.6f}")
        if self.replica_types is not None:
            check(len(self.replica_types) == self.dp, "replica_types",
                  f"has {len(self.replica_types)} entries but dp = {self.dp}")
            check(self.replica_types[0] == self.device_type, "replica_types",
                  f"replica 0 is {self.replica_types[0]!r} but device_type is {self.device_type!r}")

    def type_of(self, dp_index: int) -> str:
        """Device type of DP replica ``dp_index``."""
        return self.replica_types[dp_index] if self.replica_types is not None else self.device_type

    @property
    def types(self) -> list[str]:
        """Distinct device types of this stage, replica order."""
        return list(dict.fromkeys(self.replica_types or [self.device_type]))

    @property
    def num_layers(self) -> int:
        """Layers in this stage."""
        return self.layers[1] - self.layers[0]

    def rank(self, dp_index: int, tp_index: int) -> int:
        """Global rank of (dp_index, tp_index)."""
        return self.ranks[dp_index * self.tp + tp_index]


@dataclass(kw_only=True)
class Prediction:
    """What the predictor expects of a plan (filled in by predictor/planner; absent on hand-written plans)."""

    step_time_s: float
    """Predicted seconds per training step."""
    throughput_samples_s: float = 0.0
    """Samples per second."""
    throughput_tokens_s: float = 0.0
    """Tokens per second (samples x seq_len)."""
    bubble_fraction: float = 0.0
    """Fraction of the step the slowest-busy stage idles."""
    stage_busy_s: list[float] = field(default_factory=list)
    """Compute-busy seconds per stage per step."""
    rank_memory_bytes: dict[int, int] = field(default_factory=dict)
    """Predicted peak memory per rank."""
    efficiency: float | None = None
    """Heterogeneous efficiency: throughput / sum of per-type homogeneous throughputs."""


@dataclass(kw_only=True)
class Plan:
    """A validated parallel plan (see the module docstring)."""

    version: int = PLAN_VERSION
    """Schema version."""
    model: str
    """Model name (preset or ModelSpec.name)."""
    num_layers: int
    """Number of layers in the ModelSpec the plan was made for."""
    global_batch: int
    """Samples per optimizer step, over all DP replicas."""
    num_microbatches: int = 1
    """Micro-batches per pipeline per step."""
    seq_len: int = 0
    """Sequence length (tokens per sample; 0 for non-sequence models)."""
    schedule: Schedule = "1f1b"
    """Pipeline schedule."""
    virtual_stages: int = 1
    """Model chunks per rank (interleaved 1F1B)."""
    dtype: str = "bf16"
    """Compute dtype."""
    stages: list[Stage]
    """Pipeline stages in order."""
    model_hash: str = ""
    """Fingerprint of the ModelSpec the plan was made for."""
    cluster_hash: str = ""
    """Fingerprint of the Cluster the plan was made for."""
    predicted: Prediction | None = None
    """The predictor's figures for this plan."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (planner version, search time, ...)."""
    roles: RolePlan | None = None
    """RL roles (env / rollout / actor ranks, placement mode, k); None for plain training plans."""

    def __post_init__(self):
        check(self.version == PLAN_VERSION, "version", f"unsupported plan version {self.version} (this hetero reads {PLAN_VERSION})")
        check(self.num_layers > 0, "num_layers", "must be > 0")
        check(self.global_batch > 0, "global_batch", "must be > 0")
        check(self.num_microbatches > 0, "num_microbatches", "must be > 0")
        check(self.virtual_stages >= 1, "virtual_stages", "must be >= 1")
        check(len(self.stages) > 0, "stages", "must list at least one stage")
        # fill equal batch shares where omitted
        for i, s in enumerate(self.stages):
            if not s.batch_shares:
                check(self.global_batch % s.dp == 0, f"stages[{i}].batch_shares",
                      f"omitted, but global_batch {self.global_batch} is not divisible by dp {s.dp}")
                s.batch_shares = [self.global_batch // s.dp] * s.dp
        self._check_structure()

    def _check_structure(self) -> None:
        expect = 0
        for i, s in enumerate(self.stages):
            p = f"stages[{i}]"
            check(s.layers[0] == expect, f"{p}.layers",
                  f"starts at layer {s.layers[0]} but the previous stage ends at {expect} (ranges must be contiguous)")
            expect = s.layers[1]
            check(sum(s.batch_shares) == self.global_batch, f"{p}.batch_shares",
                  f"sum to {sum(s.batch_shares)} but global_batch is {self.global_batch}")
            for d, share in enumerate(s.batch_shares):
                check(share % self.num_microbatches == 0, f"{p}.batch_shares[{d}]",
                      f"share {share} is not divisible by num_microbatches {self.num_microbatches}")
            if i > 0:
                prev = self.stages[i - 1]
                check(s.dp == prev.dp and s.batch_shares == prev.batch_shares, f"{p}.dp",
                      "every stage must have the same dp and batch_shares (replica d of each stage forms pipeline d)")
        check(expect == self.num_layers, f"stages[{len(self.stages) - 1}].layers",
              f"ends at layer {expect} but the model has {self.num_layers} layers")
        seen: dict[int, int] = {}
        for i, s in enumerate(self.stages):
            for r in s.ranks:
                check(r not in seen, f"stages[{i}].ranks", f"rank {r} is already used by stages[{seen.get(r)}]")
                seen[r] = i
        if self.schedule == "interleaved_1f1b":
            check(self.num_microbatches % len(self.stages) == 0 or len(self.stages) == 1, "num_microbatches",
                  "interleaved 1F1B needs num_microbatches divisible by the number of stages")

    # -- queries
    @property
    def pp(self) -> int:
        """Pipeline depth."""
        return len(self.stages)

    @property
    def dp(self) -> int:
        """Number of pipelines (DP replicas)."""
        return self.stages[0].dp

    @property
    def world_size(self) -> int:
        """Ranks the plan uses (with RL roles: every rank of any role, the stages cover the actor ranks)."""
        n = sum(len(s.ranks) for s in self.stages)
        return max(n, self.roles.world_size) if self.roles is not None else n

    def micro_batch_size(self, dp_index: int) -> int:
        """Samples per micro-batch of pipeline ``dp_index``."""
        return self.stages[0].batch_shares[dp_index] // self.num_microbatches

    def rank_map(self) -> dict[int, tuple[int, int, int]]:
        """rank -> (stage index, dp index, tp index)."""
        out = {}
        for si, s in enumerate(self.stages):
            for d in range(s.dp):
                for t in range(s.tp):
                    out[s.rank(d, t)] = (si, d, t)
        return out

    def validate(self, *, world_size: int | None = None, num_layers: int | None = None,
                 rank_types: list[str] | None = None) -> Plan:
        """Check the plan against a world (ranks covered exactly once), a model (layer count) and the device
        type of each rank; raise ConfigError naming the stage. Returns self."""
        if num_layers is not None:
            check(num_layers == self.num_layers, "num_layers",
                  f"plan was made for a model with {self.num_layers} layers, this model has {num_layers}")
        if world_size is not None and self.roles is not None:  # RL: the roles cover the world, stages the actors
            self.roles.validate(world_size=world_size)
            outside = sorted(set(self.rank_map()) - set(range(world_size)))
            check(not outside, "stages", f"ranks {_ranges(outside)} are outside the world of {world_size} ranks")
        elif world_size is not None:
            used = set(self.rank_map())
            check(len(used) == world_size and used == set(range(world_size)), "stages",
                  f"plan covers ranks {_ranges(sorted(used))} but the world has {world_size} ranks "
                  f"(0..{world_size - 1}); every rank must be in exactly one stage")
        if rank_types is not None:
            for i, s in enumerate(self.stages):
                for d in range(s.dp):
                    for t in range(s.tp):
                        r, want = s.rank(d, t), s.type_of(d)
                        check(r < len(rank_types), f"stages[{i}].ranks",
                              f"rank {r} is outside the cluster ({len(rank_types)} devices)")
                        check(rank_types[r] == want,
                              f"stages[{i}].{'replica_types' if s.replica_types else 'device_type'}",
                              f"is {want!r} but rank {r} is a {rank_types[r]!r}")
        return self

    def validate_memory(self, capacity: dict[str, int], rank_memory: dict[int, int] | None = None) -> Plan:
        """Check that every rank's predicted memory (``rank_memory``, else ``predicted.rank_memory_bytes``) fits
        the capacity of its stage's device type (``capacity``: bytes by type id); raise ConfigError naming the
        first stage that does not fit. Returns self."""
        mem = rank_memory if rank_memory is not None else (self.predicted.rank_memory_bytes if self.predicted else None)
        check(mem is not None, "predicted.rank_memory_bytes",
              "no per-rank memory to check (predict the plan first, e.g. `hetero predict`)")
        for i, s in enumerate(self.stages):
            for typ in s.types:
                check(typ in capacity, f"stages[{i}].device_type",
                      f"{typ!r} is not a device type of this cluster ({', '.join(capacity)})")
            for d in range(s.dp):
                typ = s.type_of(d)
                cap = capacity[typ]
                need, worst = max((mem.get(s.rank(d, t), 0), s.rank(d, t)) for t in range(s.tp))
                check(need <= cap, f"stages[{i}]",
                      f"stage on {len(s.ranks)}×{'+'.join(s.types)} (layers {s.layers[0]}-{s.layers[1] - 1}, "
                      f"tp {s.tp}, dp {s.dp}, recompute {'on' if s.recompute else 'off'}) needs "
                      f"{need / 2**30:.1f} GiB on rank {worst} ({typ}) but the device has {cap / 2**30:.1f} GiB")
        return self

    # -- serialisation
    def to_dict(self) -> dict:
        """Plain-data form (YAML/JSON)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        """Validate a parsed plan mapping."""
        if isinstance(data, dict) and "predicted" in data and isinstance(data["predicted"], dict):
            pm = data["predicted"].get("rank_memory_bytes")
            if isinstance(pm, dict):  # JSON turns int keys into strings
                data = {**data, "predicted": {**data["predicted"],
                                              "rank_memory_bytes": {int(k): v for k, v in pm.items()}}}
        return build(cls, data)

    def to_file(self, path: str | Path) -> None:
        """Write YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        p = Path(path)
        if p.suffix in (".yaml", ".yml"):
            p.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_file(cls, path: str | Path) -> Plan:
        """Read and validate a YAML or JSON plan; errors name the file and key path."""
        data = load_json(path) if Path(path).suffix == ".json" else load_yaml(path)
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise under_file(path, e) from None


def split_sizes(total: int, shares: list[float] | None, n: int, *, what: str) -> list[int]:
    """Split ``total`` units (heads, FFN columns) over ``n`` ranks in proportion to ``shares`` (equal when None),
    by largest remainder; every rank gets at least one unit. Returns the sizes (sum = total)."""
    if shares is None:
        shares = [1.0 / n] * n
    if total < n:
        raise ConfigError("tp_shares", f"cannot split {total} {what} over {n} TP ranks (need at least one each)")
    raw = [total * s for s in shares]
    sizes = [max(1, int(r)) for r in raw]
    while sum(sizes) > total:  # the max(1, .) floor may overshoot: take from the largest
        i = max((k for k in range(n) if sizes[k] > 1), key=lambda k: sizes[k] - raw[k])
        sizes[i] -= 1
    order = sorted(range(n), key=lambda k: raw[k] - sizes[k], reverse=True)
    k = 0
    while sum(sizes) < total:
        sizes[order[k % n]] += 1
        k += 1
    return sizes


def _ranges(xs: list[int]) -> str:
    if not xs:
        return "none"
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)
