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
    p.add_argument("--profile", action="append", default=[], help="device profile JSON (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")


def load_profiles(paths: list[str]) -> dict:
    """Device profiles by device type id (``hetero profile`` output)."""
    if not paths:
        return {}
    from hetero.predictor.profile import DeviceProfile

    out = {}
    for path in paths:
        prof = DeviceProfile.load(path)
        out[prof.device_type] = prof
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
    rep = predict_detailed(cluster, model, plan, profiles=load_profiles(args.profile))
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
        t.add_row(str(s.index), st.device_type, f"{len(st.ranks)}", f"{st.layers[0]}-{st.layers[1] - 1}",
                  str(st.tp), str(st.dp), "/".join(str(b // plan.num_microbatches) for b in st.batch_shares),
                  "/".join(f"{x * 1e3:.1f}" for x in s.fwd_s), "/".join(f"{x * 1e3:.1f}" for x in s.bwd_s),
                  f"{s.busy_s:.3f}", f"{s.allreduce_s * 1e3:.1f}",
                  f"[{'red' if mem > cap else 'green'}]{mem:.1f}[/] / {cap:.0f}")
    c = Console()
    c.print(t)
    c.print(f"step {pred.step_time_s:.4f} s | {pred.throughput_samples_s:.2f} samples/s | "
            f"{pred.throughput_tokens_s:,.0f} tokens/s | bubble {pred.bubble_fraction:.1%}")
    return 0
