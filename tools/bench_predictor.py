"""Predictor benchmark: real training steps on this machine against ``hetero.predictor.predict``.

It first profiles this CPU (``hetero profile``: GEMMs, bandwidth, reference-GPT layers, AdamW, gloo), then runs
training configurations of two sizes of the reference GPT (``hetero.models.gpt``) with 1 to 4 gloo ranks: single
device, DP, PP (1F1B and GPipe, uneven stages), DP x PP, and ranks emulating 2x and 3x slower devices
(``hetero.runtime.emulate``, which pads each compute block with sleep; emulation is for benchmarks only). For each
it compares the measured step time (median over steps) and per-rank peak memory with the prediction made from the
Plan, the cluster (device types = this CPU as profiled, and scaled copies for the emulated ones; links = the gloo
alpha-beta fit of the profile), the ModelSpec traced from the model on the meta device, and the profile.

The training harness (below, ``--worker`` mode) is deliberately plain: ``torch.distributed.pipelining`` stages and
schedules for PP, gradients in one flat buffer per rank all-reduced over gloo after the backward (Megatron-style,
not overlapped: DDP's overlap would hide communication inside the backward, where the emulator could not tell it
from compute), ``torch.optim.AdamW``. One thread per rank; the CPU demand of a configuration (full-speed ranks
count 1, a rank emulating a k-times slower device counts 1/k) never exceeds 2 cores.

Device variants: a rank emulating a k-times slower device sleeps after each compute block, so its next block
starts on an idle core with cold caches, and ranks beside each other share this socket's L3 and memory bandwidth;
both make a block slower than the profile (layers timed back to back, one process) measured. So each emulated
type is profiled as it is used: before the runs, ``variant_factor`` times a fixed probe (a block of each model)
padded like the emulator and, for multi-rank configurations, beside a partner process, against the same probe
alone back to back; the type's profile is the CPU profile scaled by k x that factor (``--no-variants``: by k only).

Shared machines: other tenants of the host slow every core by a factor no profile can know in advance, and it
drifts over minutes. The profile times compute in thread-CPU seconds (not inflated by other processes of this VM),
and a fixed single-thread speed probe (one block of each model, forward + backward) is timed right after the
profile and again before and after each configuration's run. ``time_mape`` compares the measured step time with
the plain prediction (the profile as taken); ``time_mape_drift_adjusted`` with the prediction from the profile
rescaled by that drift (probe now / probe at profile time; nothing from the measured run feeds either). Each rank also reports the wall
and thread-CPU seconds of its compute blocks (contention > 1: it waited for a core), its process CPU, and the
seconds of each phase (forward and backward blocks, pipeline, gradient all-reduce, optimizer) next to the
predicted ones, so a miss can be traced to its phase.

Peak memory on CPU, per rank, is measured in a separate launch of the same configuration (as Sailor's runs do;
sampling must not disturb the timing), started with ``MALLOC_MMAP_THRESHOLD_=16384`` so glibc serves every
allocation >= 16 KiB with mmap and freed tensors leave the resident set: after one step (which creates the
AdamW state), the high-water mark over two more steps of the process's resident *anonymous* memory
(``/proc/self/statm`` resident minus file-backed pages, so torch's code pages that fault in on first use do not
count), sampled every millisecond and after every forward, backward and optimizer block, minus the same quantity
right after ``init_process_group`` (before the model exists). The prediction compared with it is the predictor's
per-rank memory minus the profile's runtime baseline (``memory_overhead_bytes``).

    python tools/bench_predictor.py --steps 8          # ~5 min on 2 idle cores; last line JSON
    python tools/bench_predictor.py --quick            # 4 configurations, a quick profile (smoke test)
    HETERO_BENCH_TRACE=1 python tools/bench_predictor.py --only "PP2"   # also print every compute block
    python tools/bench_predictor.py --sailor ../shared/benchmarks/sailor_validation
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = {
    # name: GPTConfig keywords (hidden sizes off the profile's grid on purpose: the regressor must interpolate)
    "gpt-s": dict(vocab=2048, hidden=192, heads=3, num_layers=4, seq_len=128),
    "gpt-m": dict(vocab=4096, hidden=320, heads=5, num_layers=6, seq_len=128),
}


@dataclass(kw_only=True)
class BenchConfig:
    """One training configuration."""

    name: str
    """Short label."""
    model: str
    """Key of MODELS."""
    mbs: int
    """Samples per micro-batch."""
    m: int
    """Micro-batches per step (per pipeline)."""
    stages: list[tuple[int, int]]
    """Layer range per stage."""
    dp: int = 1
    """Pipelines (DP replicas)."""
    slowdown: list[float] = field(default_factory=list)
    """Emulated slowdown per stage (1 = this CPU); empty = all 1."""
    schedule: str = "1f1b"
    """Pipeline schedule (1f1b or gpipe)."""

    @property
    def world(self) -> int:
        return len(self.stages) * self.dp

    def slow(self, s: int) -> float:
        return self.slowdown[s] if self.slowdown else 1.0

    @property
    def cpu_demand(self) -> float:
        return sum(self.dp / self.slow(s) for s in range(len(self.stages)))


def configs(quick: bool) -> list[BenchConfig]:
    """The benchmark matrix (layers: 0 = embedding, 1..N = blocks, N+1 = head)."""
    s_all, m_all = [(0, 6)], [(0, 8)]
    out = [
        BenchConfig(name="S 1 rank mbs1 m4", model="gpt-s", mbs=1, m=4, stages=s_all),
        BenchConfig(name="S 1 rank mbs4 m2", model="gpt-s", mbs=4, m=2, stages=s_all),
        BenchConfig(name="M 1 rank mbs2 m2", model="gpt-m", mbs=2, m=2, stages=m_all),
        BenchConfig(name="M 1 rank 3x-slow mbs2 m1", model="gpt-m", mbs=2, m=1, stages=m_all, slowdown=[3]),
        BenchConfig(name="S DP2 mbs2 m2", model="gpt-s", mbs=2, m=2, stages=s_all, dp=2),
        BenchConfig(name="M DP2 2x-slow mbs4 m1", model="gpt-m", mbs=4, m=1, stages=m_all, dp=2, slowdown=[2]),
        BenchConfig(name="S DP3 3x-slow mbs2 m2", model="gpt-s", mbs=2, m=2, stages=s_all, dp=3, slowdown=[3]),
        BenchConfig(name="S PP2 even 1f1b mbs2 m4", model="gpt-s", mbs=2, m=4, stages=[(0, 3), (3, 6)]),
        BenchConfig(name="S PP2 gpipe mbs1 m8", model="gpt-s", mbs=1, m=8, stages=[(0, 3), (3, 6)], schedule="gpipe"),
        BenchConfig(name="M PP2 uneven 1x|2x mbs2 m4", model="gpt-m", mbs=2, m=4, stages=[(0, 6), (6, 8)],
                    slowdown=[1, 2]),
        BenchConfig(name="M PP2 uneven 1x|3x mbs1 m6", model="gpt-m", mbs=1, m=6, stages=[(0, 7), (7, 8)],
                    slowdown=[1, 3]),
        BenchConfig(name="M PP3 uneven 1x|2x|3x mbs2 m6", model="gpt-m", mbs=2, m=6, stages=[(0, 5), (5, 7), (7, 8)],
                    slowdown=[1, 2, 3]),
        BenchConfig(name="S DPxPP 2x2 2x-slow mbs2 m4", model="gpt-s", mbs=2, m=4, stages=[(0, 3), (3, 6)], dp=2,
                    slowdown=[2, 2]),
        BenchConfig(name="M DPxPP 2x2 2x-slow mbs1 m4", model="gpt-m", mbs=1, m=4, stages=[(0, 5), (5, 8)], dp=2,
                    slowdown=[2, 2]),
    ]
    if quick:
        keep = {"S 1 rank mbs1 m4", "S DP2 mbs2 m2", "S PP2 even 1f1b mbs2 m4", "M PP2 uneven 1x|2x mbs2 m4"}
        out = [c for c in out if c.name in keep]
    for c in out:
        assert c.cpu_demand <= 2.0 + 1e-9, c.name
    return out


# ----------------------------------------------------------------------------- cluster, plan, prediction

def type_id(slow: float) -> str:
    return "bench-cpu" if slow == 1 else f"bench-cpu-{slow:g}x-slower"


def rank_types(cfg: BenchConfig) -> list[float]:
    """Slowdown of each rank: stage s holds ranks s*dp .. s*dp+dp-1."""
    return [cfg.slow(s) for s in range(len(cfg.stages)) for _ in range(cfg.dp)]


def build_cluster(cfg: BenchConfig, prof):
    """One node per run of equal-type ranks; peak/bandwidth from the profile, links from its gloo fit."""
    from hetero.cluster.spec import Cluster

    p2p = prof.collective_links.get("send_recv")  # the physical link: send/recv's own fit
    bw, lat = (p2p.bandwidth, p2p.latency) if p2p else (prof.link_bandwidth, prof.link_latency_s)
    types, nodes = {}, []
    for slow in rank_types(cfg):
        tid = type_id(slow)
        types.setdefault(tid, {"id": tid, "name": f"this CPU, 1 thread, emulated {slow:g}x slower" if slow != 1
                               else "this CPU, 1 thread", "memory_gib": 24.0,
                               "memory_bandwidth_gbs": prof.memory_bandwidth / slow / 1e9,
                               "peak_tflops": {k: v / slow / 1e12 for k, v in prof.peak_flops.items()},
                               "torch_device": "cpu", "dist_backend": "gloo", "matmul_efficiency": 1.0})
        if nodes and nodes[-1]["devices"]["type"] == tid:
            nodes[-1]["devices"]["count"] += 1
        else:
            nodes.append({"name": f"n{len(nodes)}", "devices": {"type": tid, "count": 1},
                          "intra_link": {"fabric": "gloo-loopback", "bandwidth_gbs": bw / 1e9,
                                         "latency_us": lat * 1e6}})
    doc = {"name": "bench", "device_types": list(types.values()), "nodes": nodes,
           "network": {"bandwidth_gbps": bw * 8 / 1e9, "latency_us": lat * 1e6,
                       "fabric": "gloo-loopback"}}
    return Cluster.from_dict(doc), doc


def build_plan(cfg: BenchConfig, num_layers: int):
    from hetero.autoparallel.plan import Plan, Stage

    stages = [Stage(layers=lo_hi, device_type=type_id(cfg.slow(s)), ranks=[s * cfg.dp + d for d in range(cfg.dp)],
                    dp=cfg.dp) for s, lo_hi in enumerate(cfg.stages)]
    return Plan(model=cfg.model, num_layers=num_layers, global_batch=cfg.mbs * cfg.m * cfg.dp,
                num_microbatches=cfg.m, seq_len=MODELS[cfg.model]["seq_len"], schedule=cfg.schedule, dtype="fp32",
                stages=stages)


def model_spec(model: str, mbs: int):
    """The ModelSpec traced from the reference GPT with its loss (meta device)."""
    import torch

    from hetero.models.gpt import GPT, GPTConfig, lm_loss
    from hetero.models.trace import spec_from_module

    c = GPTConfig(name=model, **MODELS[model])
    with torch.device("meta"):
        net = GPT(c)
    tokens = torch.zeros(mbs, c.seq_len, dtype=torch.long)
    return spec_from_module(net, tokens, name=model, dtype="fp32", loss_fn=lm_loss, target=tokens)


# ----------------------------------------------------------------------------- the worker (one rank)

PAGE = os.sysconf("SC_PAGE_SIZE")


def anon_rss() -> int:
    """Resident anonymous memory of this process in bytes (resident minus file-backed pages: code pages of the
    torch libraries that page in on first use are not memory the model uses)."""
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    return (int(fields[1]) - int(fields[2])) * PAGE


class MemorySampler:
    """High-water mark of ``anon_rss`` from a background thread (every 1 ms) plus explicit ``sample()`` calls."""

    def __init__(self):
        import threading

        self.peak = 0
        self.active = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.001):
            if self.active:
                self.sample()

    def sample(self):
        a = anon_rss()
        if a > self.peak:
            self.peak = a

    def start(self):
        self.active = True
        self.sample()
        self._thread.start()

    def stop(self) -> int:
        self.sample()
        self._stop.set()
        self._thread.join()
        return self.peak


def worker(args: argparse.Namespace) -> int:
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    from hetero.models.gpt import Block, Embedding, GPTConfig, Head, lm_loss
    from hetero.runtime.emulate import Emulator

    torch.set_num_threads(1)
    job = json.loads(Path(args.job).read_text())
    cfg = BenchConfig(**{k: v for k, v in job["config"].items()})
    cfg.stages = [tuple(s) for s in cfg.stages]
    rank, world = args.rank, cfg.world
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    dist.barrier()
    baseline = anon_rss()
    # benchmark-only emulation of a slower device (the rank's slowdown), see hetero.runtime.emulate
    # as hetero-run --emulate: duty cycles packed onto the cores (a fast rank has one alone), phases per core
    layout = Emulator.pack_cores(rank_types(cfg), sorted(os.sched_getaffinity(0))) \
        if hasattr(os, "sched_setaffinity") else None
    if layout is not None:
        os.sched_setaffinity(0, layout[rank][0])
    phase = layout[rank][1] if layout is not None else Emulator.alternating_phase(rank_types(cfg), rank)
    emu = Emulator(slowdown=cfg.slow(rank // cfg.dp), phase=phase)
    mem = MemorySampler()
    acct = {"on": job["warmup"] == 0, "wall": 0.0, "cpu": 0.0, "fwd": 0.0, "bwd": 0.0, "opt": 0.0}
    phases = {"pipeline": 0.0, "allreduce": 0.0, "optimizer": 0.0}  # wall seconds summed over the timed steps

    @contextlib.contextmanager
    def block(kind: str):
        """One compute block: padded by the emulator; wall and thread-CPU seconds summed (contention factor)."""
        emu.before(kind)
        w0, c0 = time.perf_counter(), time.thread_time()
        yield
        w, c = time.perf_counter() - w0, time.thread_time() - c0
        padded = emu.pad(w, kind)
        if os.environ.get("HETERO_BENCH_TRACE") and acct["on"]:
            print(f"TRACE r{rank} {kind} wall {w * 1e3:.2f} cpu {c * 1e3:.2f} padded {padded * 1e3:.2f}", flush=True)
        if acct["on"]:
            acct["wall"] += w
            acct["cpu"] += c
            acct[kind] += padded
    p, dp = len(cfg.stages), cfg.dp
    s, d = divmod(rank, dp)
    lo, hi = cfg.stages[s]
    c = GPTConfig(name=cfg.model, **MODELS[cfg.model])
    n_layers = c.num_layers + 2

    class LastStage(torch.nn.Module):
        """The last stage computes the loss itself (as Megatron does), so only scalars leave it."""

        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x, tgt):
            return lm_loss(self.body(x), tgt).reshape(1)  # [1]: the schedule concatenates outputs

    mods = []
    for i in range(lo, hi):
        torch.manual_seed(1000 + i)
        mods.append(Embedding(c) if i == 0 else Head(c) if i == n_layers - 1 else Block(c))
    net = torch.nn.Sequential(*mods)
    params = [q for q in net.parameters()]
    flat = torch.zeros(sum(q.numel() for q in params))
    off = 0
    for q in params:  # gradients live in one flat buffer (persistent, like DDP buckets / Megatron main_grad)
        q.grad = flat[off:off + q.numel()].view_as(q)
        off += q.numel()
    opt = torch.optim.AdamW(params, lr=1e-4)
    # process groups: every rank creates every group, in the same order
    dp_groups = [dist.new_group([t * dp + k for k in range(dp)]) for t in range(p)] if dp > 1 else None
    pp_groups = [dist.new_group([t * dp + k for t in range(p)]) for k in range(dp)] if p > 1 else None
    g = torch.Generator().manual_seed(d)
    n = cfg.mbs * cfg.m
    tokens = torch.randint(0, c.vocab, (n, c.seq_len), generator=g)
    targets = torch.randint(0, c.vocab, (n, c.seq_len), generator=g)

    if p == 1:
        def run_pipeline():
            for i in range(cfg.m):
                sl = slice(i * cfg.mbs, (i + 1) * cfg.mbs)
                with block("fwd"):
                    out = net(tokens[sl])
                mem.sample()
                with block("bwd"):
                    loss = lm_loss(out, targets[sl]) / cfg.m
                    del out
                    loss.backward()
                mem.sample()
    else:
        stage = PipelineStage(LastStage(net) if s == p - 1 else net, s, p, torch.device("cpu"), group=pp_groups[d])
        fwd, bwd = stage.forward_maybe_with_nosync, stage.backward_maybe_with_nosync

        def fwd_padded(*a, **k):
            with block("fwd"):
                out = fwd(*a, **k)
            mem.sample()
            return out

        def bwd_padded(*a, **k):
            with block("bwd"):
                out = bwd(*a, **k)
            mem.sample()
            return out
        stage.forward_maybe_with_nosync = fwd_padded
        stage.backward_maybe_with_nosync = bwd_padded
        sched_cls = Schedule1F1B if cfg.schedule == "1f1b" else ScheduleGPipe
        sched = sched_cls(stage, n_microbatches=cfg.m, loss_fn=lambda out, _tgt: out.sum())

        def run_pipeline():
            if s == 0:
                sched.step(tokens)
            elif s == p - 1:
                sched.step(tgt=targets, target=targets)
            else:
                sched.step()

    def train_step():
        t0 = time.perf_counter()
        run_pipeline()
        t1 = time.perf_counter()
        if dp_groups is not None:
            dist.all_reduce(flat, group=dp_groups[s])
            flat.div_(dp)
        t2 = time.perf_counter()
        with block("opt"):
            opt.step()
            flat.zero_()
        mem.sample()
        if acct["on"]:
            phases["pipeline"] += t1 - t0
            phases["allreduce"] += t2 - t1
            phases["optimizer"] += time.perf_counter() - t2

    times, peak, persistent = [], 0, 0
    cpu0 = None  # process CPU seconds (all threads) when the timed steps start
    if job["mode"] == "time":
        for it in range(job["warmup"] + job["steps"]):
            dist.barrier()
            t0 = time.perf_counter()
            train_step()
            dist.barrier()
            if it + 1 == job["warmup"]:
                cpu0 = time.process_time()
            if it >= job["warmup"]:
                times.append(time.perf_counter() - t0)
            acct["on"] = it + 1 >= job["warmup"]
    else:  # memory run (this process was started with MALLOC_MMAP_THRESHOLD_=16384)
        dist.barrier()
        train_step()  # first step allocates the AdamW state
        mem.start()
        for _ in range(2):
            dist.barrier()
            train_step()
        dist.barrier()
        peak = mem.stop()
        persistent = anon_rss()  # after the step: weights, gradients, AdamW state, pipeline buffers
    Path(args.out).write_text(json.dumps({"rank": rank, "times": times, "baseline_rss": baseline, "peak_rss": peak,
                                          "persistent_rss": persistent,
                                          "process_cpu_s": (time.process_time() - cpu0) / max(len(times), 1) if cpu0 is not None else 0.0,
                                          "compute_cpu_s": acct["cpu"] / max(len(times), 1),
                                          "phases_s": {k: v / max(len(times), 1) for k, v in phases.items()},
                                          "blocks_s": {k: acct[k] / max(len(times), 1) for k in ("fwd", "bwd", "opt")},
                                          "slowdown": emu.slowdown,
                                          "contention": acct["wall"] / acct["cpu"] if acct["cpu"] > 0 else 1.0, "params": sum(q.numel() for q in params)}))
    dist.barrier()
    dist.destroy_process_group()
    return 0


def speed_probe(reps: int = 12) -> float:
    """Thread-CPU seconds of a fixed reference workload on one thread: forward + backward of one block of each
    benchmark model (micro-batch 2), the median of ``reps`` per model, summed. The ratio of two probes is how much
    faster or slower this shared machine runs now than when the profile was taken (other tenants of the host slow
    every core)."""
    times = _probe_blocks(1.0, reps)
    return sum(statistics.median(times[i::len(MODELS)]) for i in range(len(MODELS)))


def _probe_blocks(k: float, reps: int, seconds: float = 0.0) -> list[float]:
    """Thread-CPU seconds of forward + backward of one block of each benchmark model (micro-batch 2) on an
    emulated device ``k`` times slower: each block is followed by ``(k - 1) x`` its wall time of sleep, about what
    ``runtime/emulate.py`` pads (its models' blocks alternate in the returned list). ``reps`` timed blocks per model (or, with ``seconds``, loop that long untimed:
    the partner load)."""
    import torch

    from hetero.models.gpt import Block, GPTConfig

    torch.set_num_threads(1)
    mods = []
    for name, kw in MODELS.items():
        c = GPTConfig(name=name, **kw)
        mods.append((Block(c), torch.randn(2, kw["seq_len"], kw["hidden"], requires_grad=True)))
    out: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while (i < reps) if not seconds else (time.perf_counter() < end):
        for mod, x in mods:
            w0, c0 = time.perf_counter(), time.thread_time()
            y = mod(x)
            y.backward(torch.ones_like(y))
            w, c = time.perf_counter() - w0, time.thread_time() - c0
            if i >= 1:  # the first round warms up
                out.append(c)
            if k > 1:
                time.sleep((k - 1) * w)
        i += 1
    return out


def variant_factor(k: float, colocated: bool, reps: int = 12) -> float:
    """How much longer a compute block takes on this machine when it runs (a) on an emulated device ``k`` times
    slower (sleep after each block: the core idles, and the next block starts with cold caches) and (b), with
    ``colocated``, while another process computes on the other core (shared L3 and memory bandwidth): the probe's
    median block time under those conditions / back to back alone, measured now, side by side (for ``k > 1`` the
    fastest such block, as the emulator pads to ``k x`` the fastest). The benchmark's emulated device types are
    profiled as they are used: the profile's compute scaled by ``k x`` this factor."""
    partner = None
    if colocated:
        code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r});"
                " import bench_predictor as b; b._probe_blocks(1.0, 0, seconds=120)")
        partner = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, OMP_NUM_THREADS="1"))
        time.sleep(2.0)  # let it import torch and start computing
    try:
        base = _probe_blocks(1.0, reps) if not colocated else None
        var = _probe_blocks(k, reps)
    finally:
        if partner is not None:
            partner.kill()
            partner.wait()
    if base is None:
        base = _probe_blocks(1.0, reps)
    if k <= 1.0:
        return statistics.median(var) / statistics.median(base)
    # an emulated block lasts k x the fastest run of that block (runtime/emulate.py), so per model: fastest block
    # under the k pattern over the median back-to-back one
    n = len(MODELS)
    return statistics.mean(min(var[i::n]) / statistics.median(base[i::n]) for i in range(n))


