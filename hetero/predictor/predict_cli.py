"""``hetero predict``: score a plan on a cluster and print a per-stage table (or JSON).

    hetero predict --cluster examples/clusters/a100_v100.yaml --model gpt2-small --plan plan.yaml [--json]
    hetero predict ... --profile cpu-profile.json     # measured device profiles override catalog priors
"""

from __future__ import annotations

import argparse
import json

from hetero.config import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", required=True, help="cluster YAML")
    p.add_argument("--model", required=True, help="model preset name or model YAML")
    p.add_argument("--plan", required=True, help="plan YAML or JSON")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default: the plan's, else the model's)")
    p.add_argument("--profile", action="append", default=[], metavar="[TYPE=]PATH",
                   help="device profile JSON from `hetero profile` (repeatable); TYPE= assigns it to a cluster type")
    p.add_argument("--json", action="store_true", help="print JSON")


def load_profiles(specs: list[str], cluster=None) -> dict:
    """Device profiles by device type id from ``--profile`` arguments (``hetero profile`` output).

    ``PATH`` keys the profile by the device id recorded in it; ``TYPE=PATH`` assigns it to the cluster's type
    ``TYPE``, and when the cluster declares that type as a scaled copy (``{id: TYPE, like: ..., scale: s}``, e.g. an
    emulated slower device) the profile is scaled by ``s`` too."""
    if not specs:
        return {}
    from hetero.predictor.profile import DeviceProfile

    scales = {t["id"]: float(t.get("scale", 1.0)) for t in (cluster.custom_types if cluster else ())}
    known = set(cluster.device_types()) if cluster else None
    out = {}
    for spec in specs:
        type_id, sep, path = spec.partition("=")
        if not sep:
            type_id, path = "", spec
        prof = DeviceProfile.from_json(path)
        if not type_id:
            out[prof.device] = prof
            continue
        if known is not None and type_id not in known:
            raise ConfigError(f"--profile {spec}", f"the cluster has no device type {type_id!r} "
                              f"(types: {', '.join(sorted(known))})")
        scale = scales.get(type_id, 1.0)
        out[type_id] = prof.scaled(device=type_id, scale=scale) if scale != 1.0 else prof
    return out


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hetero.autoparallel.plan import Plan
    from hetero.cluster.spec import Cluster
    from hetero.models.spec import ModelSpec
    from hetero.predictor.predict import predict_detailed

    cluster = Cluster.from_yaml(args.cluster)
    plan = Plan.from_file(args.plan)
    seq = args.seq or plan.seq_len or None
    model = ModelSpec.load(args.model, seq_len=seq)
    if plan.model and plan.model_hash and plan.model_hash != model.fingerprint():
        raise ConfigError(args.plan, f"plan was made for model {plan.model!r} ({plan.model_hash}), "
                          f"not for {model.name!r} ({model.fingerprint()})")
    rep = predict_detailed(cluster, model, plan, profiles=load_profiles(args.profile, cluster))
    pred = rep.prediction
    if args.json:
        out = {"step_time_s": pred.step_time_s, "throughput_samples_s": pred.throughput_samples_s,
               "throughput_tokens_s": pred.throughput_tokens_s, "bubble_fraction": pred.bubble_fraction,
               "stages": [{"stage": s.index, "device_type": s.device_type, "fwd_s": s.fwd_s, "bwd_s": s.bwd_s,
                           "busy_s": s.busy_s, "allreduce_s": s.allreduce_s, "optimizer_s": s.optimizer_s,
                           "memory_bytes": s.memory.total, "capacity_bytes": s.capacity_bytes}
                          for s in rep.stages],
               "rank_memory_bytes": pred.rank_memory_bytes}
        print(json.dumps(out))
        return 0
    t = Table(title=f"{model.name} on {cluster}: {plan.schedule}, {plan.num_microbatches} micro-batches")
    for col in ("stage", "device", "ranks", "layers", "tp", "dp", "mbs", "fwd ms", "bwd ms", "busy s",
                "allreduce ms", "memory GiB"):
        t.add_column(col, justify="right")
    for s, st in zip(rep.stages, plan.stages):
        mem = s.memory.total / 2**30
        cap = s.capacity_bytes / 2**30
        t.add_row(str(s.index), "+".join(st.types), f"{len(st.ranks)}", f"{st.layers[0]}-{st.layers[1] - 1}",
                  str(st.tp), str(st.dp), "/".join(str(b // plan.num_microbatches) for b in st.batch_shares),
                  "/".join(f"{x * 1e3:.1f}" for x in s.fwd_s), "/".join(f"{x * 1e3:.1f}" for x in s.bwd_s),
                  f"{s.busy_s:.3f}", f"{s.allreduce_s * 1e3:.1f}",
                  f"[{'red' if mem > cap else 'green'}]{mem:.1f}[/] / {cap:.0f}")
    c = Console()
    c.print(t)
    c.print(f"step {pred.step_time_s:.4f} s | {pred.throughput_samples_s:.2f} samples/s | "
            f"{pred.throughput_tokens_s:,.0f} tokens/s | bubble {pred.bubble_fraction:.1%}")
    return 0
