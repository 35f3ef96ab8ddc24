"""``hetero-plan`` (also ``hetero plan``): the fastest data/tensor/pipeline plan for a mixed cluster, and why.

    hetero-plan --cluster examples/clusters/a100_v100.yaml --model llama2-13b --global-batch 256 -o plan.yaml
    hetero-plan ... --top 5 --explain --gantt plan.png      # K best plans, why the runner-up lost, the schedule
    hetero-plan ... --json                                  # machine-readable
    hetero-plan --cluster C --model M --check plan.yaml     # validate and predict a hand-written plan

The model is a preset name (``hetero.models.presets``) or a model YAML. The search (``search.py``) is scored by the
predictor; the printed heterogeneous efficiency is the plan's throughput over the sum of what each device type
reaches alone with its own best plan.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from hetero.config import ConfigError

GIB = 1024**3


def load_calibration(path: str) -> dict[str, float]:
    """{type: factor} from ``path``: a JSON object with ``type_calibration`` (a run's summary line; the last
    line of a multi-line file counts) or the mapping itself."""
    from pathlib import Path

    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError("--calibration", f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text.splitlines()[-1] if text else "")
    except (json.JSONDecodeError, IndexError):
        raise ConfigError("--calibration", f"{path}: the last line is not a JSON object") from None
    if isinstance(data, dict) and "type_calibration" in data:
        data = data["type_calibration"]
    if not isinstance(data, dict) or not data or not all(isinstance(v, (int, float)) for v in data.values()):
        raise ConfigError("--calibration", f"{path}: needs a {{type: factor}} object (or one under "
                                           "'type_calibration'), got " + json.dumps(data)[:120])
    return {str(k): float(v) for k, v in data.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``hetero-plan`` / ``hetero plan``."""
    p.add_argument("--cluster", default=None, help="cluster YAML (required unless --rl)")
    p.add_argument("--model", default=None, help="model preset name or model YAML (required unless --rl)")
    p.add_argument("--rl", default=None, metavar="CONFIG",
                   help="place RL roles instead (hetero.rl.scheduler): print placement, predicted time, runner-up")
    p.add_argument("--global-batch", type=int, default=None, help="samples per optimizer step (required to search)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default: the model's)")
    p.add_argument("--dtype", default="bf16", help="compute dtype (default bf16)")
    p.add_argument("-o", "--output", default=None, help="write the best plan here (.yaml/.yml or .json)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--top", type=int, default=1, help="list the K best plans")
    p.add_argument("--explain", action="store_true", help="say why the runner-up lost")
    p.add_argument("--gantt", default=None, help="draw the predicted schedule of the best plan to this PNG")
    p.add_argument("--time-limit", type=float, default=None, help="seconds; return the best plan found so far")
    p.add_argument("--schedules", nargs="+", default=None, help="schedules to try (gpipe 1f1b interleaved_1f1b)")
    p.add_argument("--micro-batch-sizes", type=int, nargs="+", default=None, help="micro-batch sizes to try")
    p.add_argument("--max-tp", type=int, default=8, help="largest TP degree (default 8)")
    p.add_argument("--orders", choices=["all", "memory"], default="all", help="device-group orders to search")
    p.add_argument("--no-recompute", action="store_true", help="never use activation recomputation")
    p.add_argument("--no-efficiency", action="store_true", help="skip the per-type homogeneous searches")
    p.add_argument("--profile", action="append", default=[], metavar="[TYPE=]PATH",
                   help="device profile JSON from `hetero profile` (repeatable); TYPE= assigns it to a cluster type")
    p.add_argument("--check", default=None, metavar="PLAN", help="validate and predict this plan instead of searching")
    p.add_argument("--calibration", default=None, metavar="JSON",
                   help="per-type measured/predicted compute factors from a run (its JSON with a "
                        "type_calibration object, e.g. examples/train_gpt.py's last line, or a plain "
                        "{type: factor} object): plan for the devices as they ran")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def short(type_id: str) -> str:
    """A device type id without its vendor prefix, for tables."""
    return re.sub(r"^(nvidia|amd|huawei|intel|cambricon|google)_", "", type_id)


def _ranges(xs: list[int]) -> str:
    from hetero.autoparallel.plan import _ranges as r

    return r(sorted(xs))


