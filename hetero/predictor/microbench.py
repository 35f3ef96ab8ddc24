"""Microbenchmarks behind ``hetero profile``: GEMMs, memory bandwidth, transformer layers, AdamW, collectives.

``profile_device(ProfileConfig(device="cpu"))`` measures, with a rich progress bar:

* GEMMs ``(m x k) @ (k x n)`` over a grid of shapes for each dtype (median of repeats) -> peak FLOP/s per dtype
  (the best of the grid) and the records ``calibrate.GemmEfficiency`` learns from;
* memory bandwidth: a 64 MiB tensor copy (bytes read + written per second, best of repeats);
* layers of the reference GPT (``hetero.models.gpt``): a block and the LM head with its loss, forward and
  backward separately, over hidden size, sequence length and micro-batch size (``calibrate.LayerEfficiency``);
* AdamW steps over block-shaped parameter sets of growing size (``DeviceProfile.optimizer_time``);
* gloo collectives (all_reduce, all_gather, broadcast, send/recv) between 2 local processes over sizes
  4 KiB - 64 MiB, with a latency/bandwidth fit; each worker also reports its resident memory after init, the
  runtime baseline (``memory_overhead_bytes``).

    python -m hetero.predictor.microbench --quick -o /tmp/profile.json     # same as `hetero profile --quick`
    python -m hetero.predictor.microbench worker ...                        # internal: one collective rank
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hetero.config import check
from hetero.predictor.profile import (
    CollectiveRecord,
    DeviceProfile,
    GemmRecord,
    LayerRecord,
    OptimizerRecord,
    fit_link,
    summarize,
)

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "tf32": "float32"}


@dataclass(kw_only=True)
class ProfileConfig:
    """What ``profile_device`` measures."""

    device: str = "cpu"
    """Device kind to profile: cpu or cuda."""
    device_id: str | None = None
    """Device type id written into the profile (default: the id ``hetero discover`` gives this CPU / the catalog
    id of the GPU)."""
    threads: int = 1
    """torch intra-op threads on CPU (1 = one thread per rank, as the training benchmarks run)."""
    quick: bool = False
    """A small grid (tests, smoke runs)."""
    collectives: bool = True
    """Measure gloo collectives between 2 local processes (CPU only)."""
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    """GEMM dtypes."""
    cpu_time: bool = True
    """On CPU, time compute with thread-CPU seconds (equal to wall time on an idle machine; not inflated by other
    processes on a shared one). Collectives are always timed in wall seconds."""
    layer_dtype: str = "fp32"
    """dtype of the layer timings."""
    min_time_s: float = 0.03
    """Target seconds of repeats per measurement (at least 3 repeats, at most 50)."""
    layer_grid: list[dict] = field(default_factory=list)
    """Extra layer shapes to time: dicts with hidden, seq, mbs and optional heads, ffn, vocab, kind."""

    def __post_init__(self):
        check(self.device in ("cpu", "cuda"), "device", f"must be cpu or cuda, got {self.device!r}")
        check(self.threads >= 1, "threads", "must be >= 1")
        for i, d in enumerate(self.dtypes):
            check(d in TORCH_DTYPES, f"dtypes[{i}]", f"unknown dtype {d!r} (use {', '.join(TORCH_DTYPES)})")
        check(self.layer_dtype in TORCH_DTYPES, "layer_dtype", f"unknown dtype {self.layer_dtype!r}")
        check(self.min_time_s > 0, "min_time_s", "must be > 0")


def _timer(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def time_fn(fn: Callable[[], object], *, sync: Callable[[], None], min_time: float, max_reps: int = 50,
            clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds of ``fn`` (read on ``clock``) after one warm-up call, repeated until ``min_time`` wall
    seconds have passed (3..max_reps)."""
    fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = clock()
        fn()
        sync()
        times.append(clock() - t0)
    return statistics.median(times)


def clock_for(device: str, cpu_time: bool) -> Callable[[], float]:
    """The clock compute timings use: thread-CPU seconds on CPU when ``cpu_time`` (what the work costs on an
    idle core, not inflated by other processes on a shared machine), else wall seconds."""
    return time.thread_time if device == "cpu" and cpu_time else time.perf_counter


