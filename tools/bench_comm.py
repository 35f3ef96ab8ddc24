"""Bus bandwidth of the ``hetero`` backend vs plain gloo vs mpi4py, and hierarchical vs flat all_reduce across a
slow link between two device types (emulated with two network namespaces joined by a rate-limited veth pair).

    python tools/bench_comm.py --rounds 5            # full run: 1-64 MB, world 2 and 4, netns at 1 Gbit/s
    python tools/bench_comm.py --sizes-mb 1,4 --worlds 2 --no-netns    # quick look
    python tools/bench_comm.py --sizes-mb 0.001,0.0625,1 --worlds 2 --no-netns --no-mpi   # per-call cost

Part 1 (one ``mpiexec`` launch per world size, all implementations side by side in the same processes; each
sample times one op started after a barrier, the slowest rank's time counts; the implementations take turns
sample by sample in an order that rotates every sample, so a slow spell of the shared machine hits them all
alike and none always runs first; ``--rounds`` x a size-dependent count
of samples each; a row's time is the median sample, and every ratio in the summary is the median over samples of
the paired ratio t_gloo / t_impl, which cancels the machine's slow spells): all_reduce, all_gather, broadcast,
send/recv over
  gloo           plain torch.distributed gloo group
  gloo-control   a second plain gloo group: the same library measured again, so control_vs_native_min is the
                 noise floor of a per-cell minimum ratio on this machine
  hetero         ``hetero`` group, all ranks one device type (passes straight to gloo; size checks on)
  hetero-nocheck the same with HETERO_CHECK_SIZES=off
  hetero-2types  ``hetero`` group, ranks split into two device types (hierarchical, gloo bridge)
  hetero-2types-mpibridge  the same with the MPI bridge
  mpi4py         raw mpi4py on numpy buffers
Part 2 (root, iproute2): namespaces A and B, a veth pair between them limited with ``tc tbf`` to --rate-mbit,
ranks 0,1 in A (type x) and 2,3 in B (type y); flat gloo vs the hierarchical ``hetero`` all_reduce. Everything
is torn down in ``finally``.

Bus bandwidth as in nccl-tests: all_reduce S/t*2(n-1)/n, all_gather (S = whole output) S/t*(n-1)/n,
broadcast S/t, send/recv (pairs exchanging S both ways) S/t. The last line printed is one JSON object:
{"hetero_vs_native_min", "control_vs_native_min", "hier_vs_flat_allreduce", "hier_vs_flat_allreduce_single_machine",
 "mpi_vs_gloo_1_4mb", "mpi_bridge_vs_gloo_bridge_1_4mb", "rows": [...]} (ratios of bus bandwidth, higher is better,
over the 1-64 MB cells). Sizes under 1 MB (``--sizes-mb 0.001,...``) measure the per-call cost instead:
``hetero_extra_us_under_1mb_median`` is the median over those cells of hetero's median time minus gloo's, in us
(``control_extra_us_under_1mb_median`` the same for the second gloo group: its noise floor).
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
from datetime import timedelta
from pathlib import Path

OPS = ("all_reduce", "all_gather", "broadcast", "send_recv")


def _busbw(op: str, nbytes: int, t: float, n: int) -> float:
    alg = nbytes / t
    if op == "all_reduce":
        return alg * 2 * (n - 1) / n
    if op == "all_gather":
        return alg * (n - 1) / n
    return alg


def _iters(mb: float) -> int:
    """Samples per round for an ``mb``-MB cell: 64 at 1 MB down to 4 at 16-64 MB, up to 512 below 1 MB (small ops
    are fast and noisy)."""
    return max(4, min(512, int(64 / mb)))


def _rotation(k: int, i: int) -> list[int]:
    """Order of the ``k`` implementations in sample ``i``: rotated by ``i``, so each takes every position
    equally often (the op that runs right after another one on the same sockets is measurably slower here)."""
    return [(i + j) % k for j in range(k)]


# -- worker side ------------------------------------------------------------------------------------------
def _torch_op(op: str, group, buf, outs, rbuf, rank: int, world: int):
    """One op over a torch group: buf [n] fp32, outs world x [n / world], rbuf [n] (receive buffer)."""
    import torch.distributed as dist

    if op == "all_reduce":
        dist.all_reduce(buf, group=group)
    elif op == "all_gather":
        dist.all_gather(outs, buf[: outs[0].numel()], group=group)
    elif op == "broadcast":
        dist.broadcast(buf, group_src=0, group=group)
    else:
        peer = rank ^ 1
        if peer < world:
            reqs = [dist.isend(buf, group_dst=peer, group=group), dist.irecv(rbuf, group_src=peer, group=group)]
            for r in reqs:
                r.wait()


def _mpi_op(op: str, comm, arr, outarr, recvarr, rank: int, world: int, MPI):
    if op == "all_reduce":
        comm.Allreduce(MPI.IN_PLACE, arr)
    elif op == "all_gather":
        comm.Allgather(arr[: arr.size // world], outarr)
    elif op == "broadcast":
        comm.Bcast(arr, root=0)
    else:
        peer = rank ^ 1
        if peer < world:
            reqs = [comm.Isend(arr, dest=peer), comm.Irecv(recvarr, source=peer)]
            MPI.Request.Waitall(reqs)


def worker(args) -> None:
    """One rank: build the groups, time every (impl, op, size), print rows as JSON lines from rank 0."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    import hetero.communicator as hc
    from hetero.communicator.topology import CommConfig

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    tmo = timedelta(seconds=120)
    dist.init_process_group("gloo", timeout=tmo)
    half = "x" if rank < world // 2 else "y"
    impls: dict[str, object] = {"gloo": dist.group.WORLD}
    cfg = CommConfig.from_env(timeout=tmo)
    if args.mode == "local":
        impls["gloo-control"] = dist.new_group(backend="gloo", timeout=tmo)  # the same library again: noise floor
        impls["hetero"] = dist.new_group(backend="hetero", timeout=tmo,
                                         pg_options=hc.HeteroOptions(device_type="x", config=cfg))
        nocheck = CommConfig(**{**cfg.__dict__, "check_every": 0})
        impls["hetero-nocheck"] = dist.new_group(backend="hetero", timeout=tmo,
                                                 pg_options=hc.HeteroOptions(device_type="x", config=nocheck))
    impls["hetero-2types"] = dist.new_group(backend="hetero", timeout=tmo,
                                            pg_options=hc.HeteroOptions(device_type=half, config=cfg))
    MPI = None
    if args.mode == "local" and args.mpi:
        from mpi4py import MPI

        mpicfg = CommConfig(**{**cfg.__dict__, "bridge": "mpi"})
        impls["hetero-2types-mpibridge"] = dist.new_group(
            backend="hetero", timeout=tmo, pg_options=hc.HeteroOptions(device_type=half, config=mpicfg))
        impls["mpi4py"] = MPI.COMM_WORLD
    if rank == 0:
        print("DESCRIBE " + json.dumps({k: hc.describe(g) for k, g in impls.items()
                                        if k.startswith("hetero")}), flush=True)
    ops = [o for o in args.ops.split(",") if o]
    for mb in _sizes(args.sizes_mb):
        n = max(world, int(mb * (1 << 20)) // 4 // world * world)
        buf = torch.ones(n)
        outs = [torch.empty(n // world) for _ in range(world)]
        rbuf = torch.empty(n)
        arr, outarr, recvarr = buf.numpy(), torch.empty(n).numpy(), rbuf.numpy()
        for op in ops:
            def run(name, op=op, arr=arr, outarr=outarr, recvarr=recvarr, buf=buf, outs=outs, rbuf=rbuf):
                if name == "mpi4py":
                    _mpi_op(op, impls[name], arr, outarr, recvarr, rank, world, MPI)
                else:
                    _torch_op(op, impls[name], buf, outs, rbuf, rank, world)
            for name in impls:
                run(name)  # warm-up
            it = _iters(mb) * args.rounds
            samples = torch.empty(len(impls), it, dtype=torch.float64)
            names = list(impls)
            for i in range(it):  # implementations interleaved per sample: a slow spell of the machine hits all;
                for j in _rotation(len(names), i):  # the order rotates, so no implementation always runs first
                    name = names[j]
                    dist.barrier()  # each sample: all ranks start together, slowest rank's time counts
                    t0 = time.perf_counter()
                    run(name)
                    samples[j, i] = time.perf_counter() - t0
                buf.fill_(1.0)
            dist.all_reduce(samples, op=dist.ReduceOp.MAX)
            if rank == 0:
                for j, name in enumerate(impls):
                    t = samples[j].median().item()
                    row = {"part": args.mode, "impl": name, "op": op, "world": world, "mb": mb, "samples": it,
                           "time_ms": round(t * 1e3, 3), "busbw_gbs": round(_busbw(op, mb * (1 << 20), t, world) / 1e9, 4),
                           "vs_gloo": round((samples[0] / samples[j]).median().item(), 4)}
                    print("ROW " + json.dumps(row), flush=True)
    dist.barrier()
    dist.destroy_process_group()


# -- driver side ------------------------------------------------------------------------------------------
def _collect(out: str) -> tuple[list[dict], dict]:
    rows, desc = [], {}
    for line in out.splitlines():
        if line.startswith("ROW "):
            rows.append(json.loads(line[4:]))
        elif line.startswith("DESCRIBE "):
            desc = json.loads(line[9:])
    return rows, desc


def run_local(args, world: int, progress) -> tuple[list[dict], dict]:
    """Part 1 for one world size under mpiexec (or plain processes with --no-mpi)."""
    from hetero.runtime.testing import free_port

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", "local", "--sizes-mb", args.sizes_mb, "--ops", args.ops,
           "--rounds", str(args.rounds)]
    if args.mpi:
        mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
        if mpiexec is None:
            raise SystemExit("mpiexec not found: pip install mpi4py mpich, or pass --no-mpi")
        wrapper = ("import os,runpy,sys; os.environ['RANK']=os.environ['PMI_RANK']; sys.argv=sys.argv[1:]; "
                   "runpy.run_path(sys.argv[0], run_name='__main__')")
        p = subprocess.run([mpiexec, "-n", str(world), sys.executable, "-c", wrapper, *cmd[1:]],
                           capture_output=True, text=True, timeout=args.launch_timeout, env=env)
        outs = [p]
    else:
        cmd += ["--no-mpi"]
        procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for r in range(world)]
        outs = []
        for pr in procs:
            o, e = pr.communicate(timeout=args.launch_timeout)
            outs.append(subprocess.CompletedProcess(cmd, pr.returncode, o, e))
    for p in outs:
        if p.returncode != 0:
            raise SystemExit(f"local world {world} failed (rc {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    progress()
    return _collect("".join(p.stdout for p in outs))


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def run_netns(args, progress) -> list[dict]:
    """Part 2: two namespaces, rate-limited veth, 4 ranks (2 per namespace / device type)."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        raise SystemExit("netns part needs iproute2 (apt-get install -y iproute2) or pass --no-netns")
    tag = f"hc{os.getpid() % 100000}"
    ns = (f"{tag}a", f"{tag}b")
    dev = (f"{tag}va", f"{tag}vb")
    addr = ("10.213.77.1", "10.213.77.2")
    made: list[str] = []
    procs: list[subprocess.Popen] = []
    try:
        for n in ns:
            _sh("ip", "netns", "add", n)
            made.append(n)
        _sh("ip", "link", "add", dev[0], "type", "veth", "peer", "name", dev[1])
        for i in range(2):
            _sh("ip", "link", "set", dev[i], "netns", ns[i])
            _sh("ip", "-n", ns[i], "addr", "add", f"{addr[i]}/24", "dev", dev[i])
            _sh("ip", "-n", ns[i], "link", "set", dev[i], "up")
            _sh("ip", "-n", ns[i], "link", "set", "lo", "up")
            _sh("ip", "netns", "exec", ns[i], "tc", "qdisc", "add", "dev", dev[i], "root", "tbf",
                "rate", f"{args.rate_mbit}mbit", "burst", "256kb", "latency", "100ms")
        port = 29000 + os.getpid() % 20000
        cmd = [sys.executable, __file__, "--worker", "netns", "--sizes-mb", args.netns_sizes_mb,
               "--ops", "all_reduce", "--rounds", str(args.rounds), "--no-mpi"]
        for r in range(4):
            i = 0 if r < 2 else 1
            env = {**os.environ, "RANK": str(r), "WORLD_SIZE": "4", "MASTER_ADDR": addr[0], "MASTER_PORT": str(port),
                   "GLOO_SOCKET_IFNAME": dev[i], "OMP_NUM_THREADS": "1"}
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns[i], *cmd], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        outs = []
        deadline = time.monotonic() + args.launch_timeout
        for pr in procs:
            o, e = pr.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if pr.returncode != 0:
                raise SystemExit(f"netns rank failed (rc {pr.returncode}):\n{o[-2000:]}\n{e[-4000:]}")
            outs.append(o)
        progress()
        rows, _ = _collect("".join(outs))
        for r in rows:
            r["part"] = f"netns-{args.rate_mbit}mbit"
        return rows
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
                pr.wait(10)
        for n in made:  # deleting a namespace deletes the veth end inside it, and with it the pair
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)


def _geo(xs: list[float]) -> float | None:
    xs = [x for x in xs if x and x > 0]
    return round(math.exp(sum(math.log(x) for x in xs) / len(xs)), 4) if xs else None


def _ratios(rows: list[dict], a: str, b: str, part_prefix: str, ops=OPS, mbs=None) -> list[float]:
    """Per cell (part, op, world, size): throughput of ``a`` over ``b`` as the median over samples of the paired
    ratio t_gloo / t_impl (both timed back to back in the same sample), divided for ``b`` other than gloo."""
    idx = {(r["part"], r["impl"], r["op"], r["world"], r["mb"]): r["vs_gloo"] for r in rows}
    out = []
    for (part, impl, op, world, mb), v in idx.items():
        if impl != a or not part.startswith(part_prefix) or op not in ops or (mbs and mb not in mbs):
            continue
        ref = idx.get((part, b, op, world, mb))
        if ref:
            out.append(v / ref)
    return out


def _sizes(text: str) -> list[float | int]:
    """``--sizes-mb`` as numbers: whole MB as int (row keys stay 1, 4, ...), fractions (small messages) as float;
    ValueError naming the entry that is not a positive number."""
    out = []
    for s in text.split(","):
        try:
            v = float(s)
        except ValueError:
            v = 0.0
        if not v > 0:
            raise ValueError(f"--sizes-mb must be positive numbers (MB), got {s!r}")
        out.append(int(v) if v.is_integer() else v)
    return out


def _extra_us(rows: list[dict], a: str, b: str) -> list[float]:
    """Per local cell: median time of ``a`` minus that of ``b``, in microseconds (the per-call cost of ``a``)."""
    t = {(r["impl"], r["op"], r["world"], r["mb"]): r["time_ms"] for r in rows if r["part"] == "local"}
    return [(v - t[(b, *k[1:])]) * 1e3 for k, v in t.items() if k[0] == a and (b, *k[1:]) in t]


def summarize(rows: list[dict]) -> dict:
    big = [r for r in rows if r["mb"] >= 1]  # the targets' range, 1-64 MB
    small = [r for r in rows if r["mb"] < 1]
    native = _ratios(big, "hetero", "gloo", "local")
    extra = sorted(_extra_us(small, "hetero", "gloo"))
    ctrl = sorted(_extra_us(small, "gloo-control", "gloo"))
    return {
        "hetero_vs_native_under_1mb_geomean": _geo(_ratios(small, "hetero", "gloo", "local")),
        "hetero_extra_us_under_1mb_median": round(extra[len(extra) // 2], 1) if extra else None,
        "control_extra_us_under_1mb_median": round(ctrl[len(ctrl) // 2], 1) if ctrl else None,
        "hetero_vs_native_min": round(min(native), 4) if native else None,
        "hetero_vs_native_geomean": _geo(native),
        "control_vs_native_min": (round(min(x), 4) if (x := _ratios(big, "gloo-control", "gloo", "local"))
                                  else None),
        "hetero_nocheck_vs_native_min": (round(min(x), 4) if (x := _ratios(big, "hetero-nocheck", "gloo", "local"))
                                         else None),
        "hier_vs_flat_allreduce": _geo(_ratios(big, "hetero-2types", "gloo", "netns", ("all_reduce",))),
        "hier_vs_flat_allreduce_single_machine": _geo(
            [x for x in _ratios(big, "hetero-2types", "gloo", "local", ("all_reduce",))]),
        "mpi_vs_gloo_1_4mb": _geo(_ratios(big, "mpi4py", "gloo", "local", mbs=(1, 2, 3, 4))),
        "mpi_bridge_vs_gloo_bridge_1_4mb": _geo(_ratios(big, "hetero-2types-mpibridge", "hetero-2types", "local",
                                                        mbs=(1, 2, 3, 4))),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes-mb", default="1,4,16,64", help="message sizes in MB (comma list)")
    p.add_argument("--worlds", default="2,4", help="world sizes (comma list)")
    p.add_argument("--ops", default=",".join(OPS), help="ops (comma list)")
    p.add_argument("--rounds", type=int, default=3, help="samples per cell = rounds x a size-dependent count (64 at 1 MB, 4 at 16-64 MB); median kept")
    p.add_argument("--no-mpi", dest="mpi", action="store_false", help="skip mpi4py and the MPI bridge")
    p.add_argument("--no-netns", dest="netns", action="store_false", help="skip the namespace part")
    p.add_argument("--rate-mbit", type=int, default=1000, help="veth rate limit between the two types")
    p.add_argument("--netns-sizes-mb", default="4,16,64", help="all_reduce sizes for the namespace part")
    p.add_argument("--launch-timeout", type=float, default=900, help="seconds one launch may take")
    p.add_argument("--worker", choices=["local", "netns"], dest="mode", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode:
        worker(args)
        return 0
    try:
        _sizes(args.sizes_mb)
    except ValueError as e:
        p.error(str(e))
    for s in args.netns_sizes_mb.split(","):
        if not s.isdigit() or int(s) < 1:
            p.error(f"--netns-sizes-mb must be positive integers (MB), got {s!r}")
    from rich.progress import Progress

    worlds = [int(w) for w in args.worlds.split(",")]
    rows: list[dict] = []
    describe: dict = {}
    with Progress(transient=True) as prog:
        task = prog.add_task("bench_comm", total=len(worlds) + int(args.netns))
        for w in worlds:
            r, d = run_local(args, w, lambda: prog.advance(task))
            rows += r
            describe = describe or d
        if args.netns:
            rows += run_netns(args, lambda: prog.advance(task))
    print(f"{'part':<16}{'impl':<26}{'op':<11}{'world':>5}{'MB':>7}{'ms':>10}{'busbw GB/s':>12}")
    for r in rows:
        print(f"{r['part']:<16}{r['impl']:<26}{r['op']:<11}{r['world']:>5}{r['mb']:>7}{r['time_ms']:>10.3f}"
              f"{r['busbw_gbs']:>12.3f}")
    load = os.getloadavg()
    summary = summarize(rows)
    print("load average during run:", ", ".join(f"{x:.2f}" for x in load), "| cpus:", os.cpu_count())
    print(json.dumps({**summary, "load_avg": [round(x, 2) for x in load], "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