def stage_rows(plan, report) -> list[dict]:
    """Per-stage figures for tables and JSON."""
    rows = []
    for s, sr in zip(plan.stages, report.stages):
        rows.append({
            "stage": sr.index, "device_type": "+".join(s.types), "ranks": _ranges(s.ranks), "devices": len(s.ranks),
            "layers": [s.layers[0], s.layers[1]], "tp": s.tp, "dp": s.dp, "batch_shares": s.batch_shares,
            "micro_batch": plan.micro_batch_size(0), "recompute": s.recompute,
            "fwd_s": max(sr.fwd_s), "bwd_s": max(sr.bwd_s), "busy_s": sr.busy_s,
            "allreduce_s": sr.allreduce_s, "optimizer_s": sr.optimizer_s,
            "memory_gib": sr.memory.total / GIB, "capacity_gib": sr.capacity_bytes / GIB})
    return rows


def explain(best, other) -> str:
    """Why ``other`` (a scored Candidate) is slower than ``best``: the structural differences and the component
    of the predicted step (pipeline compute, bubble, gradient all-reduce + optimizer tail) that costs most."""
    a, b = best.plan, other.plan
    pa, pb = a.predicted, b.predicted
    diffs = []
    for name, fa, fb in [("dp", a.dp, b.dp), ("pp", a.pp, b.pp), ("schedule", a.schedule, b.schedule),
                         ("micro-batch", a.micro_batch_size(0), b.micro_batch_size(0)),
                         ("micro-batches", a.num_microbatches, b.num_microbatches),
                         ("tp", _tp_desc(a), _tp_desc(b)), ("group order", _order_desc(a), _order_desc(b)),
                         ("recomputed stages", sum(s.recompute for s in a.stages), sum(s.recompute for s in b.stages))]:
        if fa != fb:
            diffs.append(f"{name} {fb} (best: {fa})")
    if not diffs:
        diffs.append("same structure, different layer split")

    def parts(c):
        pipe = max(sim.makespan for sim in c.report.simulations)
        slow = max(max(sum(st.fwd_s) / len(st.fwd_s) + sum(st.bwd_s) / len(st.bwd_s) for st in c.report.stages), 0)
        return {"pipeline (compute + p2p + bubble)": pipe,
                "gradient all-reduce + optimizer after the pipeline": c.plan.predicted.step_time_s - pipe,
                "slowest stage per micro-batch": slow}

    ca, cb = parts(best), parts(other)
    delta = {k: cb[k] - ca[k] for k in ca}
    main = max(list(delta)[:2], key=lambda k: delta[k])
    slower = pb.step_time_s / pa.step_time_s - 1
    return (f"runner-up is {slower:.1%} slower ({pb.step_time_s:.3f} s vs {pa.step_time_s:.3f} s per step): "
            f"{'; '.join(diffs)}. Most of the gap is the {main}: {cb[main]:.3f} s vs {ca[main]:.3f} s "
            f"(slowest stage per micro-batch {cb['slowest stage per micro-batch'] * 1e3:.1f} ms vs "
            f"{ca['slowest stage per micro-batch'] * 1e3:.1f} ms; bubble {pb.bubble_fraction:.1%} vs "
            f"{pa.bubble_fraction:.1%}).")


def _tp_desc(plan) -> str:
    seen: dict[str, set[int]] = {}
    for s in plan.stages:
        seen.setdefault(short(s.device_type), set()).add(s.tp)
    return ",".join(f"{t}:{'/'.join(map(str, sorted(v)))}" for t, v in sorted(seen.items()))


def _order_desc(plan) -> str:
    out: list[str] = []
    for s in plan.stages:
        if not out or out[-1] != short(s.device_type):
            out.append(short(s.device_type))
    return ">".join(out)


def _summary(c) -> dict:
    p = c.plan
    return {"step_time_s": p.predicted.step_time_s, "tokens_s": p.predicted.throughput_tokens_s,
            "samples_s": p.predicted.throughput_samples_s, "bubble_fraction": p.predicted.bubble_fraction,
            "dp": p.dp, "pp": p.pp, "tp": _tp_desc(p), "order": _order_desc(p), "micro_batch": p.micro_batch_size(0),
            "num_microbatches": p.num_microbatches, "schedule": p.schedule,
            "recompute_stages": sum(s.recompute for s in p.stages)}


