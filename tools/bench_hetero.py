"""Heterogeneous efficiency of the runtime on emulated mixed CPU clusters (one thread per rank, hetero-run).

For each mix of emulated device speeds (default: ``1,0.5`` and ``1,0.5,0.333``; CPU demand = sum of speeds, within
the 2 cores), one rank per type, the tiny reference GPT is trained through ``hetero-run ... examples/train_gpt.py``
and the measured throughput (global batch / median step time after warm-up: the median resists other load on a
shared machine) is compared for:

  (a) each homogeneous sub-cluster alone (one rank of that type runs the whole model); the types' runs go side by
      side as separate jobs (the parts of a real cluster run independently, and on this one socket the mixed run's
      ranks share caches and memory bandwidth too); ``--alone-sequential`` runs them one at a time instead
  (b) the naive even split over all ranks (DP, equal batch shares: what a homogeneous runtime does)
  (c) hetero's plan: the planner's best (``hetero.autoparallel.search``, chosen by prediction: a pipeline with
      uneven layers, or DP across the types with batch shares by speed), re-planned once with each type's
      measured / predicted compute time from the first run of that plan (``hetero.runtime.hooks.
      type_calibration``, reported by examples/train_gpt.py, taken relative to the fast type: what running the
      plan teaches about each type, e.g. that a small batch share runs less efficiently per sample); (c) is the
      re-planned plan when its predicted gain is at least ``--replan-min-gain`` (5%: the per-rank busy times of
      one short run vary about that much here). The first plan and the best pipeline plan run too, for reference

Every configuration runs in ``--repeats`` interleaved rounds and keeps its best round (the machine is shared).
Efficiency = (c) / sum of (a); speed-up = (c) / (b). Slower types are emulated by ``hetero.runtime.emulate`` (each
compute block padded to slowdown x the rank's fastest time for that block, as a dedicated device that shares no
cores; benchmarks only), and every run pins rank i to the cores ``hetero-run --emulate`` gives it (``pack_cores``:
the fast type a core of its own, slower types sharing one as their duty cycles allow), the (a) runs included.
The predictor's device types are calibrated once from the measured fast-type run (a) (its achieved FLOP/s) and
the link between ranks from a gloo all-reduce measurement at start-up, then it predicts every other run;
pred_error = |measured - predicted| / predicted step time of (c). The last line is one JSON object.

    python tools/bench_hetero.py                      # ~3-4 minutes on 2 idle cores
    python tools/bench_hetero.py --mixes 1,0.5 --steps 6 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hetero.autoparallel.plan import Plan  # noqa: E402
from hetero.cluster.spec import Cluster  # noqa: E402
from hetero.models.gpt import GPTConfig  # noqa: E402
from hetero.runtime.emulate import Emulator  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mixes", nargs="+", default=["1,0.5", "1,0.5,0.333"], help="comma-separated speeds per mix")
    p.add_argument("--steps", type=int, default=10, help="training steps per run (the first --warmup are dropped)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps left out of the mean")
    p.add_argument("--global-batch", type=int, default=48, help="samples per step (divisible by the DP splits)")
    p.add_argument("--hidden", type=int, default=128, help="GPT hidden size")
    p.add_argument("--blocks", type=int, default=4, help="GPT blocks")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sample")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; each configuration keeps its best")
    p.add_argument("--alone-sequential", action="store_true",
                   help="run the types' alone runs (a) one after another instead of side by side")
    p.add_argument("--quick", action="store_true", help="smaller model (smoke test)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--replan-min-gain", type=float, default=0.05,
                   help="re-plan from the first run's type calibration only for a predicted gain at least this")
    return p.parse_args(argv)


def _type_id(speed: float) -> str:
    return f"cpu-x{speed:g}"


LINK = {"bandwidth_gbps": 40.0, "latency_us": 50.0}
"""Link between the emulated devices: replaced by ``measure_link`` (gloo all-reduce on this machine) in ``main``."""


def measure_link() -> dict:
    """The alpha-beta link that gloo's all-reduce between two local processes achieves here (1-16 MiB), as a
    cluster network entry: the predictor then prices the DP gradient all-reduce with what gloo really does."""
    from hetero.predictor.microbench import run_collectives
    from hetero.predictor.profile import fit_op_link

    recs, _, _ = run_collectives([2**20, 4 * 2**20, 16 * 2**20], min_time=0.1)
    alpha, bw = fit_op_link(recs, "all_reduce")
    return {"bandwidth_gbps": bw * 8 / 1e9, "latency_us": alpha * 1e6} if bw > 0 else dict(LINK)


def cluster_dict(speeds: list[float], *, flops: float | None, factors: dict[str, float] | None = None) -> dict:
    """A cluster with one node (one device) per speed; ``flops`` (measured fp32 FLOP/s of the fast type) calibrates
    the custom device types; ``factors`` (type -> measured / predicted busy time) slows a type's peak for the
    planner and predictor (the runs' emulated speeds always come from the uncalibrated cluster)."""
    types = []
    for s in speeds:
        t = {"id": _type_id(s), "like": "cpu", "scale": s}
        if flops is not None:
            f = (factors or {}).get(_type_id(s), 1.0)
            t = {"id": _type_id(s), "like": "cpu", "peak_tflops": {"fp32": flops * s / f / 1e12},
                 "matmul_efficiency": 1.0}
        types.append(t)
    nodes = [{"name": f"n{i}-{_type_id(s)}", "devices": {"type": _type_id(s), "count": 1}} for i, s in enumerate(speeds)]
    return {"name": "emulated-mix", "device_types": types, "nodes": nodes,
            "network": dict(LINK)}


def plan_dict(cfg: GPTConfig, *, gb: int, stages: list[dict], m: int = 1, schedule: str = "1f1b") -> dict:
    return {"model": cfg.name, "num_layers": cfg.num_layers + 2, "global_batch": gb, "num_microbatches": m,
            "seq_len": cfg.seq_len, "schedule": schedule, "dtype": "fp32", "stages": stages}


def run(plan: dict, cluster: dict | None, args, tmp: Path, name: str, *, env: dict | None = None) -> dict:
    """One hetero-run of examples/train_gpt.py; returns its final JSON plus the wall time."""
    return finish(start(plan, cluster, args, tmp, name, env=env))


def start(plan: dict, cluster: dict | None, args, tmp: Path, name: str, *, env: dict | None = None) -> tuple:
    """Start one hetero-run of examples/train_gpt.py (``finish`` waits for it)."""
    pf, cf = tmp / f"{name}.plan.yaml", tmp / f"{name}.cluster.yaml"
    pf.write_text(yaml.safe_dump(plan, sort_keys=False))
    cmd = [sys.executable, "-m", "hetero.runtime.launch", "--plan", str(pf)]
    if cluster is not None:
        cf.write_text(yaml.safe_dump(cluster, sort_keys=False))
        cmd += ["--cluster", str(cf), "--emulate"]
    cmd += [str(ROOT / "examples/train_gpt.py"), "--steps", str(args.steps), "--warmup", str(args.warmup), "--quiet",
            "--hidden", str(args.hidden), "--heads", "4", "--vocab", "256"]
    e = {**os.environ, "OMP_NUM_THREADS": "1", "HETERO_BACKEND": os.environ.get("HETERO_BACKEND", "gloo"), **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, cwd=ROOT)
    return proc, name, plan["global_batch"], time.perf_counter()


def finish(job: tuple) -> dict:
    """Wait for a ``start``ed run; its final JSON plus wall time and samples/s."""
    proc, name, gb, t0 = job
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError(f"{name}: hetero-run did not finish within 600 s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: hetero-run failed ({proc.returncode}):\n{stderr[-3000:]}")
    out = json.loads(stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    out["samples_s"] = gb / out["median_step_s"]
    return out


def planner_plans(cluster: Cluster, cfg: GPTConfig, gb: int) -> tuple[dict[str, dict], str]:
    """hetero's plans for the mix: the planner's best (``planner``) and, when that is not a pipeline, the best
    pipeline plan it found (``planner_pipeline``, for reference)."""
    from hetero.autoparallel.search import SearchConfig, search

    try:
        res = search(cluster, cfg.spec(dtype="fp32"), SearchConfig(global_batch=gb, dtype="fp32", max_tp=1,
                                                                    schedules=["1f1b", "gpipe"]))
    except Exception as e:  # report, do not hide, why the planner gave nothing
        return {}, f"planner failed: {type(e).__name__}: {e}"
    out = {"planner": res.best.plan.to_dict()}
    pipe = next((c for c in res.ranked if len(c.plan.stages) > 1), None)
    if pipe is not None and pipe is not res.best:
        out["planner_pipeline"] = pipe.plan.to_dict()
    return out, f"hetero.autoparallel.search ({res.best.plan.meta.get('family', 'pipeline')})"


def predict_step(cluster: Cluster, cfg: GPTConfig, plan: dict) -> float:
    from hetero.predictor import predict

    return predict(cluster, cfg.spec(dtype="fp32"), Plan.from_dict(plan)).step_time_s


def relative_factors(factors: dict[str, float], speeds: list[float]) -> dict[str, float]:
    """A run's type calibration (``hetero.runtime.hooks.type_calibration``: measured / predicted compute per type)
    relative to the fastest type's: the fast type keeps the calibration of its alone run (which also carries the
    step's optimizer and overheads), the others learn how much slower than that they ran."""
    ref = factors.get(_type_id(max(speeds)))
    return {k: v / ref for k, v in factors.items()} if ref else dict(factors)


def _best(old: dict | None, new: dict) -> dict:
    return new if old is None or new["samples_s"] > old["samples_s"] else old


def bench_mix(speeds: list[float], cfg: GPTConfig, args, tmp: Path, progress) -> dict:
    """All runs of one mix, ``args.repeats`` interleaved rounds; each configuration keeps its best round (the
    least disturbed by other load on a shared machine)."""
    gb = args.global_batch
    tag = "+".join(f"{s:g}" for s in speeds)
    n = len(speeds)
    one = [{"layers": [0, cfg.num_layers + 2], "device_type": "cpu", "ranks": [0]}]
    alone: dict[float, dict] = {}
    measured: dict[str, dict] = {}
    naive_best = None
    candidates: dict[str, dict] = {}
    results: dict = {"speeds": speeds}
    naive_plan = plan_dict(cfg, gb=gb, stages=[{"layers": [0, cfg.num_layers + 2], "device_type": _type_id(speeds[0]),
                                               "ranks": list(range(n)), "dp": n, "batch_shares": [gb // n] * n,
                                               "replica_types": [_type_id(x) for x in speeds]}])
    # every run pins rank i (type speeds[i]) to the cores hetero-run --emulate gives it in the mixed run
    cores = Emulator.pack_cores([max(speeds) / x for x in speeds], sorted(os.sched_getaffinity(0))) \
        if hasattr(os, "sched_getaffinity") else None
    results["cores"] = cores
    for rnd in range(args.repeats):
        # (a) each type alone: the whole model on its one device, slowed down relative to the fastest type. By
        # default the types' runs go side by side (separate jobs, same total CPU demand as the mixed run), so the
        # parts see the same shared caches and memory bandwidth of this one socket as the mixed run does;
        # --alone-sequential runs them one after another (each then has the machine to itself)
        jobs = []
        for i, s in enumerate(speeds):
            progress(f"{tag} round {rnd + 1}/{args.repeats}: (a) {_type_id(s)} alone")
            pin = {"HETERO_EMULATE_CPUS": ",".join(map(str, cores[i][0])),
                   "HETERO_EMULATE_PHASE": f"{cores[i][1]:g}"} if cores else {}
            job = start(plan_dict(cfg, gb=gb, stages=one), None, args, tmp, f"a-{tag}-{s:g}",
                        env={"HETERO_SLOWDOWN": f"{max(speeds) / s:.6g}", **pin})
            if args.alone_sequential:
                alone[s] = _best(alone.get(s), finish(job))
            else:
                jobs.append((s, job))
        for s, job in jobs:
            alone[s] = _best(alone.get(s), finish(job))
        if rnd == 0:  # hetero's plan: the planner's, on the cluster calibrated by the first fast-alone run
            cl0 = Cluster.from_dict(cluster_dict(speeds, flops=_flops(cfg, alone[max(speeds)])))
            candidates, results["planner"] = planner_plans(cl0, cfg, gb)
            if not candidates:
                raise RuntimeError(f"mix {tag}: {results['planner']}")
        cdict = cluster_dict(speeds, flops=_flops(cfg, alone[max(speeds)]))
        todo = list(candidates)
        while todo:
            k = todo.pop(0)
            progress(f"{tag} round {rnd + 1}/{args.repeats}: (c) {k}")
            out = run(candidates[k], cdict, args, tmp, f"c-{tag}-{k}")
            measured[k] = _best(measured.get(k), out)
            if rnd == 0 and k == "planner":  # calibrate each type on this run, then re-plan
                factors = relative_factors(out.get("type_calibration") or {}, speeds)
                results["type_factors"] = factors
                cal = Cluster.from_dict(cluster_dict(speeds, flops=_flops(cfg, alone[max(speeds)]), factors=factors))
                replanned, _ = planner_plans(cal, cfg, gb)
                # adopt the new plan only for a predicted gain above what one short run's noise can fake
                gain = (predict_step(cal, cfg, candidates["planner"]) / predict_step(cal, cfg, replanned["planner"])
                        - 1.0) if replanned else 0.0
                results["replan_predicted_gain"] = gain
                if replanned and replanned["planner"]["stages"] != candidates["planner"]["stages"] \
                        and gain >= args.replan_min_gain:
                    candidates["planner_calibrated"] = replanned["planner"]
                    todo.append("planner_calibrated")
        progress(f"{tag} round {rnd + 1}/{args.repeats}: (b) naive even DP")
        naive_best = _best(naive_best, run(naive_plan, cdict, args, tmp, f"b-{tag}"))
    # predictions on the cluster calibrated by the best fast-alone run (the re-planned plan: and by the type factors
    # measured on the first run of the planner's plan)
    flops = _flops(cfg, alone[max(speeds)])
    cluster = Cluster.from_dict(cluster_dict(speeds, flops=flops))
    cal = Cluster.from_dict(cluster_dict(speeds, flops=flops, factors=results.get("type_factors")))
    preds = {k: predict_step(cal if k == "planner_calibrated" else cluster, cfg, v) for k, v in candidates.items()}
    preds_naive = predict_step(cluster, cfg, naive_plan)
    chosen = "planner_calibrated" if "planner_calibrated" in candidates else "planner"
    sum_alone = sum(a["samples_s"] for a in alone.values())
    c, b = measured[chosen], naive_best
    results.update(
        alone_samples_s={_type_id(s): alone[s]["samples_s"] for s in speeds}, sum_alone_samples_s=sum_alone,
        calibrated_fast_gflops=flops / 1e9, predicted_step_s=preds, chosen=chosen,
        measured={k: {"samples_s": v["samples_s"], "step_s": v["median_step_s"], "predicted_step_s": preds.get(k),
                      "stage_busy_s": v["stage_busy_s"]} for k, v in measured.items()},
        naive={"samples_s": b["samples_s"], "step_s": b["median_step_s"], "predicted_step_s": preds_naive},
        plans={k: {"stages": [{kk: s[kk] for kk in ("layers", "device_type", "ranks", "dp", "batch_shares",
                                                   "replica_types")
                               if kk in s} for s in v["stages"]], "schedule": v.get("schedule"),
                   "num_microbatches": v.get("num_microbatches")} for k, v in candidates.items()},
        efficiency=c["samples_s"] / sum_alone,
        speedup_vs_naive=c["samples_s"] / b["samples_s"],
        pred_error=abs(c["median_step_s"] - preds[chosen]) / preds[chosen],
    )
    return results


def _flops(cfg: GPTConfig, run_out: dict) -> float:
    """Achieved training FLOP/s of a one-rank run (3 x forward FLOPs per sample x samples/s)."""
    return cfg.spec(dtype="fp32").flops_per_sample * run_out["samples_s"]


def main(argv=None) -> int:
    args = parse(argv)
    if args.quick:
        args.hidden, args.blocks, args.seq_len = 64, 2, 32
    from rich.console import Console

    console = Console(stderr=True)
    cfg = GPTConfig(name="gpt-bench", vocab=256, hidden=args.hidden, heads=4, num_layers=args.blocks,
                    seq_len=args.seq_len)
    mixes = [[float(x) for x in m.split(",")] for m in args.mixes]
    for m in mixes:
        if sum(m) > 2.0 + 1e-9 or max(m) > 1.0:
            raise SystemExit(f"mix {m}: speeds must be <= 1 and sum to <= 2 (2 cores, one thread per rank)")
    out = []
    t0 = time.perf_counter()
    LINK.update(measure_link())
    console.print(f"gloo all-reduce link here: {LINK['bandwidth_gbps'] / 8:.2f} GB/s, {LINK['latency_us']:.0f} us")
    with tempfile.TemporaryDirectory() as d:
        for m in mixes:
            with console.status(f"mix {m}") as st:
                res = bench_mix(m, cfg, args, Path(d), lambda s: st.update(f"[bold]{s}"))  # noqa: B023
            console.print(f"mix {'+'.join(f'{s:g}' for s in m)}: alone {res['alone_samples_s']} -> sum "
                          f"{res['sum_alone_samples_s']:.1f} samples/s; naive {res['naive']['samples_s']:.1f}; "
                          + "; ".join(f"{k} {v['samples_s']:.1f} (step {v['step_s'] * 1e3:.0f} ms, pred "
                                      f"{(v['predicted_step_s'] or 0) * 1e3:.0f} ms)" for k, v in res["measured"].items())
                          + f" | chosen {res['chosen']}: efficiency {res['efficiency']:.3f}, speed-up "
                          f"{res['speedup_vs_naive']:.2f}x, pred error {res['pred_error'] * 100:.1f}%")
            out.append(res)
    worst = min(out, key=lambda r: r["efficiency"])
    summary = {"efficiency": round(worst["efficiency"], 4), "speedup_vs_naive": round(min(r["speedup_vs_naive"] for r in out), 4),
               "pred_error": round(max(r["pred_error"] for r in out), 4), "mixes": out,
               "model": {"hidden": cfg.hidden, "blocks": cfg.num_layers, "seq_len": cfg.seq_len, "vocab": cfg.vocab},
               "global_batch": args.global_batch, "link": dict(LINK), "alone_sequential": args.alone_sequential,
               "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
               "load_avg": os.getloadavg()[0], "bench_s": time.perf_counter() - t0}
    text = json.dumps(summary)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
