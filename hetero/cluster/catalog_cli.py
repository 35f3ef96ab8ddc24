"""``hetero catalog``: list the accelerator catalog (ids, aliases, peak bf16 TFLOP/s, memory, bandwidth)."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hetero.cluster.catalog import ALIASES, catalog

    aliases: dict[str, list[str]] = {}
    for a, i in ALIASES.items():
        aliases.setdefault(i, []).append(a)
    rows = [{"id": d.id, "aliases": aliases.get(d.id, []), "bf16_tflops": d.peak("bf16") / 1e12,
             "memory_gib": d.memory_bytes / 2**30, "mem_bw_gbs": d.memory_bandwidth / 1e9,
             "torch_device": d.torch_device, "backend": d.dist_backend} for d in catalog().values()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    t = Table(title="hetero accelerator catalog (hetero/data/accelerators.yaml)")
    for col in ("id", "aliases", "bf16 TFLOP/s", "GiB", "GB/s", "device", "backend"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["id"], ", ".join(r["aliases"]), f"{r['bf16_tflops']:.0f}", f"{r['memory_gib']:.0f}",
                  f"{r['mem_bw_gbs']:.0f}", r["torch_device"], r["backend"])
    Console().print(t)
    return 0
