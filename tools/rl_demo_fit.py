"""How far a policy's flow has moved from the few-shot demonstrations it was fine-tuned on (SFT -> RL drift).

    python tools/rl_demo_fit.py --config examples/rl/metaworld_mt10_flow_noise.yaml \
        --checkpoint runs/rl_mt10/sft_fewshot.pt --checkpoint runs/rl_mt10/flow_noise_bc03/checkpoint.pt

Rebuilds the config's SFT demonstrations (``sft.demos_per_task`` / ``sft.task_demos``, ``sft.seed``), draws
``--chunks`` (state, action chunk) pairs from them and one noise draw per pair (the same for every checkpoint), and
prints per checkpoint: the flow-matching loss ``MSE(v(x_t, t), noise - actions)`` at each denoising grid time of the
config's sampler (t = 1, 1 - 1/N, ..., 1/N; what SFT minimised, so about its final loss for the SFT checkpoint), and
the mean squared error between the deterministic (ODE) chunk from that noise, clipped to [-1, 1] as the env clips
it, and the demo's chunk, overall and per task. RL that keeps a task's demo behaviour keeps that task's error near
the SFT checkpoint's. Also the KL of the checkpoint's own stochastic chains (the config's sampler) at those states
from the reference policy's transitions (``--reference``, default ``train.init_checkpoint``: what
``algo.ref_kl_coef`` penalises). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json

import torch

from hetero.config import ConfigError
from hetero.rl import flow
from hetero.rl.config import load_config
from hetero.rl.policy import SamplerConfig, load_checkpoint, replay, sample
from hetero.rl.sft import demo_batch, make_dataset, sft_demos


def _per_task(values: torch.Tensor, names: list[str]) -> dict[str, float]:
    """Mean of ``values [M]`` per name."""
    groups: dict[str, list[float]] = {}
    for e, name in zip(values.tolist(), names):
        groups.setdefault(name, []).append(e)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


@torch.no_grad()
def demo_fit(model, data: dict, noise: torch.Tensor, num_steps: int, *, ref=None, sampler: SamplerConfig | None = None,
             generator: torch.Generator | None = None) -> dict:
    """Flow-matching loss per grid time and ODE-vs-demo chunk error (overall and per instruction) of ``model`` on
    ``data`` (state ``[M, S]``, actions ``[M, H, A]``, instruction [M]; images optional) from ``noise [M, H, A]``;
    with ``ref`` and ``sampler`` also the KL of ``model``'s chains (drawn with ``generator``) from ``ref``'s."""
    model.eval()
    obs, a = demo_batch(data)
    prefix = model.encode(obs)
    a, m = a.float(), noise.shape[0]
    grid = flow.time_grid(num_steps)  # [N+1]: 1, 1 - 1/N, ..., 1/N, 0
    loss_at = {}
    for k in range(num_steps):
        t = grid[k].expand(m)
        x_t, u = flow.interpolate(a, noise, t)
        v, _ = model.velocity(prefix, x_t, t)
        loss_at[f"{grid[k].item():.3g}"] = ((v - u) ** 2).mean().item()
    x = noise.clone()
    for k in range(num_steps):  # the deterministic (ODE) chain from that noise
        v, _ = model.velocity(prefix, x, grid[k].expand(m))
        x = flow.ode_step(x, v, 1.0 / num_steps)
    err = ((x.clamp(-1, 1) - a) ** 2).mean(dim=(1, 2))  # [M]
    out = {"fm_loss_at_t": loss_at, "ode_vs_demo_mse": err.mean().item(),
           "per_task": _per_task(err, data["instruction"])}
    if ref is not None:
        s = sample(model, obs, sampler, generator=generator)
        kl = replay(model, obs, s.chain, s.denoise_ind, sampler, ref=ref).ref_kl  # [M]
        out.update(ref_kl=kl.mean().item(), ref_kl_per_task=_per_task(kl, data["instruction"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="RL config YAML (env, sft demos, sampler)")
    ap.add_argument("--checkpoint", required=True, action="append", help="policy checkpoint (repeatable)")
    ap.add_argument("--chunks", type=int, default=1024, help="demo chunks drawn (with replacement)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", default=None, help="policy the KL is taken from (default: train.init_checkpoint)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = ap.parse_args(argv)
    if args.chunks < 1:
        ap.error(f"--chunks must be >= 1, got {args.chunks}")
    try:
        cfg = load_config(args.config, args.set)
        models = [(c, load_checkpoint(c, policy=cfg.policy)[0]) for c in args.checkpoint]
        ref = load_checkpoint(args.reference or cfg.train.init_checkpoint, policy=cfg.policy)[0].eval()
        demos = sft_demos(cfg)
    except ConfigError as e:
        ap.error(str(e))
    torch.set_num_threads(1)
    data = make_dataset(demos, cfg.policy.horizon)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(0, data["state"].shape[0], (args.chunks,), generator=g)
    sub = {k: ([v[i] for i in idx] if isinstance(v, list) else v[idx]) for k, v in data.items()}
    noise = torch.randn(sub["actions"].shape, generator=g)
    out = {}
    for name, model in models:
        r = demo_fit(model, sub, noise, cfg.sampler.num_steps, ref=ref, sampler=cfg.sampler,
                     generator=torch.Generator().manual_seed(args.seed))
        out[name] = r
        fm = ", ".join(f"t={t}: {v:.3f}" for t, v in r["fm_loss_at_t"].items())
        print(f"{name}\n  flow-matching loss on the demos: {fm}\n  ODE chunk vs demo chunk, MSE: "
              f"{r['ode_vs_demo_mse']:.3f}; KL of its {cfg.sampler.method} chains from the reference: {r['ref_kl']:.3f}"
              f"\n    {'task':50s} MSE    KL")
        for task, e in r["per_task"].items():
            print(f"    {task:50s} {e:.3f}  {r['ref_kl_per_task'][task]:.3f}")
    print(json.dumps({"demos": len(demos), "chunks": args.chunks, "checkpoints": out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
