"""Benchmark of the RL system on Meta-World with the flow-VLA policy: placement modes, pipelining and the scheduler.

    python tools/bench_rl_system.py [--config examples/rl/system_bench.yaml] [--devices 4] [--slowdown 2]

In one run: (1) profile the roles on this machine, alone and one thread (env chunk-step, policy sample, PPO update;
offload and flatten costs) with ``hetero.rl.scheduler.measure_profile``; (2) run the RL system (``hetero-run``, one
rank per device, hetero communicator) in: collocated sequential (all roles on all ranks, one micro-batch per rank:
each rank simulates its share of the envs, then runs inference on it, with no overlap; RLinf's collocated
baseline), collocated with two micro-batches per rank (each rank samples for one while the other simulates),
collocated on one rank (k=1: rank 0 alternates simulation and inference for every env while the others wait; the
baseline of earlier versions of this bench, kept for comparison), disaggregated pipelined env | rollout | actor
with k = 1, 2, 4, hybrid pipelined (env | rollout on half the ranks each, the actor data-parallel over all) with
k = 2, 4, and the scheduler's choice for these devices, each placement ``--rounds`` times (default 2) in
alternating order, so that drift of the machine's speed during the bench falls on every placement alike; (3)
report env-steps/s and samples/s of each (mean over the iterations after each run's first, which includes
start-up), the predicted iteration time of each placement against the measured one. Last line, one JSON object:
``{"pipeline_speedup": collocated sequential time / best pipelined time (collocated with two micro-batches per
rank, disaggregated or hybrid with k>1), "pipeline_speedup_disaggregated": the same over the disaggregated runs
only, "pipeline_speedup_vs_one_rank": collocated-on-one-rank time / best pipelined time, "scheduler_vs_best":
measured time of the scheduler's choice / best measured time, "pred_error": mean |predicted - measured| /
measured, "modes": {...}}``.

Devices on a CPU-only machine: each rank emulates a device ``--slowdown`` times slower than one core of this
machine (``hetero.runtime.emulate``: policy sampling, value and PPO forward/backward and optimizer steps in the rank
are padded with sleep to ``slowdown x`` the fastest block of their kind, every env reset / step in its simulator
processes to ``slowdown x`` its CPU time, since its work varies), and the ranks are pinned two to a core so that
their duty cycles fit (default slowdown 1.5 x ranks / cores: the padded work fills 2/3 of the cores, leaving room
for what is not padded; ``--slowdown 1`` runs them unpadded, contending).
The profile is taken alone on the same emulated device (padded the same way), the weight sync is priced by the
predictor over a link fitted to gloo between this many local ranks, the gradient all-reduce of a data-parallel
update is measured for every actor count (2 .. all ranks) in a short job of lockstep updates on that many
emulated ranks (it also holds the wait for the slowest rank), and channel messages are timed by a ping-pong between two ranks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
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


_PINGPONG = """
import sys, time, torch
from datetime import timedelta
import hetero.communicator as hc
from hetero.rl.channel import P2PChannel
torch.set_num_threads(1)
rank, port, m, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
hc.init_process_group(init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, device_type="cpu",
                      device="cpu", timeout=timedelta(seconds=60))
up, down = P2PChannel(rank=rank, src=0, dst=1, capacity=4, tag_base=1), P2PChannel(rank=rank, src=1, dst=0,
                                                                                 capacity=4, tag_base=2)
obs = {"obs": {"state": torch.randn(m, 39), "instruction": ["pick up the block"] * m}, "reward": torch.zeros(m),
       "done": torch.zeros(m, dtype=torch.bool), "episodes": [], "env_steps": 5 * m}
act = {"actions": torch.randn(m, 5, 4)}
for i in range(n + 5):
    if i == 5:
        t0 = time.perf_counter()
    if rank == 0:
        up.send(0, obs)
        down.recv(0)
    else:
        up.recv(0)
        down.send(0, act)
if rank == 0:
    print((time.perf_counter() - t0) / (2 * n))