def run_config(cfg: BenchConfig, cluster_doc: dict, *, mode: str, steps: int, warmup: int, timeout: float
               ) -> list[dict]:
    """Launch the ranks of one configuration (``mode`` time or memory) and collect their JSON results."""
    from dataclasses import asdict

    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp, "job.json")
        job.write_text(json.dumps({"config": asdict(cfg), "cluster": cluster_doc, "steps": steps, "warmup": warmup,
                                   "mode": mode}))
        from hetero.runtime.testing import free_port, wait_all

        port = free_port()
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        if mode == "memory":  # allocations >= 128 KiB via mmap: freed tensors leave the resident set
            env["MALLOC_MMAP_THRESHOLD_"] = "16384"
        outs = [Path(tmp, f"r{r}.json") for r in range(cfg.world)]
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--job", str(job), "--rank", str(r),
                                   "--port", str(port), "--out", str(outs[r])], env=env) for r in range(cfg.world)]
        wait_all(procs, timeout_s=timeout, what=cfg.name)
        return [json.loads(o.read_text()) for o in outs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="4 configurations, quick profile, 2 steps")
    ap.add_argument("--steps", type=int, default=4, help="measured steps per configuration (median)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up steps per configuration")
    ap.add_argument("--profile", default=None, help="use this profile JSON instead of profiling now")
    ap.add_argument("--save-profile", default=None, help="write the profile taken now to this path")
    ap.add_argument("--only", default=None, help="run only configurations whose name contains this text")
    ap.add_argument("--json-out", default=None, help="write per-configuration results here")
    ap.add_argument("--sailor", default=None, help="score on the Sailor validation folder instead")
    ap.add_argument("--no-variants", dest="variants", action="store_false",
                    help="scale emulated types by their slowdown only (no measured device-variant factors)")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.sailor:
        from hetero.predictor.sailor import score

        result = score(args.sailor)
        keys = ("runs", "time_mape", "mem_mape", "time_mape_clean", "mem_mape_clean")
        for name, sub in result["subsets"].items():
            print(f"{name:20s} " + "  ".join(f"{k} {sub.get(k)}" for k in keys))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(result, indent=1))
        print(json.dumps({"subsets": {name: {k: sub.get(k) for k in keys} for name, sub in result["subsets"].items()}}))
        return 0

    from rich.console import Console
    from rich.table import Table

    from hetero.predictor import predict_detailed
    from hetero.predictor.calibrate import mape
    from hetero.predictor.microbench import ProfileConfig, profile_device
    from hetero.predictor.profile import DeviceProfile

    con = Console(stderr=True)
    load = load_before = os.getloadavg()
    con.print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    t_start = time.perf_counter()
    if args.profile:
        prof = DeviceProfile.from_json(args.profile)
    else:
        prof = profile_device(ProfileConfig(device="cpu", device_id="bench-cpu", threads=1, quick=args.quick),
                              progress=True)
        if args.save_profile:
            prof.to_json(args.save_profile)
    con.print(f"profile: fp32 {prof.peak_flops['fp32'] / 1e9:.1f} GFLOP/s, {prof.memory_bandwidth / 1e9:.1f} GB/s, "
              f"gloo alpha {prof.link_latency_s * 1e6:.0f} us, {prof.link_bandwidth / 1e9:.2f} GB/s, "
              f"baseline {prof.memory_overhead_bytes / 2**20:.0f} MiB")
    import torch

    torch.set_num_threads(1)
    probe0 = speed_probe()
    con.print(f"speed probe: {probe0 * 1e3:.2f} ms (reference for the drift of this machine's speed)")
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    cfgs = [c for c in configs(args.quick) if not args.only or args.only in c.name]
    rows = []
    factors: dict[tuple[float, bool], float] = {}
    for cfg in cfgs:
        cluster, doc = build_cluster(cfg, prof)
        spec = model_spec(cfg.model, cfg.mbs)
        plan = build_plan(cfg, spec.num_layers)
        # each device type as used: slowdown sl, and alone or beside other ranks on this socket (measured once per
        # variant on a fixed probe, before the runs; see variant_factor)
        for sl in set(rank_types(cfg)):
            key = (sl, cfg.world > 1)
            if key not in factors:
                factors[key] = variant_factor(*key) if args.variants else 1.0
                con.print(f"device variant: {sl:g}x slower, {'beside other ranks' if key[1] else 'alone'}: "
                          f"compute x{factors[key]:.3f}")
        profiles = {type_id(sl): prof.scaled(device=type_id(sl), scale=1 / (sl * factors[(sl, cfg.world > 1)]))
                    for sl in set(rank_types(cfg))}
        report = predict_detailed(cluster, spec, plan, profiles=profiles)
        pred = report.prediction
        t0 = time.perf_counter()
        probe_before = speed_probe()
        res = run_config(cfg, doc, mode="time", steps=steps, warmup=warmup, timeout=600)
        drift = (probe_before + speed_probe()) / 2 / probe0  # > 1: the machine runs slower than when profiled
        mres = run_config(cfg, doc, mode="memory", steps=0, warmup=0, timeout=600)
        wall = time.perf_counter() - t0
        measured = statistics.median(res[0]["times"])
        # the adjusted prediction rescales the profile's compute by the speed probes taken around this run (nothing
        # from the run itself); contention (wall / thread-CPU seconds of the compute blocks: > 1 when the ranks
        # waited for a core) is reported as a diagnostic only
        adj_profiles = {t: p_.scaled(device=t, scale=1 / drift) for t, p_ in profiles.items()}
        pred_adj = predict_detailed(cluster, spec, plan, profiles=adj_profiles).prediction
        contention = statistics.mean(r["contention"] for r in res)
        mem_meas = {r["rank"]: r["peak_rss"] - r["baseline_rss"] for r in mres}
        mem_pred = {r: pred.rank_memory_bytes[r] - prof.memory_overhead_bytes for r in mem_meas}
        worst = max(mem_meas, key=lambda r: mem_meas[r])
        wr = next(r for r in mres if r["rank"] == worst)
        smem = report.stages[worst // cfg.dp].memory
        breakdown = {"state_measured": wr["persistent_rss"] - wr["baseline_rss"], "state_predicted": smem.model_state,
                     "rest_measured": wr["peak_rss"] - wr["persistent_rss"], "activations_predicted": smem.activations}
        rows.append(dict(name=cfg.name, world=cfg.world, cpu_demand=round(cfg.cpu_demand, 2),
                         time_measured_s=measured, time_predicted_s=pred_adj.step_time_s,
                         time_predicted_unadjusted_s=pred.step_time_s, contention=round(contention, 3),
                         speed_drift=round(drift, 3),
                         step_times_s=res[0]["times"], mem_measured_bytes=mem_meas, mem_predicted_bytes=mem_pred,
                         mem_abs_predicted_bytes=dict(pred.rank_memory_bytes),
                         worst_rank=worst, memory_breakdown=breakdown,
                         phases_s={r["rank"]: r["phases_s"] for r in res}, blocks_s={r["rank"]: r["blocks_s"] for r in res}, wall_s=round(wall, 1)))
        con.print(f"{cfg.name:34s} step {measured:7.3f} s  pred {pred_adj.step_time_s:7.3f} s "
                  f"({(pred_adj.step_time_s / measured - 1) * 100:+5.1f}%; unadjusted {pred.step_time_s:.3f} s, "
                  f"speed drift {drift:.2f}, contention {contention:.2f})  mem r{worst} {mem_meas[worst] / 2**20:6.1f} "
                  f"MiB pred {mem_pred[worst] / 2**20:6.1f} MiB ({(mem_pred[worst] / mem_meas[worst] - 1) * 100:+5.1f}%)"
                  f"  [{wall:.0f} s]")
        for r in sorted(res, key=lambda r: r["rank"]):
            st = report.stages[r["rank"] // cfg.dp]
            ph, bl = r["phases_s"], r["blocks_s"]
            con.print(f"    r{r['rank']} process CPU {r['process_cpu_s']:.3f} s/step, compute-thread CPU {r['compute_cpu_s']:.3f}")
            con.print(f"    r{r['rank']} s  fwd {bl['fwd']:.3f} (pred {cfg.m * st.fwd_s[0]:.3f})  bwd {bl['bwd']:.3f} "
                      f"(pred {cfg.m * st.bwd_s[0]:.3f})  pipeline {ph['pipeline']:.3f}  allreduce {ph['allreduce']:.3f} "
                      f"(pred {st.allreduce_s:.3f})  optimizer {ph['optimizer']:.3f} (pred {st.optimizer_s:.3f})")
        con.print("    memory MiB: persistent {state_measured:.1f} (pred. weights+grads+AdamW {state_predicted:.1f}); "
                  "peak above it {rest_measured:.1f} (pred. activations {activations_predicted:.1f})".format(
                      **{k: v / 2**20 for k, v in breakdown.items()}))
    table = Table(title="predicted vs measured (CPU, gloo)")
    for col in ("config", "ranks", "cores", "contention", "step s", "pred s (drift adj.)", "err %", "plain err %",
                "mem MiB", "pred MiB", "err %"):
        table.add_column(col, justify="right" if col != "config" else "left")
    t_err, t_err_raw, m_err = [], [], []
    for r in rows:
        w = r["worst_rank"]
        te = (r["time_predicted_s"] / r["time_measured_s"] - 1) * 100
        me = (r["mem_predicted_bytes"][w] / r["mem_measured_bytes"][w] - 1) * 100
        tr = (r["time_predicted_unadjusted_s"] / r["time_measured_s"] - 1) * 100
        t_err.append(abs(te))
        t_err_raw.append(abs(tr))
        m_err.append(abs(me))
        table.add_row(r["name"], str(r["world"]), f"{r['cpu_demand']:g}", f"{r['contention']:.2f}",
                      f"{r['time_measured_s']:.3f}", f"{r['time_predicted_s']:.3f}", f"{te:+.1f}", f"{tr:+.1f}",
                      f"{r['mem_measured_bytes'][w] / 2**20:.1f}",
                      f"{r['mem_predicted_bytes'][w] / 2**20:.1f}", f"{me:+.1f}")
    Console().print(table)
    all_ranks_meas = [v for r in rows for v in r["mem_measured_bytes"].values()]
    all_ranks_pred = [r["mem_predicted_bytes"][k] for r in rows for k in r["mem_measured_bytes"]]
    load = os.getloadavg()
    summary = {"configs": len(rows), "time_mape": round(statistics.mean(t_err_raw), 2),
               "mem_mape": round(statistics.mean(m_err), 2),
               "time_mape_drift_adjusted": round(statistics.mean(t_err), 2),
               "profile_contention": round(prof.contention, 3),
               "device_variants": {f"{k:g}x{' colocated' if c else ''}": round(f, 3) for (k, c), f in factors.items()},
               "load_avg_1min": [round(load_before[0], 2), round(load[0], 2)]}
    print(f"time MAPE {summary['time_mape']:.2f}% (max {max(t_err_raw):.1f}%; with the speed-drift adjustment "
          f"{summary['time_mape_drift_adjusted']:.2f}%), memory MAPE (busiest rank, above the "
          f"process baseline) {summary['mem_mape']:.2f}% (max {max(m_err):.1f}%); all ranks "
          f"{mape(all_ranks_pred, all_ranks_meas):.2f}%; "
          f"{time.perf_counter() - t_start:.0f} s; load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows, "summary": summary,
                                                   "profile_calibration": prof.calibration}, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
