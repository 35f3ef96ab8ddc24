"""Device profiles: measured numbers of one device type that calibrate the predictor, and ``hetero profile``.

A :class:`DeviceProfile` holds what microbenchmarks measured on one device: peak FLOP/s per dtype (the best GEMM
of the grid), memory bandwidth, the runtime's memory baseline, every GEMM and layer timing, AdamW step times,
and gloo collective timings with the alpha-beta link fitted to them. It round-trips through JSON; the efficiency
regressors (``hetero.predictor.calibrate``) are refitted from the records on load (deterministic).
``compute.layer_times(..., profile=p)`` uses it; ``predict(..., profiles={device_id: p})`` passes it on.

    hetero profile --device cpu -o profile.json           # about a minute on 2 cores
    hetero profile --device cpu --quick -o profile.json   # a smaller grid (tests)

The microbenchmarks themselves live in ``hetero.predictor.microbench``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hetero.config import ConfigError, build, check, load_json, to_dict, under_file

PROFILE_VERSION = 1


@dataclass(kw_only=True)
class GemmRecord:
    """One timed GEMM: (m x k) @ (k x n)."""

    m: int
    """Rows of the left operand."""
    n: int
    """Columns of the right operand."""
    k: int
    """Inner dimension."""
    dtype: str
    """Compute dtype (fp32, bf16, ...)."""
    seconds: float
    """Median seconds per GEMM."""

    def __post_init__(self):
        check(min(self.m, self.n, self.k) > 0, "m", "GEMM sizes must be > 0")
        check(self.seconds > 0, "seconds", "must be > 0")


@dataclass(kw_only=True)
class LayerRecord:
    """One timed layer (forward and backward of one micro-batch), with its shape."""

    kind: str
    """Layer kind: transformer, head, embedding, other."""
    dtype: str
    """Compute dtype."""
    hidden: int
    """Hidden size."""
    ffn: int = 0
    """MLP width (transformer)."""
    heads: int = 1
    """Attention heads (transformer)."""
    seq: int = 1
    """Tokens per sample."""
    vocab: int = 0
    """Vocabulary size (head, embedding)."""
    mbs: int = 1
    """Samples per micro-batch."""
    tp: int = 1
    """TP degree the layer was split over (the time is one shard's)."""
    flops_fwd: float
    """Forward FLOPs of the micro-batch on one shard."""
    fwd_s: float
    """Median forward seconds."""
    bwd_s: float
    """Median backward seconds (0 if not measured)."""

    def __post_init__(self):
        check(self.hidden > 0, "hidden", "must be > 0")
        check(self.mbs > 0 and self.tp > 0 and self.seq > 0, "mbs", "mbs, tp and seq must be > 0")
        check(self.fwd_s > 0, "fwd_s", "must be > 0")
        check(self.bwd_s >= 0, "bwd_s", "must be >= 0")

    def features(self) -> dict[str, float]:
        """Shape features for calibration (see ``calibrate.layer_features``)."""
        return dict(tokens=self.mbs * self.seq, hidden=self.hidden, ffn=self.ffn / self.tp, seq=self.seq,
                    heads=self.heads / self.tp, vocab=self.vocab / self.tp, flops=self.flops_fwd)

    def key(self) -> tuple:
        """Exact-match key used by ``compute`` to take a measured time directly."""
        return (self.kind, self.dtype, self.hidden, self.ffn, self.heads, self.seq, self.vocab, self.mbs, self.tp)


@dataclass(kw_only=True)
class OptimizerRecord:
    """One timed AdamW step."""

    params: int
    """Parameters updated."""
    seconds: float
    """Median seconds per step."""


@dataclass(kw_only=True)
class CollectiveRecord:
    """One timed collective over gloo (or the device's native backend)."""

    op: str
    """all_reduce, all_gather, broadcast or send_recv."""
    world_size: int
    """Ranks taking part."""
    nbytes: int
    """Message size in bytes (per rank's buffer)."""
    seconds: float
    """Median seconds."""


@dataclass(kw_only=True)
class DeviceProfile:
    """Measured numbers of one device type (see the module docstring)."""

    version: int = PROFILE_VERSION
    """Profile schema version."""
    device: str
    """Device type id this profile calibrates (the key in ``predict(profiles=...)``)."""
    description: str = ""
    """Free text: CPU model, GPU name, host."""
    torch_version: str = ""
    """torch version the measurements used."""
    threads: int = 1
    """Intra-op threads the measurements used (CPU)."""
    peak_flops: dict[str, float]
    """Best measured FLOP/s per dtype (largest GEMM of the grid)."""
    memory_bandwidth: float
    """Measured memory bandwidth, bytes/s (large copy: read + write)."""
    memory_overhead_bytes: int = 0
    """Runtime baseline per rank: Python + torch RSS on CPU, CUDA context + allocator on GPU."""
    memory_runtime_bytes: int = 0
    """Resident memory a rank gains in its first training steps beyond its tensors (autograd engine, allocator
    heap, backend buffers); a memory model adds it to ``memory_overhead_bytes``."""
    gemms: list[GemmRecord] = field(default_factory=list)
    """GEMM timings over the grid."""
    layers: list[LayerRecord] = field(default_factory=list)
    """Layer timings (transformer blocks, LM heads)."""
    optimizer: list[OptimizerRecord] = field(default_factory=list)
    """AdamW step timings."""
    collectives: list[CollectiveRecord] = field(default_factory=list)
    """Collective timings over sizes."""
    link_latency_s: float = 0.0
    """Alpha of the alpha-beta fit to the point-to-point timings, seconds (0 if not measured)."""
    link_bandwidth: float = 0.0
    """Beta^-1 of that fit, bytes/s (0 if not measured)."""
    clock: str = "wall"
    """Clock of the compute timings: ``wall`` or ``thread_cpu`` (CPU profiles: thread-CPU seconds, i.e. the cost on
    an idle core)."""
    contention: float = 1.0
    """Wall / thread-CPU seconds during the layer measurements (CPU): 1 on an idle machine, > 1 when other
    processes competed for the cores while profiling (shared machines)."""
    calibration: dict[str, Any] = field(default_factory=dict)
    """Fit quality of the efficiency regressors (filled by ``summarize``; informational)."""

    def __post_init__(self):
        check(self.version == PROFILE_VERSION, "version", f"unsupported profile version {self.version}")
        check(bool(self.device), "device", "must not be empty")
        check(bool(self.peak_flops), "peak_flops", "needs at least one dtype")
        for k, v in self.peak_flops.items():
            check(v > 0, f"peak_flops.{k}", "must be > 0")
        check(self.memory_bandwidth > 0, "memory_bandwidth", "must be > 0")
        check(self.memory_overhead_bytes >= 0, "memory_overhead_bytes", "must be >= 0")
        check(self.memory_runtime_bytes >= 0, "memory_runtime_bytes", "must be >= 0")
        check(self.contention > 0, "contention", "must be > 0")
        check(self.clock in ("wall", "thread_cpu"), "clock", f"must be wall or thread_cpu, got {self.clock!r}")

    # -- fitted models (rebuilt from the records, cached on the instance)
    @functools.cached_property
    def gemm_model(self):
        """``calibrate.GemmEfficiency`` fitted on ``gemms``."""
        from hetero.predictor.calibrate import GemmEfficiency

        return GemmEfficiency.fit(self.gemms, self.peak_flops)

    @functools.cached_property
    def layer_model(self):
        """``calibrate.LayerEfficiency`` fitted on ``layers``."""
        from hetero.predictor.calibrate import LayerEfficiency

        return LayerEfficiency.fit(self.layers, self.peak_flops)

    @functools.cached_property
    def layer_table(self) -> dict[tuple, LayerRecord]:
        """Exact-match lookup of measured layers by ``LayerRecord.key()``."""
        return {r.key(): r for r in self.layers}

    @functools.cached_property
    def cache(self) -> dict:
        """Per-profile memo of computed layer times (used by ``compute``)."""
        return {}

    def peak(self, dtype: str) -> float | None:
        """Measured peak for ``dtype`` (bf16 falls back to fp16 and back), None if not measured."""
        for d in {"bf16": ["bf16", "fp16"], "fp16": ["fp16", "bf16"], "tf32": ["tf32", "fp32"]}.get(dtype, [dtype]):
            if d in self.peak_flops:
                return self.peak_flops[d]
        return None

    def optimizer_time(self, params: float) -> float | None:
        """Seconds of an AdamW step over ``params`` parameters: a least-squares line through the optimizer
        records (fixed cost + cost per parameter), None without records."""
        rs = [r for r in self.optimizer if r.seconds > 0]
        if not rs:
            return None
        if len(rs) == 1:
            return rs[0].seconds * params / rs[0].params
        n = len(rs)
        xs = [float(r.params) for r in rs]
        ys = [r.seconds for r in rs]
        mx, my = sum(xs) / n, sum(ys) / n
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else my / mx
        slope = max(slope, 0.0)
        fixed = max(my - slope * mx, 0.0)
        return fixed + slope * params

    @functools.cached_property
    def collective_links(self) -> dict[str, Any]:
        """Per collective op, the alpha-beta ``Link`` that best explains that op's own records through its ring
        formula (``fit_op_link``): gloo's all-reduce also pays the reduction and its chunking, so one link fitted
        to send/recv under-prices it. Empty without records."""
        ops = sorted({r.op for r in self.collectives})
        out = {}
        for op in ops:
            alpha, bw = fit_op_link(self.collectives, op)
            if bw > 0:
                from hetero.cluster.spec import Link

                out[op] = Link(fabric=f"profiled-{op}", bandwidth=bw, latency=alpha)
        return out

    # -- derived profiles
    def scaled(self, *, device: str, scale: float) -> DeviceProfile:
        """The profile of a device ``scale`` times as fast (an emulated slower device for ``scale < 1``): every
        FLOP/s and bandwidth multiplied, every compute timing divided by ``scale``; collectives unchanged."""
        check(scale > 0, "scale", "must be > 0")
        return DeviceProfile(
            device=device, description=f"{self.description} (scaled x{scale:g})", torch_version=self.torch_version,
            threads=self.threads, peak_flops={k: v * scale for k, v in self.peak_flops.items()},
            memory_bandwidth=self.memory_bandwidth * scale, memory_overhead_bytes=self.memory_overhead_bytes,
            memory_runtime_bytes=self.memory_runtime_bytes,
            gemms=[dataclasses.replace(g, seconds=g.seconds / scale) for g in self.gemms],
            layers=[dataclasses.replace(r, fwd_s=r.fwd_s / scale, bwd_s=r.bwd_s / scale) for r in self.layers],
            optimizer=[dataclasses.replace(o, seconds=o.seconds / scale) for o in self.optimizer],
            collectives=list(self.collectives), link_latency_s=self.link_latency_s,
            link_bandwidth=self.link_bandwidth, clock=self.clock, contention=self.contention,
            calibration=dict(self.calibration))

    # -- JSON
    def to_dict(self) -> dict:
        """Plain data (round-trips through ``from_dict``)."""
        return to_dict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text; written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: Any) -> DeviceProfile:
        """Validate a parsed profile; errors name the key path."""
        return build(cls, data)

    @classmethod
    def from_json(cls, path: str | Path) -> DeviceProfile:
        """Read a profile JSON file."""
        data = load_json(path)
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise under_file(path, e) from None