up.close(); down.close()
torch.distributed.barrier(); torch.distributed.destroy_process_group()
"""


def channel_message_s(m: int, n: int = 200) -> float:
    """Seconds of one RL channel message (an observation or action message of ``m`` envs) between two local
    ranks over the hetero communicator: half the mean round trip of ``n`` ping-pongs."""
    from hetero.runtime.testing import free_port

    port = str(free_port())
    ps = [subprocess.Popen([sys.executable, "-c", _PINGPONG, str(r), port, str(m), str(n)], stdout=subprocess.PIPE,
                           text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}) for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in ps]
    if any(p.returncode for p in ps):
        raise SystemExit("channel ping-pong failed")
    return float(outs[0].strip().splitlines()[-1])


_DP_UPDATE = """
import sys, numpy as np, torch, torch.distributed as dist
from datetime import timedelta
import hetero.communicator as hc
from hetero.rl.config import load_config
from hetero.rl.policy import load_checkpoint, obs_to_torch, sample
from hetero.rl.scheduler import update_batch
from hetero.rl.update import make_optimizer, ppo_update
from hetero.runtime.emulate import Emulator
torch.set_num_threads(1)
cfg, n, reps = load_config(sys.argv[1], [f"train.init_checkpoint={sys.argv[2]}"]), int(sys.argv[3]), int(sys.argv[4])
hc.init_process_group(device_type="cpu", device="cpu", timeout=timedelta(seconds=120))
rank, world = dist.get_rank(), dist.get_world_size()
model, _ = load_checkpoint(sys.argv[2])
opt, _, _ = make_optimizer(model, cfg)
obs = obs_to_torch({"state": np.random.default_rng(0).standard_normal((n, 39)).astype(np.float32),
                    "instruction": ["reach the goal"] * n}, "cpu")
s = sample(model, obs, cfg.sampler, generator=torch.Generator().manual_seed(0))
batch = update_batch(obs, s, n, cfg, generator=torch.Generator().manual_seed(1))
emu, per_step = Emulator.from_env(), []
for i in range(reps + 1):  # the first is a warm-up (and sets the emulator's fastest blocks)
    st = ppo_update(model, opt, batch, cfg, iteration=cfg.algo.critic_warmup_iters + 1, shard=(rank, world, None),
                    emulator=emu if emu.enabled else None)
    if i:
        per_step.append(st["update_comm_s"] / st["update_steps"])
out = torch.tensor(per_step, dtype=torch.float64)
dist.all_reduce(out)  # the mean over ranks of each repeat
if rank == 0:
    print("STEP_SYNC", float(np.median((out / world).tolist())), flush=True)
