"""Train the reference GPT under a hetero Plan: run it with hetero-run, which hands each rank its place in the plan.

    hetero-run --plan plan.yaml --cluster examples/clusters/cpu_mix.yaml --emulate \\
        examples/train_gpt.py --steps 20 --ckpt /tmp/ckpt

The model has ``plan.num_layers - 2`` transformer blocks (the plan indexes embedding, blocks, head). Each step
trains on a synthetic token batch (the same on every rank; ``hetero.data.shard`` cuts this replica's share),
prints one metrics line from rank 0, and every ``--ckpt-every`` steps writes an atomic DCP checkpoint; a restarted
run (``hetero-run --max-restarts``) resumes from the newest one. ``--kill-at-step`` makes one rank crash on the
first attempt (fault-injection for tests). The last line from rank 0 is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import hetero
from hetero.autoparallel.plan import Plan
from hetero.data import SyntheticTokens, shard
from hetero.models.gpt import GPT, GPTConfig, lm_loss
from hetero.runtime import checkpoint
from hetero.runtime.hooks import MetricsHook


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plan", default=os.environ.get("HETERO_PLAN"), help="plan file (default: HETERO_PLAN)")
    p.add_argument("--model", default=None, help="model YAML with a `transformer:` shape (as given to hetero-plan); "
                                                 "overrides --hidden/--heads/--vocab/--ffn")
    p.add_argument("--steps", type=int, default=20, help="training steps")
    p.add_argument("--hidden", type=int, default=64, help="hidden size")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--vocab", type=int, default=256, help="vocabulary size")
    p.add_argument("--ffn", type=int, default=0, help="MLP width (0: 4 x hidden)")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="model init seed")
    p.add_argument("--ckpt", default=None, help="checkpoint folder (resume from its newest checkpoint)")
    p.add_argument("--ckpt-every", type=int, default=5, help="steps between checkpoints")
    p.add_argument("--kill-at-step", type=int, default=-1, help="fault injection: crash at this step (first attempt)")
    p.add_argument("--kill-rank", type=int, default=1, help="rank that crashes for --kill-at-step")
    p.add_argument("--metrics-jsonl", default=None, help="write one JSON record per step here (rank 0)")
    p.add_argument("--quiet", action="store_true", help="no per-step lines")
    p.add_argument("--warmup", type=int, default=1, help="steps left out of the mean step time")
    return p.parse_args(argv)


def gpt_config_from_yaml(path: str) -> GPTConfig:
    """GPTConfig from a model YAML ``{name, transformer: {num_layers, hidden, heads, ffn, vocab, seq_len}}``."""
    from hetero.config import ConfigError, load_yaml

    data = load_yaml(path)
    t = data.get("transformer") if isinstance(data, dict) else None
    if not isinstance(t, dict):
        raise ConfigError(f"{path}: transformer", "missing: --model needs a model YAML with a `transformer:` shape")
    keys = ("num_layers", "hidden", "heads", "ffn", "vocab", "seq_len")
    return GPTConfig(name=data.get("name", "gpt"), **{k: t[k] for k in keys if k in t})


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if not args.plan:
        print("train_gpt.py: no plan (give --plan or start with hetero-run --plan)", file=sys.stderr)
        return 2
    plan = Plan.from_file(args.plan)
    cluster = None
    if os.environ.get("HETERO_CLUSTER"):
        from hetero.cluster.spec import Cluster

        cluster = Cluster.from_yaml(os.environ["HETERO_CLUSTER"])
    rt = hetero.init(plan, cluster=cluster)
    if args.model:
        cfg = gpt_config_from_yaml(args.model)
    else:
        cfg = GPTConfig(name=plan.model, vocab=args.vocab, hidden=args.hidden, heads=args.heads,
                        num_layers=plan.num_layers - 2, seq_len=plan.seq_len or 32, ffn=args.ffn)
    pm = hetero.parallelize(GPT(cfg, seed=args.seed), rt, loss_fn=lm_loss)
    opt = torch.optim.AdamW(pm.parameters(), lr=args.lr)
    start = 0
    if args.ckpt and checkpoint.latest(args.ckpt) is not None:
        start = checkpoint.load(pm, opt, args.ckpt)["step"] + 1
        if rt.rank == 0:
            print(f"resumed from {checkpoint.latest(args.ckpt)} at step {start}", flush=True)
    data = SyntheticTokens(vocab=cfg.vocab, seq_len=cfg.seq_len, seed=1)
    hook = MetricsHook(pm, spec=cfg.spec(dtype=plan.dtype), cluster=cluster, jsonl=args.metrics_jsonl, warmup=args.warmup,
                       printer=(lambda s: None) if args.quiet else (lambda s: print(s, flush=True)))
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    losses = {}
    for step in range(start, args.steps):
        if step == args.kill_at_step and rt.rank == args.kill_rank and first_attempt:
            print(f"rank {rt.rank}: injected failure at step {step}", file=sys.stderr, flush=True)
            os._exit(3)
        hook.on_step_start(step)
        x, y = shard(data.batch(step, plan.global_batch), plan, rt.dp_index)
        loss = pm.train_step(x, y)
        opt.step()
        opt.zero_grad(set_to_none=True)
        hook.on_step_end(step, loss)
        losses[step] = loss
        if args.ckpt and ((step + 1) % args.ckpt_every == 0 or step == args.steps - 1):
            checkpoint.save(pm, opt, args.ckpt, step=step)
    if rt.rank == 0:
        print(json.dumps({"steps": args.steps, "start": start, "losses": losses, "mean_step_s": hook.mean_step_s(),
                          "median_step_s": hook.median_step_s(), "step_s": [r["step_s"] for r in hook.records],
                          "stage_busy_s": hook.measured_stage_busy(), "rank_busy_s": hook.measured_rank_busy(),
                          "type_calibration": hook.type_calibration(),
                          "predicted_step_s": hook.prediction.step_time_s if hook.prediction else None}), flush=True)
    rt.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