# per op: (number of alpha terms, bytes over the link per byte of message) of its ring formula for n ranks
_OP_SHAPE = {
    "send_recv": lambda n: (1.0, 1.0),
    "all_reduce": lambda n: (2.0 * (n - 1), 2.0 * (n - 1) / n),
    "all_gather": lambda n: (n - 1.0, (n - 1) / n),
    "reduce_scatter": lambda n: (n - 1.0, (n - 1) / n),
    "broadcast": lambda n: (n - 1.0, 1.0),
}


def fit_op_link(records: list[CollectiveRecord], op: str) -> tuple[float, float]:
    """(alpha seconds, bandwidth bytes/s) fitted to the records of one collective ``op`` through its ring formula
    (``comm``'s cost model), least squares on relative error; (0, 0) with fewer than two message sizes."""
    import numpy as np

    if op not in _OP_SHAPE:
        return 0.0, 0.0
    rows, ys = [], []
    for r in records:
        if r.op == op and r.world_size > 1 and r.seconds > 0:
            na, nb = _OP_SHAPE[op](r.world_size)
            rows.append((na, nb * r.nbytes))
            ys.append(r.seconds)
    if len({b for _, b in rows}) < 2:
        return 0.0, 0.0
    a = np.array(rows) / np.array(ys)[:, None]
    sol, *_ = np.linalg.lstsq(a, np.ones(len(ys)), rcond=None)
    alpha, inv_b = float(sol[0]), float(sol[1])
    if inv_b <= 0:
        big = max(range(len(ys)), key=lambda i: rows[i][1])
        inv_b, alpha = ys[big] / rows[big][1], 0.0
    return max(alpha, 0.0), 1.0 / inv_b


