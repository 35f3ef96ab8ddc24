"""Layer partition over pipeline stages: cost arrays from the predictor, the C++ DP, and a brute-force reference.

The planner fixes everything but the layer boundaries (which device type and TP degree each pipeline position
has, the micro-batch size, schedule, number of micro-batches), then asks: which contiguous layer ranges minimise

    objective = w_max * max_s T_s + w_sum * sum_s T_s      (1F1B / GPipe: w_max = m - 1, w_sum = 1)

where ``T_s`` is stage s's forward + backward seconds per micro-batch, subject to each stage's predicted memory
fitting its devices. Per-layer times come from ``hetero.predictor.compute.layer_times`` (plus the Megatron TP
all-reduces of ``LayerSpec.tp_comm_bytes`` costed by ``hetero.predictor.comm``), and per-layer memory terms
are the additive pieces of ``hetero.predictor.memory.stage_memory`` (state bytes from ``state_bytes_per_param``,
in-flight micro-batches from ``in_flight``); ``tests/test_planner_partition.py`` checks that the DP's memory for a
range equals ``stage_memory`` and that its result equals exhaustive enumeration. A stage whose range does not
fit without recomputation is costed with recomputation (one extra forward) when that fits.

    python -c "from hetero.autoparallel.partition import demo; demo()"
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hetero.cluster.spec import DeviceType, Link
from hetero.models.spec import DTYPE_BYTES, ModelSpec
from hetero.predictor import comm
from hetero.predictor.compute import layer_times
from hetero.predictor.memory import in_flight, state_bytes_per_param


@dataclass(frozen=True)
class Slot:
    """A pipeline position before layers are assigned: the device type of its ranks and its TP degree."""

    device: DeviceType
    """Device type of every rank of the stage."""
    tp: int = 1
    """Tensor-parallel degree."""
    tp_link: Link | None = None
    """Link joining the stage's TP group (None when tp == 1)."""
    overhead_bytes: float = 0.0
    """Runtime memory overhead per rank (from a device profile; 0 with catalog priors)."""


@dataclass
class CostArrays:
    """Inputs of the DP; 2-D arrays have shape (stages, layers)."""

    time0: np.ndarray
    """Forward + backward seconds per layer per micro-batch, no recomputation."""
    time_rc: np.ndarray
    """The same with recomputation (one extra forward, and its TP all-reduce)."""
    state: np.ndarray
    """Weights + gradients + optimizer bytes per layer per rank."""
    act: np.ndarray
    """Activation bytes kept per layer per in-flight micro-batch, no recomputation."""
    act_rc: np.ndarray
    """Bytes kept per layer per in-flight micro-batch with recomputation (the layer input)."""
    worst_rc: np.ndarray
    """Bytes of one layer's saved activations: the transient of its backward (gradient buffers; with
    recomputation, the layer being recomputed); the stage's largest counts, with or without recomputation."""
    out: np.ndarray
    """p2p buffer bytes if the stage ends at this layer (0 when pp == 1)."""
    inflight: np.ndarray
    """Micro-batches in flight at each stage's peak, shape (stages,)."""
    overhead: np.ndarray
    """Runtime overhead bytes per rank, shape (stages,)."""
    capacity: np.ndarray
    """Device memory bytes, shape (stages,)."""
    w_max: float
    """Objective weight of the slowest stage."""
    w_sum: float
    """Objective weight of the sum of stages."""

    def stage_memory(self, s: int, lo: int, hi: int, recompute: bool) -> float:
        """Bytes per rank of stage ``s`` holding layers [lo, hi) (same sums as the C++ core)."""
        fixed = self.out[s, hi - 1] + self.overhead[s] + self.state[s, lo:hi].sum()
        if recompute:
            return float(fixed + self.inflight[s] * self.act_rc[s, lo:hi].sum() + self.worst_rc[s, lo:hi].max())
        return float(fixed + self.inflight[s] * self.act[s, lo:hi].sum() + self.worst_rc[s, lo:hi].max())


@dataclass
class Partition:
    """A layer split: boundaries (stages + 1 of them), per-stage recomputation and time, and the objective."""

    bounds: list[int]
    recompute: list[bool]
    stage_time: list[float]
    objective: float

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """[start, end) per stage."""
        return [(self.bounds[i], self.bounds[i + 1]) for i in range(len(self.bounds) - 1)]


_ARRAY_KEYS = ("time0", "time_rc", "state", "act", "act_rc", "worst_rc", "out")