def run(args: argparse.Namespace) -> int:
    """Search (or check) and print; returns the exit code."""
    if args.rl:
        from hetero.rl.scheduler import run_cli

        return run_cli(args.rl, output=args.output, as_json=args.json)
    for flag in ("cluster", "model"):
        if not getattr(args, flag):
            raise ConfigError(f"--{flag}", "is required (unless --rl CONFIG)")
    from rich.console import Console

    from hetero.autoparallel.search import SearchConfig, efficiency, search
    from hetero.cluster.spec import Cluster
    from hetero.models.spec import ModelSpec
    from hetero.predictor.predict_cli import load_profiles

    out = Console()
    if not out.is_terminal:
        out = Console(width=160)
    err = Console(stderr=True)
    cluster = Cluster.from_yaml(args.cluster)
    model = ModelSpec.load(args.model, seq_len=args.seq)
    profiles = load_profiles(args.profile, cluster)
    if args.calibration:
        factors = load_calibration(args.calibration)
        cluster = cluster.calibrated(factors)
        profiles = {t: (p.scaled(device=t, scale=1.0 / factors[t]) if t in factors else p) for t, p in profiles.items()}
    if args.check:
        return _check(args, cluster, model, profiles, out)
    if args.global_batch is None:
        raise ConfigError("--global-batch", "is required to search (samples per optimizer step)")
    if args.top < 1:
        raise ConfigError("--top", "must be >= 1")
    kw = dict(global_batch=args.global_batch, dtype=args.dtype, max_tp=args.max_tp, orders=args.orders,
              recompute=not args.no_recompute, time_limit_s=args.time_limit, rescore=max(4, args.top + 1), min_scored=max(2, args.top))
    if args.schedules:
        kw["schedules"] = args.schedules
    if args.micro_batch_sizes:
        kw["micro_batch_sizes"] = args.micro_batch_sizes
    from hetero.config import build

    cfg = build(SearchConfig, kw)
    result = _search_with_progress(search, cluster, model, cfg, profiles, err, quiet=args.quiet or args.json)
    best = result.best
    eff, per_type = (None, {}) if args.no_efficiency else efficiency(
        cluster, model, cfg, best.plan.predicted.throughput_samples_s, profiles=profiles)
    best.plan.predicted.efficiency = eff
    best.plan.meta.update({"search_s": round(result.search_s, 4), "structures": result.structures,
                           "dp_runs": result.evaluated, "time_limited": result.time_limited,
                           "homogeneous_samples_s": per_type})
    if args.output:
        best.plan.to_file(args.output)
    if args.gantt:
        from hetero.autoparallel.gantt import draw
        from hetero.predictor.predict import predict_detailed

        rep = predict_detailed(cluster, model, best.plan, profiles=profiles, keep_blocks=True)
        draw(best.plan, rep.simulations[0], args.gantt)
    why = explain(best, result.ranked[1]) if len(result.ranked) > 1 else "there is no runner-up (one feasible plan)"
    if args.json:
        print(json.dumps({
            "plan": best.plan.to_dict(), "stages": stage_rows(best.plan, best.report),
            "summary": {**_summary(best), "efficiency": eff, "homogeneous_samples_s": per_type},
            "top": [_summary(c) for c in result.ranked[:args.top]],
            "explain": why if args.explain else None,
            "search": {"search_s": result.search_s, "structures": result.structures, "dp_runs": result.evaluated,
                       "pruned": result.pruned, "infeasible": result.infeasible,
                       "time_limited": result.time_limited}}, indent=1))
        return 0
    _print_tables(out, cluster, model, result, eff, per_type, top=args.top)
    if args.explain:
        out.print(f"[bold]Why not the runner-up:[/bold] {why}")
    if args.output:
        out.print(f"wrote {args.output}")
    if args.gantt:
        out.print(f"wrote {args.gantt}")
    return 0


