"""Score hetero's predictor on Sailor's published validation runs (real GH200 training iterations).

The folder (``../shared/benchmarks/sailor_validation``) holds 57 measured runs with their plans, and the profiles
Sailor's own simulator used: per-layer forward/backward/update times measured per (micro-batch size, TP degree),
per-layer parameter and activation sizes, and fitted network bandwidth curves. These profiles play the role of a
measured ``hetero profile`` of the GH200: compute times are looked up, not derived from peak FLOP/s; everything
else is hetero's own model:

* the pipeline is simulated block by block with hetero's 1F1B simulator (pipeline.simulate) instead of a
  closed formula, with p2p transfers of each boundary's activations over the fitted inter-node curve;
* gradient all-reduce: ring over the DP group, bucketed as DeepSpeed does, each TP rank reducing its shard;
  the first and last stage also all-reduce the tied embedding (DeepSpeed ties GPT's word embedding and head);
* memory: hetero's state accounting (memory.state_bytes_per_param, fp32 AdamW) plus activations in flight under
  1F1B (memory.in_flight), plus the device's runtime overhead (CUDA context, NCCL buffers, allocator cache).

Scores follow the folder's README section 7: absolute % error per run, mean per subset, "all" and "clean".

    python tools/bench_predictor.py --sailor ../shared/benchmarks/sailor_validation
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from hetero.predictor.memory import in_flight, state_bytes_per_param
from hetero.predictor.pipeline import simulate

PROFILE_NAMES = {"OPT-350": "OPT-350", "GPT-Neo-2.7": "GPT-Neo-2.7"}
SUBSETS = ("gh200_opt350", "gh200_gptneo27", "gh200_opt350_ae", "gh200_opt350_aceso")


@dataclass
class Profiles:
    """The folder's profiles for one model on one GPU type."""

    compute: dict  # {mbs: {tp: {layer: [fwd, bwd, update]}}}
    memory: dict  # {tp: {layer: {params_floats, act_output_floats, act_mem_floats, ...}}}
    inter: dict  # {count: [[a2, a1, a0], max_bw]} for this GPU type to itself
    gpus_per_node: int


def load_profiles(folder: Path, model: str, gpu: str) -> Profiles:
    """Read the compute, memory, network and cluster profiles for ``model`` on ``gpu``."""
    prof = folder / "profiles"
    compute = json.loads((prof / "compute" / f"{model}__{gpu}.json").read_text())
    memory = json.loads((prof / "memory" / f"llm_info__{model}.json").read_text())
    net = json.loads((prof / "network" / "multizone_bandwidths_het.json").read_text())
    zone = next(iter(net))
    inter = {c: v[zone][gpu][c] for c, v in net[zone][gpu].items()}
    cluster = json.loads((prof / "cluster" / "basic_cluster_config.json").read_text())
    return Profiles(compute=compute, memory=memory, inter=inter, gpus_per_node=cluster[gpu]["gpus_per_node"])


def fitted_bandwidth(curve: list, nbytes: float) -> float:
    """Bytes/s from a fitted curve ``[[a2, a1, a0], max_bw]``: bw [GB/s] = a2 x^2 + a1 x + a0 with
    x = log2(bytes / 1e6); clamped to (0.05 x max_bw, max_bw] so the quadratic cannot run away outside the
    fitted range."""
    (a2, a1, a0), max_bw = curve
    x = math.log2(max(nbytes, 1.0) / 1e6)
    bw = (a2 * x * x + a1 * x + a0) * 1e9
    return min(max(bw, 0.05 * max_bw), max_bw)


def transfer_time(curve: list, nbytes: float) -> float:
    """Seconds to move ``nbytes`` over a fitted link."""
    return nbytes / fitted_bandwidth(curve, nbytes) if nbytes > 0 else 0.0