dist.barrier()
dist.destroy_process_group()
"""


def step_sync_s(cfg_path: str, ckpt: Path, *, ranks: int, samples: int, env: dict, reps: int = 3,
                timeout_s: float = 300) -> float:
    """Seconds per optimizer step that ``ranks`` lockstep actor ranks (emulated devices, pinned as in the system
    runs) spend in the gradient all-reduce of a data-parallel PPO update of ``samples`` samples, waiting for the
    slowest rank included: the median over ``reps`` updates of the mean over ranks."""
    script = ckpt.parent / "dp_update.py"
    script.write_text(_DP_UPDATE)
    cmd = [sys.executable, "-m", "hetero.runtime.launch", "--standalone", "--nproc-per-node", str(ranks),
           str(script), cfg_path, str(ckpt), str(samples), str(reps)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("STEP_SYNC ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"data-parallel update profile failed (rc {p.returncode}):\n{p.stdout[-2000:]}\n"
                         f"{p.stderr[-4000:]}")
    return float(lines[-1].split()[1])


def _roles(mode: str, k: int, n: int, num_envs: int) -> dict:
    if mode == "collocated":
        r = list(range(n))
        return {"mode": mode, "num_envs": num_envs, "k": k, "env": {"ranks": r}, "rollout": {"ranks": r},
                "actor": {"ranks": r}}
    if mode == "hybrid":  # env | rollout pipelined on half the ranks each, the actor data-parallel over all
        half = (n + 1) // 2
        return {"mode": mode, "num_envs": num_envs, "k": k, "env": {"ranks": list(range(half))},
                "rollout": {"ranks": list(range(half, n))}, "actor": {"ranks": list(range(n))}}
    env = list(range(n - 2))
    return {"mode": mode, "num_envs": num_envs, "k": k, "env": {"ranks": env}, "rollout": {"ranks": [n - 2]},
            "actor": {"ranks": [n - 1]}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="examples/rl/system_bench.yaml", help="RL run YAML")
    p.add_argument("--devices", type=int, default=4, help="CPU ranks (world size of each run)")
    p.add_argument("--slowdown", type=float, default=None,
                   help="each rank emulates a device this many times slower than a core (default: 1.5 x ranks / "
                        "cores of this machine, at least 1: the ranks' padded work fills 2/3 of the cores, leaving "
                        "room for what is not padded: messages, pickling, the launcher)")
    p.add_argument("--iterations", type=int, default=None,
                   help="RL iterations per run; the first is not timed (default: 1 + enough to time whole episodes, "
                        "so that the env resets a run pays match the profile's, at most 9)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4], help="k of the disaggregated runs")
    p.add_argument("--out", default="runs/bench_rl_system", help="work directory")
    p.add_argument("--transfer-ms", type=float, default=None,
                   help="cost of one channel message between ranks for the cost model, ms (default: measured, a "
                        "ping-pong of observation / action messages between two ranks)")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs of every placement, in alternating order (forward, backward, ...); each placement's "
                        "time is the mean over all its timed iterations")
    p.add_argument("--timeout", type=float, default=600, help="seconds per system run")
    a = p.parse_args(argv)
    from rich.progress import Progress

    from hetero.autoparallel.roles import RolePlan
    from hetero.cluster.spec import Link
    from hetero.config import build, to_dict
    from hetero.predictor.microbench import run_collectives
    from hetero.predictor.profile import fit_op_link
    from hetero.rl.config import load_config
    from hetero.rl.policy import load_checkpoint
    from hetero.rl.scheduler import (
        SchedulerConfig,
        fit_linear,
        measure_profile,
        predict,
        priced_step_sync_s,
        schedule,
        to_plan,
    )
    from hetero.rl.system import launch, read_metrics
    from hetero.rl.update import make_optimizer
    from hetero.rl.weightsync import flatten

    out = Path(a.out)
    ckpt = out / "init.pt"
    _init_checkpoint(a.config, ckpt)
    sets = [f"train.init_checkpoint={ckpt}"]
    cfg = load_config(a.config, sets)
    n_env, T = cfg.env.num_envs, cfg.algo.rollout_chunks
    samples = n_env * T
    t0 = time.time()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    slowdown = a.slowdown if a.slowdown is not None else max(1.0, 1.5 * a.devices / cores)
    episode = -(-cfg.env.max_episode_steps // cfg.sampler.chunk)  # chunk-steps per episode
    iterations = a.iterations or 1 + min(8, math.lcm(T, episode) // T)
    if slowdown < 1.0:
        raise SystemExit(f"--slowdown must be >= 1, got {slowdown}")
    if a.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {a.rounds}")
    print(f"{a.devices} ranks on {cores} cores: each emulates a device {slowdown:g}x slower than a core "
          f"(CPU demand {a.devices / slowdown:.2f} cores); {iterations} iterations per run, the first not timed",
          flush=True)
    # the update is fitted over 1/8 to 2x an iteration's samples (1, 1, 1, 2, 4 optimizer steps here), so that its
    # cost per step and per sample separate, and a data-parallel rank's small share is inside the measured range
    prof = measure_profile(cfg, sizes=sorted({n_env // k for k in a.ks}),
                           sample_sizes=[samples // 8, samples // 4, samples // 2, samples, 2 * samples],
                           slowdown=slowdown, repeats=15)  # 15 policy samples per size: its fit is noisy
    # the collectives of the update and the weight sync, priced by the predictor over a link fitted to gloo's
    # all-reduce between this many local processes
    model, _ = load_checkpoint(str(ckpt))
    opt, _, _ = make_optimizer(model, cfg)
    params = [p for g in opt.param_groups for p in g["params"]]
    grad_bytes = 4 * (sum(p.numel() for p in params) + len(params))  # the gradients + one "has grad" flag each
    weight_bytes = 4 * flatten(model).numel()
    update_steps = cfg.algo.update_epochs * math.ceil(samples / cfg.algo.minibatch_size)
    coll, _, _ = run_collectives([2**18, 2**20, 2**22], world_size=a.devices, timeout=300)
    alpha, bw = fit_op_link(coll, "all_reduce")
    link = Link(fabric="gloo-local", bandwidth=bw, latency=alpha)
    print(f"gloo all-reduce over {a.devices} local ranks: alpha {alpha * 1e6:.0f} us, {bw / 1e9:.2f} GB/s; "
          f"{update_steps} optimizer steps of {grad_bytes / 2**20:.2f} MiB gradients, weights "
          f"{weight_bytes / 2**20:.2f} MiB", flush=True)
    if a.transfer_ms is None:
        sizes = sorted({n_env // k for k in a.ks})
        msg = [channel_message_s(m) for m in sizes]
        fit = fit_linear([float(m) for m in sizes], msg)
        transfer = {"fixed_s": fit.fixed_s, "per_item_s": fit.per_item_s}
        print("channel message (obs / actions) between two ranks: " + ", ".join(
            f"{m} envs {t * 1e3:.2f} ms" for m, t in zip(sizes, msg)), flush=True)
    else:
        transfer = {"fixed_s": a.transfer_ms / 1e3, "per_item_s": 0.0}

    def emulated(n: int) -> dict:  # the environment of a job of n ranks emulating the slower devices
        return {"HETERO_SLOWDOWN_BY_RANK": ",".join([f"{slowdown:g}"] * n)} if slowdown > 1 else {}

    job_env = emulated(a.devices)
    # the lockstep data-parallel update of every actor count a placement can have (2 .. all ranks), measured: its
    # all-reduce also absorbs the skew between the ranks' padded blocks, which gloo's all-reduce alone does not show
    sync_step = {}
    for n in range(2, a.devices + 1):
        sync_step[n] = step_sync_s(a.config, ckpt, ranks=n, samples=samples, env=emulated(n))
        print(f"data-parallel update over {n} ranks: {sync_step[n] * 1e3:.1f} ms of all-reduce per optimizer step "
              f"(gloo alone prices {priced_step_sync_s(grad_bytes, n, link) * 1e3:.1f} ms)", flush=True)
    base = {
        "devices": [{"type": "cpu", "count": a.devices}],
        "workload": {"num_envs": n_env, "rollout_chunks": T, "transfer": transfer,
                     "update_steps": update_steps, "grad_bytes": grad_bytes, "weight_bytes": weight_bytes,
                     "step_sync_s": sync_step},
        "link": {"fabric": link.fabric, "bandwidth": link.bandwidth, "latency": link.latency},
        "profiles": {"cpu": to_dict(prof)},
        "k_choices": sorted(set(a.ks) | {1, 2, 4, 8})}
    sc = build(SchedulerConfig, base)
    best, runner = schedule(sc)
    runs = [("collocated_seq", RolePlan.from_dict(_roles("collocated", a.devices, a.devices, n_env))),
            ("collocated_one_rank", RolePlan.from_dict(_roles("collocated", 1, a.devices, n_env)))]
    runs += [(f"disaggregated_k{k}", RolePlan.from_dict(_roles("disaggregated", k, a.devices, n_env))) for k in a.ks]
    runs += [(f"hybrid_k{k}", RolePlan.from_dict(_roles("hybrid", k, a.devices, n_env))) for k in a.ks if k > 1]
    # collocated with two micro-batches per rank: each rank samples for one while the other simulates
    runs.append((f"collocated_k{2 * a.devices}", RolePlan.from_dict(_roles("collocated", 2 * a.devices, a.devices,
                                                                           n_env))))
    runs.append(("scheduler", best))
    for name, rp in runs:
        rp.predicted = predict(rp, sc)
        to_plan(rp, samples=samples).to_file(out / f"plan_{name}.yaml")
    # rounds in alternating order (forward, backward, ...), so that the machine's speed drifting during the bench
    # falls on every placement alike instead of on the last ones
    order = [runs[::-1] if i % 2 else runs for i in range(a.rounds)]
    timed: dict[str, list[float]] = {name: [] for name, _ in runs}  # mean iteration seconds of each round
    records: dict[str, list[dict]] = {name: [] for name, _ in runs}  # the timed iterations of every round
    with Progress(transient=True) as bar:
        task = bar.add_task("RL system runs", total=len(runs) * a.rounds)
        for i, (name, rp) in enumerate(x for rnd in order for x in rnd):
            d = out / f"{name}_r{i // len(runs)}"
            shutil.rmtree(d, ignore_errors=True)  # a fresh run: the RL system resumes from a checkpoint left there
            res = launch(["--config", a.config, "--plan", str(out / f"plan_{name}.yaml"), "--iterations",
                          str(iterations), "--out", str(d), *sum([["--set", s] for s in sets], [])],
                         world_size=rp.world_size, timeout_s=a.timeout, capture=True, env=job_env)
            if res.returncode != 0:
                print(res.stdout[-2000:], res.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"run {name} failed")
            recs = read_metrics(str(d))[1:]
            timed[name].append(sum(r["iter_s"] for r in recs) / len(recs))
            records[name] += recs
            bar.print(f"round {i // len(runs) + 1}/{a.rounds}: {name} {timed[name][-1]:.3f} s per iteration")
            bar.advance(task)
    modes = {}
    for name, rp in runs:
        recs = records[name]
        it_s = sum(r["iter_s"] for r in recs) / len(recs)
        env_sps = sum(r["env_steps"] for r in recs) / sum(r["iter_s"] for r in recs)
        modes[name] = {"placement": rp.describe(), "measured_iter_s": it_s, "rounds_iter_s": timed[name],
                       "predicted_iter_s": rp.predicted.iteration_s,
                       "predicted_rollout_s": rp.predicted.rollout_s, "predicted_train_s": rp.predicted.train_s,
                       "pred_error": abs(rp.predicted.iteration_s - it_s) / it_s,
                       "env_steps_per_s": env_sps, "samples_per_s": samples / it_s,
                       "switch_mib": max(r["switch_bytes"] for r in recs) / 2**20,
                       "rollout_s": sum(r["rollout_s"] for r in recs) / len(recs),
                       "train_s": sum(r["train_s"] for r in recs) / len(recs),
                       # the first actor rank's train_s split: waiting for / receiving the trajectories, the
                       # update's compute (padded) and its gradient all-reduces
                       **{k: sum(r[k] for r in recs) / len(recs)
                          for k in ("assemble_s", "update_compute_s", "update_comm_s")}}
        m = modes[name]
        print(f"{name:20s} {m['placement']:60s} iter {it_s:.3f}s (pred {m['predicted_iter_s']:.3f}s, "
              f"err {m['pred_error']:.1%}) env-steps/s {env_sps:.0f} samples/s {m['samples_per_s']:.1f}; "
              f"update {m['update_compute_s']:.3f}s + all-reduce {m['update_comm_s']:.3f}s (pred "
              f"{m['predicted_train_s']:.3f}s), trajectories {m['assemble_s']:.3f}s", flush=True)
    seq = modes["collocated_seq"]["measured_iter_s"]
    # the fixed pipelined placements (not the scheduler's pick): env and rollout overlap across ranks with k > 1,
    # within a collocated rank with more micro-batches than ranks
    pipelines = [(n, rp) for n, rp in runs if n != "scheduler"
                 and rp.k > (len(rp.env.ranks) if rp.mode == "collocated" else 1)]
    piped = {n: modes[n]["measured_iter_s"] for n, _ in pipelines}
    best_t = min(m["measured_iter_s"] for m in modes.values())
    load = os.getloadavg()
    print(f"scheduler chose {best.describe()} (runner-up {runner.describe() if runner else '-'}); "
          f"wall {time.time() - t0:.0f} s; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on "
          f"{os.cpu_count()} cores", flush=True)
    print(json.dumps({"pipeline_speedup": seq / min(piped.values()),
                      "pipeline_speedup_disaggregated": seq / min(piped[n] for n, rp in pipelines
                                                                  if rp.mode == "disaggregated"),
                      "pipeline_speedup_vs_one_rank": modes["collocated_one_rank"]["measured_iter_s"]
                      / min(piped.values()),
                      "scheduler_vs_best": modes["scheduler"]["measured_iter_s"] / best_t,
                      "pred_error": sum(m["pred_error"] for m in modes.values()) / len(modes), "modes": modes,
                      "profile": to_dict(prof),
                      "link": {"latency_s": alpha, "bandwidth": bw}, "step_sync_s": sync_step,
                      "slowdown": slowdown, "cores": cores,
                      "load_average": load, "devices": a.devices, "rounds": a.rounds,
                      "iterations": iterations}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
