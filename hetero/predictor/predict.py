"""Score a Plan: step time, bubble, per-stage busy time, per-rank memory and throughput on a Cluster.

For every pipeline (DP replica d, with its own micro-batch size when batch shares are unequal) the per-stage
forward/backward times come from ``compute.layer_times`` on the stage's device type, plus Megatron TP all-reduces
over the stage's TP group; the pipeline schedule is simulated with the p2p transfer times between consecutive
stages. Each stage then all-reduces its gradients over its DP group (hierarchical when the group spans device
types) once the slowest replica has finished, and runs the optimizer step. The step time is the latest finish.

    hetero predict --cluster examples/clusters/a100_v100.yaml --model gpt2-small --plan plan.yaml
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hetero.autoparallel.plan import Plan, Prediction
from hetero.cluster.spec import Cluster, DeviceType
from hetero.config import ConfigError
from hetero.models.spec import DTYPE_BYTES, ModelSpec
from hetero.predictor import comm
from hetero.predictor.compute import layer_times, optimizer_step_time
from hetero.predictor.memory import MemoryBreakdown, stage_memory
from hetero.predictor.pipeline import Simulation, simulate


@dataclass
class StageReport:
    """Predicted figures of one stage (for tables)."""

    index: int
    device_type: str
    fwd_s: list[float]
    """Forward seconds per micro-batch, per DP replica."""
    bwd_s: list[float]
    """Backward seconds per micro-batch (incl. recomputation), per DP replica."""
    busy_s: float
    """Busy seconds per step of the slowest replica."""
    allreduce_s: float
    """Gradient all-reduce seconds."""
    optimizer_s: float
    """Optimizer step seconds."""
    memory: MemoryBreakdown
    """Memory of the replica with the largest micro-batch."""
    capacity_bytes: int
    """Device memory of this stage's type."""


@dataclass
class Report:
    """Everything ``predict_detailed`` computed."""

    prediction: Prediction
    stages: list[StageReport]
    simulations: list[Simulation]
    """One pipeline simulation per DP replica."""


def _profile_for(profiles: Mapping | None, dev: DeviceType):
    return None if not profiles else profiles.get(dev.id)


def stage_times(model: ModelSpec, plan: Plan, cluster: Cluster, stage_index: int, mbs: int,
                profiles: Mapping | None = None, dp_index: int = 0) -> tuple[float, float]:
    """(forward, backward) seconds of one micro-batch of ``mbs`` samples through stage ``stage_index`` on the
    devices of DP replica ``dp_index``, including TP all-reduces and recomputation."""
    st = plan.stages[stage_index]
    dev = cluster.device_types()[st.type_of(dp_index)]
    times = layer_times(model, dev, mbs=mbs, tp=st.tp, dtype=plan.dtype, profile=_profile_for(profiles, dev))
    lo, hi = st.layers
    f = sum(t[0] for t in times[lo:hi])
    b = sum(t[1] for t in times[lo:hi])
    if st.recompute:
        b += f
    if st.tp > 1:
        link = comm.group_link(cluster, st.ranks[: st.tp])
        scale = DTYPE_BYTES[plan.dtype] / DTYPE_BYTES[model.dtype]
        tp_bytes = sum(layer.tp_comm_bytes for layer in model.layers[lo:hi]) * scale * mbs
        # Megatron: 2 all-reduces per block forward, 2 backward; the per-layer byte count already sums both
        ar = comm.allreduce_time(tp_bytes / 2, st.tp, link) * 2
        f += ar
        b += ar * (2 if st.recompute else 1)
    return f, b


