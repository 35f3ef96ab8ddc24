"""Few-shot SFT of the flow-matching VLA on scripted-expert demonstrations (flow-matching loss).

    hetero rl sft --config examples/rl/metaworld_mt10_flow_sde.yaml     # writes cfg.sft.checkpoint

The demos (``sft.demos_per_task`` successful expert episodes per task, or ``sft.task_demos[task]``, on the
training variations) are cut into every chunk of H consecutive actions (the last action repeated past the episode
end), states are normalised with the demo statistics stored in the model, and the policy is trained by flow
matching.

ManiSkill (``benchmark: maniskill``) demos come from its motion planner, converted to the policy's normalized
joint-delta actions (:func:`hetero.rl.envs.maniskill.collect_demos`).

LIBERO has no demonstrations offline (they live on the HuggingFace Hub): for ``benchmark: libero`` this command
writes an untrained policy (``"kind": "scratch"``, state normalisation from random-action rollouts) that RL then
starts from.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hetero.config import ConfigError
from hetero.models.vla import VLAPolicy
from hetero.rl.config import RLConfig
from hetero.rl.envs import collect_demos
from hetero.rl.policy import save_checkpoint


def make_dataset(demos: list[dict], horizon: int) -> dict:
    """Demos -> chunk dataset: state ``[M, S]``, actions ``[M, H, A]``, images ``[M, C, 3, h, w]``, instruction [M]."""
    states, actions, images, instr = [], [], [], []
    for d in demos:
        a = d["actions"]
        T = len(a)
        padded = np.concatenate([a, np.repeat(a[-1:], horizon - 1, axis=0)])
        for t in range(T):
            states.append(d["states"][t])
            actions.append(padded[t:t + horizon])
            if "images" in d:
                images.append(d["images"][t])
            instr.append(d["instruction"])
    out = {"state": torch.as_tensor(np.stack(states)), "actions": torch.as_tensor(np.stack(actions)),
           "instruction": instr}
    if images:
        out["images"] = torch.as_tensor(np.stack(images))
    return out


def demo_batch(data: dict, idx: torch.Tensor | None = None, device: str = "cpu") -> tuple[dict, torch.Tensor]:
    """Rows ``idx [B]`` of a chunk dataset (all rows when None) as the policy's input: (obs dict with state
    ``[B, S]``, instruction list and images where the dataset has them, actions ``[B, H, A]``), on ``device``."""
    if idx is None:
        idx = torch.arange(data["state"].shape[0])
    obs = {"state": data["state"][idx].to(device), "instruction": [data["instruction"][i] for i in idx]}
    if "images" in data:
        obs["images"] = data["images"][idx].to(device)
    return obs, data["actions"][idx].to(device)


def build_model(cfg: RLConfig, state_dim: int, action_dim: int) -> VLAPolicy:
    """The policy a config asks for."""
    return VLAPolicy(cfg.policy.vla_config(state_dim=state_dim, action_dim=action_dim,
                                           num_cameras=cfg.env.num_cameras, image_size=cfg.env.image_size))


def train_sft(model: VLAPolicy, data: dict, *, steps: int, batch_size: int, lr: float, weight_decay: float = 0.01,
              seed: int = 0, progress: bool = True, device: str = "cpu") -> list[float]:
    """Flow-matching training on a chunk dataset; returns the loss of every step."""
    from rich.progress import Progress

    g = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.1)
    m = data["state"].shape[0]
    losses = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("SFT", total=steps)
        for _ in range(steps):
            idx = torch.randint(0, m, (min(batch_size, m),), generator=g)
            obs, actions = demo_batch(data, idx, device)
            loss = model.fm_loss(obs, actions, generator=None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(task, advance=1, description=f"SFT loss {loss.item():.4f}")
    model.eval()
    return losses


def scratch_model(cfg: RLConfig) -> tuple[VLAPolicy, dict]:
    """LIBERO: an untrained policy (no demos offline), states normalised with random-action rollout statistics;
    writes ``cfg.sft.checkpoint``."""
    from hetero.rl.envs.libero import state_stats

    t0 = time.time()
    torch.manual_seed(cfg.sft.seed)
    mean, std = state_stats(cfg.env, seed=cfg.sft.seed)
    model = build_model(cfg, state_dim=cfg.env.state_dim, action_dim=cfg.env.action_dim)
    model.set_state_stats(torch.as_tensor(mean), torch.as_tensor(std))
    Path(cfg.sft.checkpoint).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(cfg.sft.checkpoint, model=model, extra={"kind": "scratch"})
    return model, {"demos": 0, "kind": "scratch", "note": "no LIBERO demos offline: untrained policy",
                   "stats_s": round(time.time() - t0, 1), "parameters": model.num_parameters(),
                   "text": model.cfg.text, "checkpoint": cfg.sft.checkpoint}


def demo_counts(cfg: RLConfig) -> dict[str, int]:
    """Demos per task of the run: ``sft.task_demos`` where given, else ``sft.demos_per_task``; ConfigError for a
    task in ``task_demos`` that the run does not train on."""
    tasks = cfg.env.task_list()
    unknown = sorted(set(cfg.sft.task_demos) - set(tasks))
    if unknown:
        raise ConfigError("sft.task_demos", f"names {unknown}, not among the run's tasks {tasks}")
    return {t: cfg.sft.task_demos.get(t, cfg.sft.demos_per_task) for t in tasks}


def sft_demos(cfg: RLConfig) -> list[dict]:
    """The run's few-shot demonstrations (:func:`demo_counts` per task, seed ``sft.seed``): what SFT trains on;
    ConfigError for a benchmark without demos offline (LIBERO)."""
    return collect_demos(cfg.env, per_task=demo_counts(cfg), seed=cfg.sft.seed)


def bc_dataset(cfg: RLConfig) -> dict | None:
    """The few-shot demonstrations SFT trained on, as a chunk dataset (see :func:`make_dataset`), for RL's
    ``algo.bc_coef`` anchor; None when that is 0. ConfigError for a benchmark without demos offline (LIBERO)."""
    if cfg.algo.bc_coef == 0:
        return None
    return make_dataset(sft_demos(cfg), cfg.policy.horizon)


def run_sft(cfg: RLConfig, *, progress: bool = True) -> tuple[VLAPolicy, dict]:
    """Collect demos, train, write ``cfg.sft.checkpoint``; returns (model, summary dict). LIBERO: see
    :func:`scratch_model`."""
    t0 = time.time()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.benchmark == "libero":
        return scratch_model(cfg)
    torch.manual_seed(cfg.sft.seed)
    demos = sft_demos(cfg)
    t_demo = time.time() - t0
    data = make_dataset(demos, cfg.policy.horizon)
    model = build_model(cfg, state_dim=data["state"].shape[1], action_dim=data["actions"].shape[2])
    st = data["state"].float()
    model.set_state_stats(st.mean(0), st.std(0))
    losses = train_sft(model, data, steps=cfg.sft.steps, batch_size=cfg.sft.batch_size, lr=cfg.sft.lr,
                       weight_decay=cfg.sft.weight_decay, seed=cfg.sft.seed, progress=progress,
                       device=cfg.train.device)
    model.cpu()
    Path(cfg.sft.checkpoint).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(cfg.sft.checkpoint, model=model, extra={"kind": "sft"})
    summary = {"demos": len(demos), "chunks": int(data["state"].shape[0]), "demo_s": round(t_demo, 1),
               "train_s": round(time.time() - t0 - t_demo, 1), "final_loss": float(np.mean(losses[-20:])),
               "parameters": model.num_parameters(), "text": model.cfg.text, "checkpoint": cfg.sft.checkpoint}
    return model, summary