def fit_link(records: list[CollectiveRecord]) -> tuple[float, float]:
    """(latency alpha in seconds, bandwidth B in bytes/s) of the alpha-beta link that best explains the
    ``send_recv`` (alpha + S/B) and ring ``all_reduce`` (2(n-1) alpha + 2(n-1)/n S/B) records, by least squares on
    relative error; (0, 0) when fewer than two message sizes were measured."""
    import numpy as np

    rows, ys = [], []
    for r in records:
        n = r.world_size
        if r.op == "send_recv":
            rows.append((1.0, float(r.nbytes)))
        elif r.op == "all_reduce" and n > 1:
            rows.append((2.0 * (n - 1), 2.0 * (n - 1) / n * r.nbytes))
        else:
            continue
        ys.append(r.seconds)
    if len({b for _, b in rows}) < 2:
        return 0.0, 0.0
    a = np.array(rows) / np.array(ys)[:, None]  # divide each equation by its time: relative error
    sol, *_ = np.linalg.lstsq(a, np.ones(len(ys)), rcond=None)
    alpha, inv_b = float(sol[0]), float(sol[1])
    if inv_b <= 0:  # degenerate (noise): bandwidth from the largest message alone
        big = max(range(len(ys)), key=lambda i: rows[i][1])
        inv_b = ys[big] / rows[big][1]
        alpha = 0.0
    return max(alpha, 0.0), 1.0 / inv_b