def schedule_weights(schedule: str, m: int, virtual_stages: int = 1) -> tuple[float, float]:
    """(w_max, w_sum) of the pipeline-time objective: 1F1B/GPipe take (m - 1) x slowest + one pass through every
    stage; interleaved 1F1B with v chunks shrinks the fill/drain pass to 1/v."""
    v = virtual_stages if schedule == "interleaved_1f1b" else 1
    return m - 1.0 / v, 1.0 / v


def layer_rows(model: ModelSpec, slot: Slot, *, mbs: int, dtype: str, profile=None,
               cache: dict | None = None) -> dict[str, np.ndarray]:
    """Per-layer time and memory terms of one slot, each of shape (layers,): the CostArrays rows plus forward
    and backward seconds apart (``fwd0``/``bwd0``, with recomputation ``fwd_rc``/``bwd_rc``, the predictor's
    ``stage_times`` rule: recomputation adds one forward and one TP all-reduce to the backward). ``cache`` (one dict per model,
    owned by the caller) memoises them per (device, tp, link, mbs, dtype)."""
    dev = slot.device
    key = (dev.id, tuple(sorted(dev.peak_flops.items())), dev.memory_bandwidth, dev.matmul_efficiency, slot.tp, slot.tp_link, slot.overhead_bytes, mbs, dtype, id(profile))
    if cache is not None and key in cache:
        return cache[key]
    tp = slot.tp
    ft = np.array(layer_times(model, slot.device, mbs=mbs, tp=tp, dtype=dtype, profile=profile), dtype=float)
    f, b = ft[:, 0], ft[:, 1]
    scale = DTYPE_BYTES[dtype] / DTYPE_BYTES[model.dtype]
    if tp > 1:
        link = slot.tp_link
        if link is None:
            raise ValueError("a slot with tp > 1 needs tp_link")
        ar = np.array([comm.allreduce_time(layer.tp_comm_bytes * scale * mbs / 2, tp, link) * 2
                       for layer in model.layers])
    else:
        ar = np.zeros(len(f))
    wb, gb, ob = state_bytes_per_param(dtype, model.param_dtype)
    params = np.array([layer.params for layer in model.layers], dtype=float) / tp
    saved = np.array([layer.act_saved_bytes for layer in model.layers], dtype=float) * scale * mbs / tp
    rows = {
        "fwd0": f + ar,
        "bwd0": b + ar,
        "fwd_rc": f + ar,
        "bwd_rc": f + b + 2 * ar,
        "time0": f + b + 2 * ar,
        "time_rc": 2 * f + b + 3 * ar,
        "state": params * wb + params * gb + params * ob,
        "act": saved,
        "act_rc": np.array([layer.act_in_bytes for layer in model.layers], dtype=float) * scale * mbs,
        "worst_rc": saved,
        "out": 2 * np.array([layer.act_out_bytes for layer in model.layers], dtype=float) * scale * mbs,
    }
    if cache is not None:
        cache[key] = rows
    return rows


def cost_arrays(model: ModelSpec, slots: Sequence[Slot], *, mbs: int, num_microbatches: int,
                schedule: str = "1f1b", virtual_stages: int = 1, dtype: str | None = None,
                profiles: Mapping | None = None, cache: dict | None = None) -> CostArrays:
    """DP inputs for ``slots`` in pipeline order at micro-batch size ``mbs`` (``cache``: see layer_rows)."""
    # runs of identical slots share one row block (pipelines are long runs of one type)
    runs: list[tuple[Slot, int]] = []
    for sl in slots:
        if runs and runs[-1][0] is sl:
            runs[-1] = (sl, runs[-1][1] + 1)
        else:
            runs.append((sl, 1))
    return cost_arrays_runs(model, runs, mbs=mbs, num_microbatches=num_microbatches, schedule=schedule,
                            virtual_stages=virtual_stages, dtype=dtype, profiles=profiles, cache=cache)


