"""Planner benchmark: search time on mixed clusters of 16 to 8192 devices, and plan quality.

For each cluster size (2-4 device types) and model (llama-70b, llama-140b, seq 4096) it measures:

* ``search_s``: wall time of ``hetero.autoparallel.search.search`` (structure walk, C++ DP, predictor rescoring),
  and ``search_cpu_s`` its CPU time (the honest figure on a shared, overloaded machine);
* ``vs_exhaustive``: the chosen plan's predicted throughput / the best of an exhaustive search over the same plan
  space (every structure, every group order, the exact DP split of each, every feasible candidate scored by the
  predictor; no lower-bound pruning) on clusters of at most ``--exhaustive-max-devices`` devices; else null;
* ``speedup_vs_naive``: the chosen plan's predicted throughput / that of the best even plan (layers split evenly
  over stages, batch evenly over pipelines, as if the devices were equal; see ``search.naive``).

Prints one line per case and, last, one JSON object ``{"cases": [...]}``.

    python tools/bench_planner.py                     # all sizes
    python tools/bench_planner.py --sizes 16 128      # a subset
"""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console

from hetero.autoparallel.search import SearchConfig, naive, search
from hetero.cluster.spec import Cluster
from hetero.config import ConfigError
from hetero.models.spec import ModelSpec

# devices -> (types with counts, global batch). Node size 8; network 400 Gb/s.
CLUSTERS = {
    16: ([("H200", 8), ("MI300X", 8)], 512),
    128: ([("H100", 64), ("A100", 64)], 1024),
    512: ([("A100", 256), ("H100", 128), ("MI250X", 128)], 1024),
    2048: ([("H100", 512), ("A100", 512), ("MI300X", 512), ("910B", 512)], 2048),
    8192: ([("H100", 2048), ("A100", 2048), ("MI250X", 2048), ("910B", 2048)], 8192),
}
MODELS = ("llama-70b", "llama-140b")


def make_cluster(types: list[tuple[str, int]]) -> Cluster:
    """A cluster of 8-device nodes of the given types, 400 Gb/s between nodes."""
    nodes = [{"name": t.lower(), "repeat": n // 8, "devices": {"type": t, "count": 8}} for t, n in types]
    return Cluster.from_dict({"name": "+".join(t for t, _ in types), "nodes": nodes,
                              "network": {"bandwidth_gbps": 400, "latency_us": 5}})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=sorted(CLUSTERS))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--exhaustive-max-devices", type=int, default=128,
                    help="run the exhaustive reference only on clusters of at most this many devices (it scores "
                         "every feasible candidate with the full predictor, minutes at 128 devices)")
    args = ap.parse_args(argv)
    con = Console(stderr=True)
    cases = []
    for n in args.sizes:
        types, batch = CLUSTERS[n]
        cluster = make_cluster(types)
        for name in args.models:
            model = ModelSpec.preset(name, seq_len=args.seq)
            cfg = SearchConfig(global_batch=batch)
            case = {"devices": n, "types": len(types), "model": name, "global_batch": batch}
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                res = search(cluster, model, cfg)
            except ConfigError as e:
                case.update(search_s=round(time.perf_counter() - t0, 4), error=str(e), vs_exhaustive=None,
                            speedup_vs_naive=None)
                cases.append(case)
                con.print(f"{n:5d} devices {name}: no plan ({e})")
                continue
            t = time.perf_counter() - t0
            cpu = time.process_time() - c0
            best = res.best
            thr = best.plan.predicted.throughput_samples_s
            case.update(search_s=round(t, 4), search_cpu_s=round(cpu, 4), structures=res.structures, dp_runs=res.evaluated,
                        step_time_s=round(best.step_time, 4), tokens_s=round(best.plan.predicted.throughput_tokens_s),
                        pp=best.plan.pp, dp=best.plan.dp, schedule=best.plan.schedule)
            if n <= args.exhaustive_max_devices:
                t1 = time.perf_counter()
                ex = search(cluster, model, cfg, exhaustive=True)
                case["vs_exhaustive"] = round(thr / ex.best.plan.predicted.throughput_samples_s, 5)
                case["exhaustive_s"] = round(time.perf_counter() - t1, 3)
                case["exhaustive_candidates"] = len(ex.ranked)
            else:
                case["vs_exhaustive"] = None
            try:
                nv = naive(cluster, model, cfg)
                case["speedup_vs_naive"] = round(thr / nv.plan.predicted.throughput_samples_s, 4)
            except ConfigError as e:
                case["speedup_vs_naive"] = None
                case["naive_error"] = str(e)
            cases.append(case)
            con.print(f"{n:5d} devices, {len(types)} types, {name}: search {t:.3f} s ({cpu:.3f} s CPU), "
                      f"{res.structures} structures, {res.evaluated} DP runs, step {best.step_time:.2f} s, "
                      f"vs exhaustive {case['vs_exhaustive']}, x{case['speedup_vs_naive']} vs naive")
    print(json.dumps({"cases": cases}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