def gemm_grid(quick: bool) -> list[tuple[int, int, int]]:
    """(m, n, k) shapes: tokens-like m times weight-like (k, n), capped at ~4 GFLOP."""
    if quick:
        ms, ns, ks = (32, 256, 1024), (64, 512, 2048), (64, 512, 2048)
    else:
        ms, ns, ks = (16, 64, 256, 1024, 4096), (64, 256, 1024, 4096), (64, 256, 1024, 4096)
    return [(m, n, k) for m in ms for n in ns for k in ks if 2 * m * n * k <= 4.3e9]


def layer_grid(quick: bool) -> list[dict]:
    """Layer shapes to time: transformer blocks and LM heads."""
    out: list[dict] = []
    if quick:
        for h, s, mbs in ((64, 32, 1), (128, 64, 2), (128, 64, 8), (256, 128, 2)):
            out.append(dict(kind="transformer", hidden=h, seq=s, mbs=mbs))
        for h, v, s, mbs in ((64, 256, 32, 2), (128, 1024, 64, 4)):
            out.append(dict(kind="head", hidden=h, vocab=v, seq=s, mbs=mbs))
        return out
    for h in (64, 128, 256, 512):
        for s in (64, 128, 256):
            for mbs in (1, 2, 4, 8):
                if h * s * mbs <= 512 * 256 * 4:
                    out.append(dict(kind="transformer", hidden=h, seq=s, mbs=mbs))
    for h in (128, 256, 512):
        for v in (1024, 4096, 16384):
            for t in (128, 512, 2048):
                if h * v * t <= 512 * 4096 * 2048:
                    out.append(dict(kind="head", hidden=h, vocab=v, seq=min(t, 256), mbs=max(t // 256, 1)))
    return out


def _gemm_records(cfg: ProfileConfig, advance) -> list[GemmRecord]:
    import torch

    sync = _timer(cfg.device)
    out = []
    for dtype in cfg.dtypes:
        td = getattr(torch, TORCH_DTYPES[dtype])
        for m, n, k in gemm_grid(cfg.quick):
            a = torch.randn(m, k, dtype=td, device=cfg.device)
            b = torch.randn(k, n, dtype=td, device=cfg.device)
            secs = time_fn(lambda a=a, b=b: torch.mm(a, b), sync=sync, min_time=cfg.min_time_s,
                           clock=clock_for(cfg.device, cfg.cpu_time))
            out.append(GemmRecord(m=m, n=n, k=k, dtype=dtype, seconds=secs))
            advance()
    return out


def measure_bandwidth(device: str = "cpu", *, nbytes: int = 64 * 2**20, reps: int = 8,
                      clock: Callable[[], float] = time.perf_counter) -> float:
    """Best copy bandwidth (bytes read + written per second) of a ``nbytes`` tensor."""
    import torch

    sync = _timer(device)
    x = torch.ones(nbytes // 4, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = clock()
        y.copy_(x)
        sync()
        best = min(best, clock() - t0)
    return 2 * nbytes / best


def _layer_shape(d: dict) -> dict:
    h = int(d["hidden"])
    heads = int(d.get("heads") or max(h // 64, 2))
    return dict(kind=d.get("kind", "transformer"), hidden=h, heads=heads, ffn=int(d.get("ffn") or 4 * h),
                seq=int(d["seq"]), mbs=int(d["mbs"]), vocab=int(d.get("vocab") or 0))


def time_layer(shape: dict, *, device: str = "cpu", dtype: str = "fp32", min_time: float = 0.03,
               clock: Callable[[], float] = time.perf_counter) -> LayerRecord:
    """Forward and backward seconds of one reference-GPT layer (``kind`` transformer: a block; head: final norm +
    LM head + cross-entropy loss) for one micro-batch, with parameter gradients accumulating as in training."""
    import torch

    from hetero.models.gpt import Block as GPTBlock
    from hetero.models.gpt import GPTConfig, Head, lm_loss
    from hetero.models.spec import ModelSpec

    sh = _layer_shape(shape)
    td = getattr(torch, TORCH_DTYPES[dtype])
    sync = _timer(device)
    vocab = sh["vocab"] or 256
    cfg = GPTConfig(vocab=vocab, hidden=sh["hidden"], heads=sh["heads"], num_layers=1, seq_len=sh["seq"],
                    ffn=sh["ffn"])
    spec = ModelSpec.transformer(name="probe", num_layers=1, hidden=sh["hidden"], heads=sh["heads"], ffn=sh["ffn"],
                                 vocab=vocab, seq_len=sh["seq"], dtype="fp32")
    kind = sh["kind"]
    x = torch.randn(sh["mbs"], sh["seq"], sh["hidden"], dtype=td, device=device, requires_grad=True)
    if kind == "transformer":
        mod = GPTBlock(cfg).to(device=device, dtype=td)
        flops = spec.layers[1].flops_fwd * sh["mbs"]

        def fwd():
            return mod(x)

        def grad_of(y):
            return torch.ones_like(y)
    elif kind == "head":
        mod = Head(cfg).to(device=device, dtype=td)
        flops = spec.layers[-1].flops_fwd * sh["mbs"]
        tgt = torch.randint(0, vocab, (sh["mbs"], sh["seq"]), device=device)

        def fwd():
            return lm_loss(mod(x), tgt)

        def grad_of(y):
            return None
    else:
        raise ValueError(f"cannot time layer kind {kind!r} (transformer, head)")
    fs, bs = [], []
    y = fwd()
    y.backward(grad_of(y))
    start = time.perf_counter()
    while len(fs) < 3 or (time.perf_counter() - start < 2 * min_time and len(fs) < 30):
        sync()
        t0 = clock()
        y = fwd()
        sync()
        t1 = clock()
        y.backward(grad_of(y))
        sync()
        t2 = clock()
        fs.append(t1 - t0)
        bs.append(t2 - t1)
    return LayerRecord(kind=kind, dtype=dtype, hidden=sh["hidden"], ffn=sh["ffn"] if kind == "transformer" else 0,
                       heads=sh["heads"] if kind == "transformer" else 1, seq=sh["seq"],
                       vocab=vocab if kind != "transformer" else 0, mbs=sh["mbs"], tp=1, flops_fwd=float(flops),
                       fwd_s=statistics.median(fs), bwd_s=statistics.median(bs))


def time_adamw(hidden: int, blocks: int, *, vocab: int = 0, device: str = "cpu", min_time: float = 0.03,
               clock: Callable[[], float] = time.perf_counter) -> OptimizerRecord:
    """Seconds of one ``torch.optim.AdamW`` step over a model-shaped parameter set: ``blocks`` transformer blocks of
    width ``hidden`` plus, with ``vocab``, an embedding and an LM head of ``vocab x hidden`` (large tensors whose
    update streams from memory, unlike a block's cache-sized ones); default implementation, gradients present."""
    import torch

    shapes = [(3 * hidden, hidden), (3 * hidden,), (hidden, hidden), (hidden,), (4 * hidden, hidden), (4 * hidden,),
              (hidden, 4 * hidden), (hidden,), (hidden,), (hidden,), (hidden,), (hidden,)]
    shapes = shapes * blocks + ([(vocab, hidden), (vocab, hidden)] if vocab else [])
    params = [torch.zeros(s, device=device, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-4)
    secs = time_fn(opt.step, sync=_timer(device), min_time=min_time, clock=clock)
    return OptimizerRecord(params=sum(p.numel() for p in params), seconds=secs)


def run_collectives(sizes: list[int], *, world_size: int = 2, timeout: float = 60.0, min_time: float = 0.03
                    ) -> tuple[list[CollectiveRecord], int, int]:
    """Time gloo collectives between ``world_size`` local processes; (records, max resident bytes after init,
    rank 0's runtime memory growth in its first training steps beyond tensors)."""
    from hetero.runtime.testing import free_port, wait_all

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, f"rank{r}.json") for r in range(world_size)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072")
        procs = [subprocess.Popen([sys.executable, "-m", "hetero.predictor.microbench", "worker", "--rank", str(r),
                                   "--world", str(world_size), "--port", str(port), "--out", outs[r],
                                   "--sizes", ",".join(map(str, sizes)), "--min-time", str(min_time)], env=env)
                 for r in range(world_size)]
        wait_all(procs, timeout_s=timeout, what="collective benchmark")
        results = [json.loads(open(o).read()) for o in outs]
    recs = [CollectiveRecord(**r) for r in results[0]["records"]]
    return recs, max(int(r["rss_after_init"]) for r in results), int(results[0]["runtime_bytes"])


def _worker(args: argparse.Namespace) -> int:
    """One rank of ``run_collectives``: init gloo, time each op over sizes, write JSON."""
    from datetime import timedelta

    import psutil
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                            world_size=args.world, timeout=timedelta(seconds=60))
    w, r = args.world, args.rank
    probe = torch.ones(1)
    dist.all_reduce(probe)
    rss = psutil.Process().memory_info().rss
    recs = []

    def timed(fn):  # every rank runs the same number of iterations: rank 0 decides how many and broadcasts
        fn()
        dist.barrier()
        n = torch.tensor([0])
        if r == 0:
            t0 = time.perf_counter()
            fn()
            one = time.perf_counter() - t0
            n[0] = max(3, min(50, int(args.min_time / max(one, 1e-6))))
        else:
            fn()
        dist.broadcast(n, 0)
        ts = []
        for _ in range(int(n[0])):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    for nbytes in (int(s) for s in args.sizes.split(",")):
        x = torch.ones(max(nbytes // 4, 1))
        chunks = [torch.empty_like(x) for _ in range(w)]

        def p2p(x=x):  # ping-pong 0 <-> 1; half the round trip is one transfer
            if r == 0:
                dist.send(x, 1)
                dist.recv(x, 1)
            elif r == 1:
                dist.recv(x, 0)
                dist.send(x, 0)

        for op, fn in (("all_reduce", lambda x=x: dist.all_reduce(x)),
                       ("all_gather", lambda x=x, c=chunks: dist.all_gather(c, x)),
                       ("broadcast", lambda x=x: dist.broadcast(x, 0)),
                       ("send_recv", p2p)):
            secs = timed(fn)
            if op == "send_recv":
                secs /= 2
            recs.append(dict(op=op, world_size=w, nbytes=x.numel() * 4, seconds=secs))
    runtime = _runtime_growth() if r == 0 else 0
    with open(args.out, "w") as f:
        json.dump({"records": recs, "rss_after_init": rss, "runtime_bytes": runtime}, f)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def _anon_rss() -> int:
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")


def _runtime_growth() -> int:
    """Anonymous resident bytes a rank gains in its first training steps beyond its tensors: autograd engine,
    allocator heap, thread-local buffers. Trains a tiny reference-GPT block + head with AdamW for 3 steps and
    subtracts its persistent tensors (weights, gradients, two AdamW moments: 16 B per parameter). The process
    runs with ``MALLOC_MMAP_THRESHOLD_`` set, so freed tensors leave the resident set."""
    import torch
    import torch.distributed.pipelining  # noqa: F401  (imported by training ranks before their baseline too)

    from hetero.models.gpt import Block, GPTConfig, Head, lm_loss

    before = _anon_rss()
    c = GPTConfig(vocab=256, hidden=64, heads=2, num_layers=1, seq_len=32)
    net = torch.nn.Sequential(Block(c), Head(c))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(2, 32, 64)
    tgt = torch.randint(0, 256, (2, 32))
    for _ in range(3):
        lm_loss(net(x), tgt).backward()
        opt.step()
    params = sum(p.numel() for p in net.parameters())
    return max(_anon_rss() - before - 16 * params, 0)


def profile_device(cfg: ProfileConfig, *, progress: bool = True) -> DeviceProfile:
    """Run every microbenchmark of ``cfg`` and return the profile (calibration summary filled in)."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hetero.cluster.discover import cpu_model_name

    if cfg.device == "cuda" and not torch.cuda.is_available():
        from hetero.config import ConfigError

        raise ConfigError("device", "cuda requested but torch.cuda.is_available() is False")
    old_threads = torch.get_num_threads()
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    gemms = gemm_grid(cfg.quick)
    layers = layer_grid(cfg.quick) + list(cfg.layer_grid)
    adam = ([(64, 2, 1024), (128, 4, 2048), (256, 4, 4096)] if cfg.quick else
            [(64, 2, 1024), (128, 4, 2048), (256, 4, 4096), (256, 8, 8192), (512, 4, 8192), (512, 8, 16384)])
    # up to 64 MiB: large gradient buckets run out of cache and reduce at memory speed, which small sizes miss
    sizes = [4096, 2**20] if cfg.quick else [4096, 65536, 2**20, 4 * 2**20, 16 * 2**20, 64 * 2**20]
    do_coll = cfg.collectives and cfg.device == "cpu"
    total = len(gemms) * len(cfg.dtypes) + 1 + len(layers) + len(adam) + (1 if do_coll else 0)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress, transient=False) as bar:
        task = bar.add_task("GEMMs", total=total)

        def advance(desc: str | None = None):
            bar.update(task, advance=1, **({"description": desc} if desc else {}))

        try:
            gemm_recs = _gemm_records(cfg, advance)
            bar.update(task, description="bandwidth")
            clock = clock_for(cfg.device, cfg.cpu_time)
            bw = measure_bandwidth(cfg.device, clock=clock)
            advance("layers")
            layer_recs = []
            w0, c0 = time.perf_counter(), time.thread_time()
            for shape in layers:
                layer_recs.append(time_layer(shape, device=cfg.device, dtype=cfg.layer_dtype,
                                             min_time=cfg.min_time_s, clock=clock))
                advance()
            contention = (time.perf_counter() - w0) / max(time.thread_time() - c0, 1e-9)
            bar.update(task, description="AdamW")
            opt_recs = []
            for h, nb, v in adam:
                opt_recs.append(time_adamw(h, nb, vocab=v, device=cfg.device, min_time=cfg.min_time_s, clock=clock))
                advance()
            coll, rss, runtime = [], 0, 0
            if do_coll:
                bar.update(task, description="gloo collectives")
                coll, rss, runtime = run_collectives(sizes)
                advance("done")
        finally:
            torch.set_num_threads(old_threads)
    peaks: dict[str, float] = {}
    for g in gemm_recs:
        peaks[g.dtype] = max(peaks.get(g.dtype, 0.0), 2 * g.m * g.n * g.k / g.seconds)
    if cfg.device == "cuda":
        free, total_mem = torch.cuda.mem_get_info()
        rss = int(total_mem - free - torch.cuda.memory_reserved())  # context + other processes' use
        desc = torch.cuda.get_device_name()
    else:
        desc = f"{cpu_model_name()} ({cfg.threads} thread{'s' if cfg.threads > 1 else ''})"
    alpha, beta_inv = fit_link(coll)
    dev_id = cfg.device_id or (_cpu_id() if cfg.device == "cpu" else _gpu_id(desc))
    prof = DeviceProfile(device=dev_id, description=desc, torch_version=torch.__version__, threads=cfg.threads,
                         peak_flops=peaks, memory_bandwidth=bw, memory_overhead_bytes=int(max(rss, 0)),
                         memory_runtime_bytes=runtime,
                         gemms=gemm_recs, layers=layer_recs, optimizer=opt_recs, collectives=coll,
                         link_latency_s=alpha, link_bandwidth=beta_inv,
                         contention=contention if cfg.device == "cpu" else 1.0,
                         clock="thread_cpu" if cfg.device == "cpu" and cfg.cpu_time else "wall")
    prof.calibration = summarize(prof)
    return prof


def _cpu_id() -> str:
    """The CPU's device type id as ``hetero discover`` writes it (so ``hetero predict --profile`` matches it)."""
    import re

    from hetero.cluster.discover import cpu_model_name

    return "cpu-" + re.sub(r"[^a-z0-9]+", "-", cpu_model_name().lower()).strip("-")[:40]


def _gpu_id(name: str) -> str:
    from hetero.cluster.discover import _match_catalog

    return _match_catalog(name) or name.lower().replace(" ", "_")


def main(argv: list[str] | None = None) -> int:
    """``python -m hetero.predictor.microbench [worker ...]``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        p = argparse.ArgumentParser(prog="microbench worker")
        p.add_argument("--rank", type=int, required=True)
        p.add_argument("--world", type=int, required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--sizes", required=True)
        p.add_argument("--min-time", type=float, default=0.03)
        return _worker(p.parse_args(argv[1:]))
    from hetero.predictor import profile as profile_cli

    p = argparse.ArgumentParser(prog="python -m hetero.predictor.microbench")
    profile_cli.add_arguments(p)
    return profile_cli.run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