def cost_arrays_runs(model: ModelSpec, runs: Sequence[tuple[Slot, int]], *, mbs: int, num_microbatches: int,
                     schedule: str = "1f1b", virtual_stages: int = 1, dtype: str | None = None,
                     profiles: Mapping | None = None, cache: dict | None = None) -> CostArrays:
    """``cost_arrays`` for a pipeline given as runs ``(slot, number of consecutive stages)``."""
    dtype = dtype or model.dtype
    p = sum(n for _, n in runs)
    reps = [n for _, n in runs]
    # the stacked per-layer arrays depend only on the runs and micro-batch size: memoise them in the same cache
    skey = ("stack", tuple((id(sl), n) for sl, n in runs), mbs, dtype)
    stack = cache.get(skey) if cache is not None else None
    if stack is None:
        rows = [layer_rows(model, sl, mbs=mbs, dtype=dtype, profile=(profiles or {}).get(sl.device.id),
                           cache=cache) for sl, _ in runs]
        stack = {k: np.repeat(np.stack([r[k] for r in rows]), reps, axis=0) for k in _ARRAY_KEYS}
        if p == 1:
            stack["out"] = np.zeros_like(stack["out"])
        if cache is not None:
            cache[skey] = stack
            cache.setdefault("_slots", []).extend(sl for sl, _ in runs)  # keep ids alive while cached
    v = virtual_stages if schedule == "interleaved_1f1b" else 1
    w_max, w_sum = schedule_weights(schedule, num_microbatches, v)
    return CostArrays(
        **stack,
        inflight=np.array([in_flight(schedule, pp=p, stage_index=s, num_microbatches=num_microbatches,
                                     virtual_stages=v) for s in range(p)], dtype=float),
        overhead=np.repeat([sl.overhead_bytes for sl, _ in runs], reps).astype(float),
        capacity=np.repeat([float(sl.device.memory_bytes) for sl, _ in runs], reps),
        w_max=w_max, w_sum=w_sum)


def _core():
    try:
        from hetero import _csrc
    except ImportError as e:  # pragma: no cover - the extension is built by `pip install -e .`
        raise ImportError("hetero._csrc is not built; run `pip install -e . --no-build-isolation`") from e
    return _csrc


def partition(c: CostArrays, *, allow_recompute: bool = True, bound: float = float("inf"),
              capacity_scale: float = 1.0) -> Partition | None:
    """The exact best partition (C++ DP); None when no split fits in memory (or none beats ``bound``)."""
    r = _core().partition(c.time0, c.time_rc, c.state, c.act, c.act_rc, c.worst_rc, c.out, c.inflight,
                          c.overhead, c.capacity * capacity_scale, c.w_max, c.w_sum, allow_recompute, bound, 0)
    if r is None:
        return None
    return Partition(bounds=list(r.bounds), recompute=list(r.recompute), stage_time=list(r.stage_time),
                     objective=float(r.objective))


def evaluate(c: CostArrays, bounds: Sequence[int], *, allow_recompute: bool = True,
             capacity_scale: float = 1.0) -> Partition | None:
    """Cost of one given split under the DP's rules (None if a stage does not fit)."""
    times, rcs = [], []
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        cap = c.capacity[s] * capacity_scale
        if c.stage_memory(s, lo, hi, False) <= cap:
            times.append(float(c.time0[s, lo:hi].sum()))
            rcs.append(False)
        elif allow_recompute and c.stage_memory(s, lo, hi, True) <= cap:
            times.append(float(c.time_rc[s, lo:hi].sum()))
            rcs.append(True)
        else:
            return None
    return Partition(bounds=list(bounds), recompute=rcs, stage_time=times,
                     objective=c.w_max * max(times) + c.w_sum * sum(times))


def brute_force(c: CostArrays, *, allow_recompute: bool = True) -> Partition | None:
    """Exhaustive reference: every composition of the layers into the stages (small cases only)."""
    p, n = c.time0.shape
    best = None
    for cuts in itertools.combinations(range(1, n), p - 1):
        r = evaluate(c, (0, *cuts, n), allow_recompute=allow_recompute)
        if r is not None and (best is None or r.objective < best.objective - 1e-15):
            best = r
    return best


def min_capacity_scale(c: CostArrays, *, hi: float = 1e4, iters: int = 40) -> float:
    """Smallest factor on every stage's capacity at which some split fits (bisection over the DP); used to
    explain infeasibility ("needs 41.2 GiB per device ...")."""
    lo = 0.0
    if partition(c, capacity_scale=hi) is None:
        return float("inf")
    for _ in range(iters):
        mid = (lo + hi) / 2
        if partition(c, capacity_scale=mid) is None:
            lo = mid
        else:
            hi = mid
    return hi


def demo() -> None:
    """Print the best split of GPT-2 small over an A100 stage and a V100 stage."""
    from hetero.cluster.catalog import resolve

    model = ModelSpec.preset("gpt2-small")
    slots = [Slot(device=resolve("A100")), Slot(device=resolve("V100"))]
    c = cost_arrays(model, slots, mbs=4, num_microbatches=8)
    print(partition(c))
