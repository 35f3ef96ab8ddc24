"""``hetero rl``: few-shot SFT, online RL (PPO Flow-SDE / Flow-Noise, GRPO) and evaluation of flow VLA policies.

    hetero rl sft   --config examples/rl/metaworld_mt10_flow_sde.yaml [--set sft.steps=500]
    hetero rl train --config examples/rl/metaworld_mt10_flow_sde.yaml [--set train.iterations=20]
    hetero rl eval  --checkpoint runs/rl/checkpoint.pt --config examples/rl/metaworld_mt10_flow_sde.yaml \
        --episodes 10 [--method flow_noise] [--json]

Each command prints progress and, as its last line, one JSON object (eval: ``{"success_rate": x,
"success_ci95": [lo, hi], "episodes": n, "per_task": {...}}``, n over all tasks; ``--episodes`` counts per task).
``--set section.key=value`` overrides a config value (YAML-parsed); ``eval`` without ``--config`` uses the config
an RL checkpoint carries, with the overrides applied.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``sft``, ``train`` and ``eval``."""
    sub = parser.add_subparsers(dest="rl_command", required=True, metavar="RL_COMMAND")
    for name, helptext in [("sft", "few-shot flow-matching SFT on scripted demos"),
                           ("train", "online RL from the SFT checkpoint (resumes from out_dir/checkpoint.pt)"),
                           ("eval", "evaluate a checkpoint (deterministic ODE sampler unless --method)")]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", required=name != "eval", help="RL config YAML (examples/rl/*.yaml)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. train.iterations=20")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "eval":
            p.add_argument("--checkpoint", required=True, help="checkpoint .pt to evaluate")
            p.add_argument("--episodes", type=int, default=10, help="episodes per task")
            p.add_argument("--seed", type=int, default=None, help="evaluation seed (default: train.eval_seed)")
            p.add_argument("--variation-seed", type=int, default=None,
                           help="Meta-World variation seed (default: train.eval_variation_seed, held out)")
            p.add_argument("--method", choices=["ode", "flow_noise", "flow_sde"], default="ode",
                           help="sampler: the deterministic ODE (default, as piRL evaluates) or a stochastic one, "
                                "to compare with the training rollouts")
            p.add_argument("--json", action="store_true", help="print only the JSON result")


def run(args: argparse.Namespace) -> int:
    """Dispatch to SFT, training or evaluation."""
    from hetero.rl.config import build_config, load_config

    cfg = load_config(args.config, args.set) if args.config else build_config({}, args.set)
    if cfg.train.threads:
        import torch

        torch.set_num_threads(cfg.train.threads)
    if args.rl_command == "sft":
        from hetero.rl.sft import run_sft

        _, summary = run_sft(cfg, progress=not args.no_progress)
        print(json.dumps(summary))
        return 0
    if args.rl_command == "train":
        from hetero.rl.trainer import train

        summary = train(cfg, progress=not args.no_progress)
        print(json.dumps(summary))
        return 0
    from hetero.config import ConfigError
    from hetero.rl.eval import evaluate_config
    from hetero.rl.policy import load_checkpoint

    if args.episodes < 1:
        raise ConfigError("--episodes", "must be >= 1")
    model, ck = load_checkpoint(args.checkpoint)
    if not args.config and "config" in ck:  # an RL checkpoint carries its config; --set applies to it
        cfg = build_config(ck["config"], args.set)
    res = evaluate_config(model, cfg.env, cfg.sampler, episodes=args.episodes,
                          seed=cfg.train.eval_seed if args.seed is None else args.seed,
                          variation_seed=cfg.train.eval_variation_seed if args.variation_seed is None
                          else args.variation_seed, method=args.method, device=cfg.train.device)
    if not args.json:
        for task, sr in res["per_task"].items():
            print(f"{task:32s} {sr:.3f}", file=sys.stderr)
        lo, hi = res["success_ci95"]
        print(f"{'success (95% interval)':32s} {res['success_rate']:.3f} ({lo:.3f}-{hi:.3f})", file=sys.stderr)
    print(json.dumps({"success_rate": res["success_rate"], "success_ci95": res["success_ci95"],
                      "episodes": res["episodes"], "method": args.method,
                      "per_task": res["per_task"], "return": res["return"],
                      "env_steps_per_s": res["env_steps_per_s"]}))
    return 0