def ring_allreduce_time(curve: list, nbytes: float, n: int, *, bucket_floats: float = 5e8) -> float:
    """Ring all-reduce of ``nbytes`` (fp32) over ``n`` ranks in DeepSpeed-sized buckets: each bucket moves
    2 (n-1)/n of its size, the bandwidth looked up at the per-step chunk size (bucket / n)."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    bucket = bucket_floats * 4
    total = 0.0
    left = nbytes
    while left > 0:
        b = min(bucket, left)
        chunk = b / n
        total += 2 * (n - 1) * transfer_time(curve, chunk)
        left -= b
    return total


def predict_run(run: dict, prof: Profiles, *, overhead_bytes: float, activation_factor: float = 1.0) -> tuple[float, float]:
    """(iteration seconds, peak bytes of the busiest GPU) for one run, from its plan and the profiles only."""
    plan = run["plan"]
    mbs, gbs = plan["micro_batch_size"], plan["global_batch_size"]
    dp = plan["dp"][0]
    tp = plan["tp"]
    p = plan["pp"]
    m = math.ceil(gbs / (mbs * dp))
    comp = prof.compute[str(mbs)][str(tp)]
    mem = prof.memory[str(tp)]
    stages = [tuple(s.get("layers") or s["approx_sailor_layers"]) for s in plan["stages"]]
    fwd, bwd, upd, params = [], [], [], []
    for lo, hi in stages:
        ls = [str(i) for i in range(lo, hi + 1)]
        fwd.append(sum(comp[x][0] for x in ls))
        bwd.append(sum(comp[x][1] for x in ls))
        upd.append(comp[ls[0]][2])
        params.append(sum(mem[x]["params_floats"] for x in ls))
    # p2p: every TP rank sends its full copy of the boundary activation, all tp ranks of a node at once, so
    # each gets 1/count of the node's fitted aggregate bandwidth for `count` concurrent senders.
    count = min(tp, prof.gpus_per_node)
    p2p = []
    for _, hi in stages[:-1]:
        nbytes = mem[str(hi)]["act_output_floats"] * 4 * mbs
        p2p.append(nbytes / (fitted_bandwidth(prof.inter[str(count)], nbytes * count) / count))
    # DeepSpeed's PipelineEngine sends and receives as blocking schedule instructions: the stage is busy for the
    # transfer on both sides, so p2p adds to the F and B blocks of the two stages it joins.
    fwd_b = [fwd[s] + (p2p[s - 1] if s > 0 else 0.0) + (p2p[s] if s < p - 1 else 0.0) for s in range(p)]
    bwd_b = [bwd[s] + (p2p[s - 1] if s > 0 else 0.0) + (p2p[s] if s < p - 1 else 0.0) for s in range(p)]
    sim = simulate(fwd_b, bwd_b, m, schedule="1f1b", p2p=[0.0] * (p - 1))
    # gradient all-reduce per stage over dp ranks (each TP rank its own shard, concurrently, one NIC each)
    ar = [ring_allreduce_time(prof.inter["1"], params[s] * 4, dp) for s in range(p)]
    if p > 1:  # tied embedding: first and last stage all-reduce the word-embedding gradient together
        emb = mem["0"]["params_floats"] * 4
        tied = transfer_time(prof.inter["1"], emb) * 2
        ar[0] += tied
        ar[-1] += tied
    step = max(sim.finish[s] + ar[s] + upd[s] for s in range(p))
    return step, _peak_memory(run, prof, overhead_bytes=overhead_bytes, activation_factor=activation_factor)


def _memory_terms(run: dict, prof: Profiles) -> tuple[float, float]:
    """(fixed bytes, activation bytes) of the busiest GPU: fixed = model state + the largest layer's backward
    workspace + p2p buffers; activations = saved activations of the micro-batches in flight under 1F1B."""
    plan = run["plan"]
    mbs, tp, p, dp = plan["micro_batch_size"], plan["tp"], plan["pp"], plan["dp"][0]
    m = math.ceil(plan["global_batch_size"] / (mbs * dp))
    mem = prof.memory[str(tp)]
    wb, gb, ob = state_bytes_per_param("fp32", "fp32")
    # DeepSpeed's non-ZeRO engine all-reduces gradients through flattened bucket copies: one more fp32 per param
    per_param = wb + gb + ob + DEEPSPEED_FLAT_GRAD_BYTES
    best = (0.0, 0.0)
    for s, st in enumerate(plan["stages"]):
        lo, hi = st.get("layers") or st["approx_sailor_layers"]
        ls = [str(i) for i in range(lo, hi + 1)]
        state = sum(mem[x]["params_floats"] for x in ls) * per_param
        workspace = max(mem[x]["act_mem_floats"] for x in ls) * 4 * mbs
        buf = 0.0 if p == 1 else 2 * mem[str(hi)]["act_output_floats"] * 4 * mbs
        act = sum(mem[x]["act_mem_floats"] for x in ls) * 4 * mbs * in_flight("1f1b", pp=p, stage_index=s,
                                                                              num_microbatches=m)
        if state + workspace + buf + act > sum(best):
            best = (state + workspace + buf, act)
    return best


def _peak_memory(run: dict, prof: Profiles, *, overhead_bytes: float, activation_factor: float) -> float:
    fixed, act = _memory_terms(run, prof)
    return overhead_bytes + fixed + activation_factor * act


def calibrate_memory(runs: list[dict], cache: dict) -> tuple[float, float]:
    """Fit the device's two memory constants on measured runs: runtime overhead (CUDA context, NCCL and cuBLAS
    buffers) and the caching allocator's factor on activation memory (reserved / allocated), by least squares
    on relative error. This is what a GPU profile would measure; here it is fitted on a calibration subset
    that is then not used for scoring claims (see ``score``)."""
    import numpy as np

    rows, ys, ws = [], [], []
    for r in runs:
        fixed, act = _memory_terms(r, _profiles(r, cache))
        meas = r["measured"]["peak_memory_bytes"]
        rows.append([1.0, act])
        ys.append(meas - fixed)
        ws.append(1.0 / meas)
    a = np.array(rows) * np.array(ws)[:, None]
    (overhead, factor), *_ = np.linalg.lstsq(a, np.array(ys) * np.array(ws), rcond=None)
    return float(overhead), float(factor)


def _stats(errs: list[float]) -> dict:
    if not errs:
        return {"n": 0}
    return {"n": len(errs), "mean": statistics.fmean(errs), "median": statistics.median(errs), "max": max(errs)}


def _profiles(run: dict, cache: dict) -> Profiles:
    model = run["model"]["sailor_name"]
    gpu = next(iter(run["cluster"]["per_gpu_type"]))
    if (model, gpu) not in cache:
        cache[(model, gpu)] = load_profiles(cache["folder"], PROFILE_NAMES.get(model, model), gpu)
    return cache[(model, gpu)]


def score(folder: str | Path, *, calibration_subset: str = "gh200_opt350_ae") -> dict:
    """Score every subset: ``{"subsets": {name: {runs, time_mape, mem_mape, time_mape_clean, mem_mape_clean,
    ...}}, "per_run": [...], "memory_calibration": {...}}`` (percent).

    Time uses no measured iteration time at all. Memory's two device constants are fitted on
    ``calibration_subset`` (default: the second measurement of the OPT-350 plans, not a primary subset)."""
    folder = Path(folder)
    runs_file = folder / "runs.jsonl"
    if not runs_file.is_file():
        raise FileNotFoundError(f"{runs_file} not found: pass the sailor_validation folder")
    runs = [json.loads(line) for line in runs_file.read_text().splitlines() if line.strip()]
    cache: dict = {"folder": folder}
    calib = [r for r in runs if r["subset"] == calibration_subset and r["measured"]["peak_memory_bytes"]]
    if not calib:
        raise ValueError(f"no runs in calibration subset {calibration_subset!r}")
    overhead, factor = calibrate_memory(calib, cache)
    per_run = []
    for r in runs:
        t, mbytes = predict_run(r, _profiles(r, cache), overhead_bytes=overhead, activation_factor=factor)
        meas_t = r["measured"]["iteration_time_s"]
        meas_m = r["measured"]["peak_memory_bytes"]
        per_run.append({
            "id": r["id"], "subset": r["subset"], "pred_time_s": t, "meas_time_s": meas_t, "pred_mem_bytes": mbytes,
            "meas_mem_bytes": meas_m,
            "time_ape": abs(t - meas_t) / meas_t * 100 if meas_t else None,
            "mem_ape": abs(mbytes - meas_m) / meas_m * 100 if meas_m else None,
            "clean_time": not r.get("exclude_from_clean_time", False),
            "clean_mem": not r.get("exclude_from_clean_memory", False),
        })
    subsets = {}
    for name in dict.fromkeys(x["subset"] for x in per_run):
        rows = [x for x in per_run if x["subset"] == name]
        te = [x["time_ape"] for x in rows if x["time_ape"] is not None]
        me = [x["mem_ape"] for x in rows if x["mem_ape"] is not None]
        tc = [x["time_ape"] for x in rows if x["time_ape"] is not None and x["clean_time"]]
        mc = [x["mem_ape"] for x in rows if x["mem_ape"] is not None and x["clean_mem"]]
        subsets[name] = {"runs": len(rows), "time_mape": _round(te), "mem_mape": _round(me),
                         "time_mape_clean": _round(tc), "mem_mape_clean": _round(mc),
                         "time": _stats(te), "mem": _stats(me)}
    return {"subsets": subsets, "per_run": per_run,
            "memory_calibration": {"subset": calibration_subset, "runs": len(calib), "overhead_bytes": overhead,
                                   "activation_factor": factor}}


def _round(xs: list[float]) -> float | None:
    return round(statistics.fmean(xs), 2) if xs else None


# DeepSpeed (no ZeRO) flattens gradients into bucket copies for the DP all-reduce: fp32 bytes per parameter.
DEEPSPEED_FLAT_GRAD_BYTES = 4.0
