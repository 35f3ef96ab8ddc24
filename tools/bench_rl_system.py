"""Benchmark of the RL system on Meta-World with the flow-VLA policy: placement modes, pipelining and the scheduler.

    python tools/bench_rl_system.py [--config examples/rl/system_bench.yaml] [--devices 3] [--iterations 4]

In one run: (1) profile the roles on this machine (env chunk-step, policy sample, PPO update; offload and flatten
costs) with ``hetero.rl.scheduler.measure_profile``, and the effective cores the ranks share (a fixed CPU loop alone
vs in N concurrent copies; with ``--shared-host`` the cost model bounds each phase by its CPU work over them); (2) run the RL system (``hetero-run``, one rank per device,
hetero communicator) in: collocated sequential (all roles on all ranks, k=1: one rank alternates simulation and
inference), disaggregated pipelined env | rollout | actor with k = 1, 2, 4, and the scheduler's choice for these
devices; (3) report env-steps/s and samples/s of each (mean over iterations after the first, which includes
start-up), the predicted iteration time of each placement against the measured one. Last line, one JSON object:
``{"pipeline_speedup": best pipelined k>1 / collocated sequential throughput, "scheduler_vs_best": measured time
of the scheduler's choice / best measured time, "pred_error": mean |predicted - measured| / measured, "modes": {...}}`` plus the same error under the other
model of the ranks (``pred_error_other_model``: the shared-host bound by default, independent devices with
``--shared-host``); when that model picks another placement it is run too.

CPU-only caveat: every "device" is a CPU process on a shared machine, so pipelining overlaps simulation with
inference only as far as free cores allow; ``uptime`` is printed with the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _init_checkpoint(cfg_path: str, path: Path) -> None:
    code = ("import sys, torch\nfrom hetero.rl.config import load_config\nfrom hetero.models.vla import VLAPolicy\n"
            "from hetero.rl.policy import save_checkpoint\ncfg = load_config(sys.argv[1])\ntorch.manual_seed(0)\n"
            "m = VLAPolicy(cfg.policy.vla_config(state_dim=39, action_dim=4, num_cameras=0, image_size=64))\n"
            "save_checkpoint(sys.argv[2], model=m)\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, cfg_path, str(path)], check=True, timeout=300)


_SPIN = ("import sys, time, torch\ntorch.set_num_threads(1)\na = torch.randn(192, 192)\n"
         "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\nt = time.perf_counter()\n"
         "for _ in range(N):\n    a = torch.tanh(a @ a)\nprint(time.perf_counter() - t)\n")


def effective_cores(procs: int, iters: int = 1500) -> tuple[float, float, float]:
    """How many cores ``procs`` concurrent one-thread processes really get now: ``procs * t1 / t_procs`` from the
    time of a fixed CPU loop alone (t1) and in each of ``procs`` concurrent copies (t_procs). Returns
    (effective cores, t1, t_procs)."""
    code = _SPIN.replace("N", str(iters))

    def run(n):
        start = time.time() + 8.0  # every copy starts its loop at the same moment, after its imports
        ps = [subprocess.Popen([sys.executable, "-c", code, str(start)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(n)]
        return max(float(p.communicate(timeout=300)[0]) for p in ps)

    t1 = run(1)
    tp = run(procs)
    return min(float(procs), procs * t1 / tp), t1, tp


def _roles(mode: str, k: int, n: int, num_envs: int) -> dict:
    if mode == "collocated":
        r = list(range(n))
        return {"mode": mode, "num_envs": num_envs, "k": k, "env": {"ranks": r}, "rollout": {"ranks": r},
                "actor": {"ranks": r}}
    env = list(range(n - 2))
    return {"mode": mode, "num_envs": num_envs, "k": k, "env": {"ranks": env}, "rollout": {"ranks": [n - 2]},
            "actor": {"ranks": [n - 1]}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="examples/rl/system_bench.yaml", help="RL run YAML")
    p.add_argument("--devices", type=int, default=4, help="CPU ranks (world size of each run)")
    p.add_argument("--iterations", type=int, default=4, help="RL iterations per run (the first is not timed)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4], help="k of the disaggregated runs")
    p.add_argument("--out", default="runs/bench_rl_system", help="work directory")
    p.add_argument("--transfer-ms", type=float, default=2.0,
                   help="assumed cost of one channel message between ranks for the cost model (ms)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per system run")
    p.add_argument("--shared-host", action="store_true",
                   help="bound each phase by its CPU work over the measured effective cores (default: the ranks are "
                        "modelled as independent devices)")
    a = p.parse_args(argv)
    from rich.progress import Progress

    from hetero.autoparallel.roles import RolePlan
    from hetero.config import build
    from hetero.rl.config import load_config
    from hetero.rl.scheduler import SchedulerConfig, measure_profile, predict, schedule, to_plan
    from hetero.rl.system import launch, read_metrics

    out = Path(a.out)
    ckpt = out / "init.pt"
    _init_checkpoint(a.config, ckpt)
    sets = [f"train.init_checkpoint={ckpt}"]
    cfg = load_config(a.config, sets)
    n_env, T = cfg.env.num_envs, cfg.algo.rollout_chunks
    samples = n_env * T
    t0 = time.time()
    prof = measure_profile(cfg, sizes=sorted({n_env // k for k in a.ks}), sample_sizes=[samples // 4, samples // 2,
                                                                                          samples])
    cores, t1, tp = effective_cores(a.devices)
    print(f"effective host cores for {a.devices} concurrent ranks: {cores:.2f} (fixed CPU loop {t1:.2f} s alone, "
          f"{tp:.2f} s with {a.devices} copies)", flush=True)
    base = {
        "devices": [{"type": "cpu", "count": a.devices}],
        "workload": {"num_envs": n_env, "rollout_chunks": T, "transfer": {"fixed_s": a.transfer_ms / 1e3,
                                                                          "per_item_s": 0.0}},
        "profiles": {"cpu": {"env": vars(prof.env), "rollout": vars(prof.rollout), "actor": vars(prof.actor),
                             "switch_s": prof.switch_s, "sync_s": prof.sync_s}},
        "k_choices": sorted(set(a.ks) | {1, 2, 4, 8})}
    sc = build(SchedulerConfig, {**base, "host_cores": cores if a.shared_host else 0.0})
    other = build(SchedulerConfig, {**base, "host_cores": 0.0 if a.shared_host else cores})
    best, runner = schedule(sc)
    alt, _ = schedule(other)  # the choice of the other model of the ranks (independent devices / shared host)
    runs = [("collocated_seq", RolePlan.from_dict(_roles("collocated", 1, a.devices, n_env)))]
    runs += [(f"disaggregated_k{k}", RolePlan.from_dict(_roles("disaggregated", k, a.devices, n_env))) for k in a.ks]
    runs.append(("scheduler", best))
    if alt.describe() != best.describe():
        runs.append(("scheduler_other_model", alt))
    modes = {}
    with Progress(transient=True) as bar:
        task = bar.add_task("RL system runs", total=len(runs))
        for name, rp in runs:
            pred_other = predict(rp, other).iteration_s
            rp.predicted = predict(rp, sc)
            plan = out / f"plan_{name}.yaml"
            to_plan(rp, samples=samples).to_file(plan)
            d = out / name
            res = launch(["--config", a.config, "--plan", str(plan), "--iterations", str(a.iterations), "--out",
                          str(d), *sum([["--set", s] for s in sets], [])], world_size=rp.world_size,
                         timeout_s=a.timeout, capture=True)
            if res.returncode != 0:
                print(res.stdout[-2000:], res.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"run {name} failed")
            recs = read_metrics(str(d))[1:]
            it_s = sum(r["iter_s"] for r in recs) / len(recs)
            env_sps = sum(r["env_steps"] for r in recs) / sum(r["iter_s"] for r in recs)
            modes[name] = {"placement": rp.describe(), "measured_iter_s": it_s,
                           "predicted_iter_s": rp.predicted.iteration_s,
                           "pred_error": abs(rp.predicted.iteration_s - it_s) / it_s,
                           "predicted_other_model_s": pred_other,
                           "pred_error_other_model": abs(pred_other - it_s) / it_s,
                           "env_steps_per_s": env_sps, "samples_per_s": samples / it_s,
                           "switch_mib": max(r["switch_bytes"] for r in recs) / 2**20,
                           "rollout_s": sum(r["rollout_s"] for r in recs) / len(recs),
                           "train_s": sum(r["train_s"] for r in recs) / len(recs)}
            m = modes[name]
            print(f"{name:18s} {m['placement']:60s} iter {it_s:.3f}s (pred {m['predicted_iter_s']:.3f}s, "
                  f"err {m['pred_error']:.1%}) env-steps/s {env_sps:.0f} samples/s {m['samples_per_s']:.1f}",
                  flush=True)
            bar.advance(task)
    seq = modes["collocated_seq"]["measured_iter_s"]
    piped = min(modes[f"disaggregated_k{k}"]["measured_iter_s"] for k in a.ks if k > 1)
    best_t = min(m["measured_iter_s"] for m in modes.values())
    load = os.getloadavg()
    print(f"scheduler chose {best.describe()} (runner-up {runner.describe() if runner else '-'}); "
          f"wall {time.time() - t0:.0f} s; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on "
          f"{os.cpu_count()} cores", flush=True)
    print(json.dumps({"pipeline_speedup": seq / piped,
                      "scheduler_vs_best": modes["scheduler"]["measured_iter_s"] / best_t,
                      "pred_error": sum(m["pred_error"] for m in modes.values()) / len(modes), "modes": modes,
                      "profile": {"env": vars(prof.env), "rollout": vars(prof.rollout), "actor": vars(prof.actor),
                                  "switch_s": prof.switch_s, "sync_s": prof.sync_s},
                      "pred_error_other_model": sum(m["pred_error_other_model"] for m in modes.values()) / len(modes),
                      "model": "shared host" if sc.host_cores else "independent devices",
                      "host_cores": sc.host_cores, "effective_cores": cores, "load_average": load, "devices": a.devices,
                      "iterations": a.iterations}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
