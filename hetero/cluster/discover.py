"""``hetero discover``: describe this machine as a cluster file.

Looks for NVIDIA GPUs through nvidia-ml-py (NVML) when the driver is there, else torch.cuda (also ROCm),
torch.xpu, or torch_npu when present, else describes the CPU: model name, cores, memory, and measured peak
FLOP/s and memory bandwidth (a short GEMM and copy benchmark). Never fails for lack of a GPU library.

    hetero discover                 # print YAML
    hetero discover -o cluster.yaml
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import time

import yaml

from hetero.cluster.catalog import known_names, resolve
from hetero.config import ConfigError


def _match_catalog(device_name: str) -> str | None:
    """Catalog id for a device name reported by a driver ('NVIDIA A100-SXM4-80GB' -> nvidia_a100_sxm4_80gb)."""
    name = re.sub(r"^(nvidia|amd|tesla|geforce|instinct)\s+", "", device_name.lower()).strip()
    name = re.sub(r"^(tesla|geforce|instinct)\s+", "", name)
    candidates = [name, name.replace(" ", "-"), name.split()[0] if name.split() else name]
    for c in candidates:
        try:
            return resolve(c).id
        except ConfigError:
            continue
    # longest alias contained in the name (e.g. "h100 80gb hbm3" -> h100)
    norm = re.sub(r"[^a-z0-9]", "", name)
    best = None
    for alias in known_names():
        a = re.sub(r"[^a-z0-9]", "", alias.lower())
        if len(a) >= 3 and a in norm and (best is None or len(a) > len(best[0])):
            best = (a, alias)
    return resolve(best[1]).id if best else None


def _nvml_devices() -> list[dict]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total
            out.append({"name": name, "memory_bytes": int(mem), "torch_device": "cuda", "backend": "nccl"})
        return out
    finally:
        pynvml.nvmlShutdown()


def _torch_devices() -> list[dict]:
    import torch

    out = []
    if torch.cuda.is_available():
        backend = "nccl"
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append({"name": p.name, "memory_bytes": int(p.total_memory), "torch_device": "cuda",
                        "backend": backend})
        return out
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        for i in range(torch.xpu.device_count()):
            p = torch.xpu.get_device_properties(i)
            out.append({"name": p.name, "memory_bytes": int(p.total_memory), "torch_device": "xpu",
                        "backend": "xccl"})
        return out
    try:
        import torch_npu  # noqa: F401

        for i in range(torch.npu.device_count()):
            out.append({"name": torch.npu.get_device_name(i), "memory_bytes": 64 * 2**30,
                        "torch_device": "npu", "backend": "hccl"})
    except Exception:
        pass
    return out


def cpu_model_name() -> str:
    """The CPU model string (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_cpu(*, seconds: float = 0.5, threads: int | None = None) -> dict:
    """Measured fp32 GEMM FLOP/s and copy bandwidth of this CPU with ``threads`` torch threads (default: all)."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        n = 1024
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        best_flops = 0.0
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            torch.mm(a, b)
            best_flops = max(best_flops, 2 * n**3 / (time.perf_counter() - t0))
        x = torch.empty(32 * 2**20 // 4)
        y = torch.empty_like(x)
        y.copy_(x)
        best_bw = 0.0
        t_end = time.perf_counter() + seconds / 2
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            y.copy_(x)
            best_bw = max(best_bw, 2 * x.numel() * 4 / (time.perf_counter() - t0))
        return {"fp32_flops": best_flops, "memory_bandwidth": best_bw}
    finally:
        torch.set_num_threads(old)


def discover(*, measure: bool = True) -> dict:
    """The cluster mapping (cluster YAML schema) for this machine."""
    import psutil

    host = socket.gethostname() or "localhost"
    gpus = _nvml_devices() or _torch_devices()
    doc: dict = {"name": f"discovered-{host}"}
    if gpus:
        by_name: dict[str, list[dict]] = {}
        for g in gpus:
            by_name.setdefault(g["name"], []).append(g)
        types, nodes = [], []
        for k, (name, group) in enumerate(by_name.items()):
            cat = _match_catalog(name)
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            if cat is not None:
                types.append({"id": slug, "like": cat, "name": name,
                              "memory_gib": round(group[0]["memory_bytes"] / 2**30, 2)})
            else:
                types.append({"id": slug, "like": "cpu", "name": f"{name} (not in catalog: numbers are CPU priors; "
                              "run `hetero profile`)", "memory_gib": round(group[0]["memory_bytes"] / 2**30, 2),
                              "torch_device": group[0]["torch_device"], "dist_backend": group[0]["backend"]})
            nodes.append({"name": host if k == 0 else f"{host}-{slug}", "devices": {"type": slug, "count": len(group)}})
        doc["device_types"] = types
        doc["nodes"] = nodes
        if len(nodes) > 1:
            doc["network"] = {"bandwidth_gbps": 100.0, "latency_us": 5.0}
        return doc
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    mem = psutil.virtual_memory().total
    cpu = {"id": "cpu-" + re.sub(r"[^a-z0-9]+", "-", cpu_model_name().lower()).strip("-")[:40],
           "like": "cpu", "name": f"{cpu_model_name()} ({cores} cores)", "memory_gib": round(mem / 2**30, 2)}
    if measure:
        m = measure_cpu()
        cpu["peak_tflops"] = {"fp32": round(m["fp32_flops"] / 1e12, 4), "bf16": round(m["fp32_flops"] / 1e12, 4)}
        cpu["memory_bandwidth_gbs"] = round(m["memory_bandwidth"] / 1e9, 2)
        cpu["matmul_efficiency"] = 1.0  # the peak above is itself measured
    doc["device_types"] = [cpu]
    doc["nodes"] = [{"name": host, "devices": {"type": cpu["id"], "count": 1}}]
    return doc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="write the cluster YAML here (default: print it)")
    p.add_argument("--no-measure", action="store_true", help="skip the CPU FLOP/s and bandwidth measurement")


def run(args: argparse.Namespace) -> int:
    from hetero.cluster.spec import Cluster

    doc = discover(measure=not args.no_measure)
    Cluster.from_dict(doc)  # the description must itself validate
    text = yaml.safe_dump(doc, sort_keys=False)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}: {Cluster.from_dict(doc)}")
    else:
        print(text, end="")
    return 0