def predict_detailed(cluster: Cluster, model: ModelSpec, plan: Plan, *, profiles: Mapping | None = None,
                     keep_blocks: bool = False) -> Report:
    """Predict a plan and keep the per-stage details and the schedule simulations."""
    plan.validate(world_size=cluster.world_size, num_layers=model.num_layers, rank_types=cluster.rank_types())
    types = cluster.device_types()
    m, p = plan.num_microbatches, plan.pp
    scale = DTYPE_BYTES[plan.dtype] / DTYPE_BYTES[model.dtype]
    sims: list[Simulation] = []
    per_stage_f: list[list[float]] = [[] for _ in range(p)]
    per_stage_b: list[list[float]] = [[] for _ in range(p)]
    times: dict[tuple, list[tuple[float, float]]] = {}  # replicas of equal micro-batch and types cost the same
    memo: dict[tuple, Simulation] = {}
    for d in range(plan.dp):
        mbs = plan.micro_batch_size(d)
        tkey = (mbs, tuple(st.type_of(d) for st in plan.stages))
        if tkey not in times:
            times[tkey] = [stage_times(model, plan, cluster, s, mbs, profiles, dp_index=d) for s in range(p)]
        fb = times[tkey]
        p2p = []
        for s in range(p - 1):
            a, b = plan.stages[s], plan.stages[s + 1]
            nbytes = model.layers[a.layers[1] - 1].act_out_bytes * scale * mbs
            link = comm.group_link(cluster, [a.rank(d, 0), b.rank(d, 0)])
            p2p.append(comm.p2p_time(nbytes, link))
        key = (tkey, tuple(p2p))
        if key not in memo or keep_blocks:
            memo[key] = simulate([x[0] for x in fb], [x[1] for x in fb], m, schedule=plan.schedule, p2p=p2p,
                                 virtual_stages=plan.virtual_stages, keep_blocks=keep_blocks)
        sims.append(memo[key])
        for s in range(p):
            per_stage_f[s].append(fb[s][0])
            per_stage_b[s].append(fb[s][1])
    step = 0.0
    reports: list[StageReport] = []
    rank_mem: dict[int, int] = {}
    for s, st in enumerate(plan.stages):
        lo, hi = st.layers
        params = sum(layer.params for layer in model.layers[lo:hi]) / st.tp
        grad_bytes = params * 4  # fp32 gradients are reduced (Megatron main_grad)
        ar = 0.0
        for t in range(st.tp):
            group = [st.rank(d, t) for d in range(st.dp)]
            link = comm.measured_link(cluster, group, _profile_for(profiles, types[st.type_of(0)]), "all_reduce") \
                if len(st.types) == 1 else None
            ar = max(ar, comm.dp_allreduce_time(cluster, group, grad_bytes, link=link))
        # every replica steps its own optimizer after the all-reduce: the slowest type sets the step
        opt = max(optimizer_step_time(params, types[t], profile=_profile_for(profiles, types[t])) for t in st.types)
        done = max(sim.finish[s] for sim in sims)
        step = max(step, done + ar + opt)
        mems, caps = [], []
        for d in range(st.dp):
            dev = types[st.type_of(d)]
            prof = _profile_for(profiles, dev)
            overhead = float(getattr(prof, "memory_overhead_bytes", 0) or 0) + \
                float(getattr(prof, "memory_runtime_bytes", 0) or 0)
            mem = stage_memory(model, st.layers, mbs=plan.micro_batch_size(d), pp=p, stage_index=s,
                               num_microbatches=m, tp=st.tp, schedule=plan.schedule,
                               virtual_stages=plan.virtual_stages, recompute=st.recompute, dtype=plan.dtype,
                               overhead_bytes=overhead)
            mems.append(mem)
            caps.append(dev.memory_bytes)
            for t in range(st.tp):
                rank_mem[st.rank(d, t)] = int(mem.total)
        w = max(range(st.dp), key=lambda d: mems[d].total / caps[d])  # the replica closest to its capacity
        reports.append(StageReport(index=s, device_type="+".join(st.types), fwd_s=per_stage_f[s],
                                   bwd_s=per_stage_b[s], busy_s=max(sim.busy[s] for sim in sims), allreduce_s=ar,
                                   optimizer_s=opt, memory=mems[w], capacity_bytes=caps[w]))
    busy = [r.busy_s for r in reports]
    bubble = 1.0 - sum(busy) / (len(busy) * step) if step > 0 else 0.0
    pred = Prediction(step_time_s=step, throughput_samples_s=plan.global_batch / step if step else 0.0,
                      throughput_tokens_s=plan.global_batch * max(plan.seq_len, 1) / step if step else 0.0,
                      bubble_fraction=bubble, stage_busy_s=busy, rank_memory_bytes=dict(sorted(rank_mem.items())))
    return Report(prediction=pred, stages=reports, simulations=sims)


def predict(cluster: Cluster, model: ModelSpec, plan: Plan, *, profiles: Mapping | None = None) -> Prediction:
    """Predicted step time, throughput, bubble fraction, per-stage busy time and per-rank peak memory."""
    return predict_detailed(cluster, model, plan, profiles=profiles).prediction


def check_memory(cluster: Cluster, plan: Plan, prediction: Prediction) -> None:
    """Raise ConfigError naming the first stage whose predicted memory exceeds its devices' capacity."""
    types = cluster.device_types()
    for i, st in enumerate(plan.stages):
        for d in range(st.dp):
            typ = st.type_of(d)
            cap = types[typ].memory_bytes
            need = max(prediction.rank_memory_bytes.get(st.rank(d, t), 0) for t in range(st.tp))
            if need > cap:
                raise ConfigError(f"stages[{i}]", f"needs {need / 2**30:.1f} GiB per device but {typ} has "
                                  f"{cap / 2**30:.1f} GiB (layers {st.layers[0]}-{st.layers[1] - 1}, tp {st.tp}, "
                                  f"recompute {'on' if st.recompute else 'off'})")