def _search_with_progress(search, cluster, model, cfg, profiles, err, *, quiet: bool):
    if quiet:
        return search(cluster, model, cfg, profiles=profiles)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("searching plans"), BarColumn(), TextColumn("{task.completed}/{task.total} structures"),
                  TimeElapsedColumn(), console=err, transient=True) as prog:
        task = prog.add_task("search", total=None)

        def cb(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        return search(cluster, model, cfg, profiles=profiles, progress=cb)


def _print_tables(out, cluster, model, result, eff, per_type, *, top: int) -> None:
    from rich.table import Table

    best = result.best
    plan = best.plan
    pred = plan.predicted
    t = Table(title=f"{model.name} on {cluster}: best plan")
    for col in ("stage", "device type", "ranks", "layers", "tp×dp", "mb share", "recomp", "fwd+bwd/mb",
                "busy/step", "mem/device", "capacity"):
        t.add_column(col, justify="right" if col not in ("device type", "ranks") else "left")
    for r in stage_rows(plan, best.report):
        t.add_row(str(r["stage"]), short(r["device_type"]), r["ranks"], f"{r['layers'][0]}-{r['layers'][1] - 1}",
                  f"{r['tp']}×{r['dp']}", f"{r['micro_batch']}×{plan.num_microbatches}",
                  "on" if r["recompute"] else "off", f"{(r['fwd_s'] + r['bwd_s']) * 1e3:.1f} ms",
                  f"{r['busy_s']:.2f} s", f"{r['memory_gib']:.1f} GiB", f"{r['capacity_gib']:.0f} GiB")
    out.print(t)
    out.print(f"schedule {plan.schedule}{f' (v={plan.virtual_stages})' if plan.virtual_stages > 1 else ''}, "
              f"global batch {plan.global_batch} = {plan.dp} pipeline(s) × {plan.num_microbatches} micro-batches × "
              f"{plan.micro_batch_size(0)}")
    out.print(f"predicted step [bold]{pred.step_time_s:.3f} s[/bold], "
              f"[bold]{pred.throughput_tokens_s:,.0f} tokens/s[/bold] ({pred.throughput_samples_s:.2f} samples/s), "
              f"bubble {pred.bubble_fraction:.1%}")
    if eff is not None:
        parts = ", ".join(f"{short(k)} alone {v:.2f}" for k, v in per_type.items())
        out.print(f"heterogeneous efficiency [bold]{eff:.1%}[/bold] (samples/s: this plan "
                  f"{pred.throughput_samples_s:.2f}; {parts})")
    out.print(f"search: {result.search_s:.2f} s, {result.structures} structures, {result.evaluated} DP runs, "
              f"{result.pruned} pruned by the bound{', stopped by --time-limit' if result.time_limited else ''}")
    if result.infeasible:
        out.print("dropped: " + "; ".join(f"{k} ({v}x)" for k, v in result.infeasible.items()))
    if top > 1 and len(result.ranked) > 1:
        tab = Table(title=f"{min(top, len(result.ranked))} best plans")
        for col in ("#", "step s", "tokens/s", "dp", "pp", "tp", "order", "mb×m", "schedule", "recomp"):
            tab.add_column(col)
        for i, c in enumerate(result.ranked[:top]):
            s = _summary(c)
            tab.add_row(str(i + 1), f"{s['step_time_s']:.3f}", f"{s['tokens_s']:,.0f}", str(s["dp"]), str(s["pp"]),
                        s["tp"], s["order"], f"{s['micro_batch']}×{s['num_microbatches']}", s["schedule"],
                        str(s["recompute_stages"]))
        out.print(tab)


def _check(args, cluster, model, profiles, out) -> int:
    from hetero.autoparallel.plan import Plan
    from hetero.predictor.predict import predict_detailed

    plan = Plan.from_file(args.check)
    try:
        plan.validate(world_size=cluster.world_size, num_layers=model.num_layers, rank_types=cluster.rank_types())
        rep = predict_detailed(cluster, model, plan, profiles=profiles)
        plan.predicted = rep.prediction
        plan.validate_memory({k: v.memory_bytes for k, v in cluster.device_types().items()})
    except ConfigError as e:
        raise ConfigError(f"{args.check}: {e.path}" if e.path else args.check, e.message) from None
    if args.json:
        print(json.dumps({"valid": True, "stages": stage_rows(plan, rep),
                          "step_time_s": rep.prediction.step_time_s,
                          "tokens_s": rep.prediction.throughput_tokens_s}, indent=1))
    else:
        out.print(f"{args.check}: valid; predicted step {rep.prediction.step_time_s:.3f} s, "
                  f"{rep.prediction.throughput_tokens_s:,.0f} tokens/s, bubble {rep.prediction.bubble_fraction:.1%}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hetero-plan`` console script."""
    parser = argparse.ArgumentParser(prog="hetero-plan", description=(__doc__ or "").split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