def summarize(profile: DeviceProfile) -> dict[str, Any]:
    """Leave-one-out-free quick fit quality: in-sample MAPE of the fitted regressors on their own records
    (the held-out check lives in the tests)."""
    from hetero.predictor.calibrate import mape

    out: dict[str, Any] = {}
    gm = profile.gemm_model
    for dtype in gm.fits:
        rs = [r for r in profile.gemms if r.dtype == dtype]
        eff = gm.efficiency(dtype, [r.m for r in rs], [r.n for r in rs], [r.k for r in rs])
        pred = [2 * r.m * r.n * r.k / (e * profile.peak_flops[dtype]) for r, e in zip(rs, eff)]
        out[f"gemm_{dtype}_fit_mape"] = round(mape(pred, [r.seconds for r in rs]), 2)
        out[f"gemm_{dtype}_n"] = len(rs)
    lm = profile.layer_model
    for kind, direction, dtype in lm.fits:
        rs = [r for r in profile.layers if r.kind == kind and r.dtype == dtype]
        eff = lm.efficiency(kind, direction, dtype, [r.features() for r in rs])
        mult = 1.0 if direction == "fwd" else 2.0
        pred = [mult * r.flops_fwd / (e * profile.peak_flops[dtype]) for r, e in zip(rs, eff)]
        true = [r.fwd_s if direction == "fwd" else r.bwd_s for r in rs]
        out[f"layer_{kind}_{direction}_{dtype}_fit_mape"] = round(mape(pred, true), 2)
    return out


# ----------------------------------------------------------------------------- CLI: hetero profile

def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``hetero profile``."""
    p.add_argument("--device", default="cpu", help="device to profile: cpu (cuda when a GPU is present)")
    p.add_argument("--id", default=None, help="device type id to record (default: the discovered id)")
    p.add_argument("-o", "--output", default=None, help="write the profile JSON here (default: print a summary)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for CPU measurements (default 1: one "
                   "thread per rank, as training runs)")
    p.add_argument("--quick", action="store_true", help="a small grid (seconds instead of a minute)")
    p.add_argument("--no-collectives", action="store_true", help="skip the gloo collective measurements")
    p.add_argument("--dtypes", default=None, help="comma-separated dtypes (default fp32,bf16 on CPU)")


def run(args: argparse.Namespace) -> int:
    """Run the microbenchmarks and write (or summarise) the profile."""
    from hetero.predictor.microbench import ProfileConfig, profile_device

    dtypes = tuple(d.strip() for d in args.dtypes.split(",")) if args.dtypes else None
    cfg = ProfileConfig(device=args.device, device_id=args.id, threads=args.threads, quick=args.quick,
                        collectives=not args.no_collectives, **({"dtypes": dtypes} if dtypes else {}))
    prof = profile_device(cfg, progress=True)
    peaks = ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in prof.peak_flops.items())
    print(f"{prof.device}: {peaks}; bandwidth {prof.memory_bandwidth / 1e9:.1f} GB/s; "
          f"baseline {prof.memory_overhead_bytes / 2**20:.0f} MiB; {len(prof.gemms)} GEMMs, "
          f"{len(prof.layers)} layers, {len(prof.collectives)} collectives")
    if prof.link_bandwidth > 0:
        print(f"gloo p2p fit: latency {prof.link_latency_s * 1e6:.0f} us, bandwidth {prof.link_bandwidth / 1e9:.2f} GB/s")
    for k, v in prof.calibration.items():
        print(f"  {k}: {v}")
    if args.output:
        prof.to_json(args.output)
        print(f"wrote {args.output}")
    return 0 if math.isfinite(prof.memory_bandwidth) else 1
