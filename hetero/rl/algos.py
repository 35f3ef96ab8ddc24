"""RL maths as pure functions: GAE, advantage normalisation, PPO actor/critic losses, GRPO group advantages.

Everything works at action-chunk granularity (one decision = one chunk; its reward is the sum of the per-step
rewards in the chunk), as RLinf/piRL do. Shapes: rollouts are time-major ``[T, B]`` (chunk-steps x envs);
losses take flat ``[M]`` samples. Unit tests: ``python -m pytest -q tests/test_rl_algos.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor, *,
        gamma: float = 0.99, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation with done masking.

    rewards, values, dones: ``[T, B]`` (dones[t] = the episode ended at chunk-step t; the env auto-reset, so
    values[t+1] belongs to a new episode); next_value: ``[B]``, the value of the observation after step T-1.
    ``delta_t = r_t + gamma * V_{t+1} * (1 - done_t) - V_t``, ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}``.
    Truncated episodes should carry ``gamma * V(final_obs)`` in their last reward (see :func:`bootstrap_truncated`).
    Returns (advantages ``[T, B]``, returns = advantages + values ``[T, B]``).
    """
    T = rewards.shape[0]
    notdone = 1.0 - dones.float()
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        v_next = next_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * v_next * notdone[t] - values[t]
        last = delta + gamma * lam * notdone[t] * last
        adv[t] = last
    return adv, adv + values


def bootstrap_truncated(rewards: torch.Tensor, truncated: torch.Tensor, final_values: torch.Tensor, *,
                        gamma: float = 0.99) -> torch.Tensor:
    """``r + gamma * V(final_obs)`` where the episode was truncated (time limit), else r. All ``[B]`` or ``[T, B]``."""
    return rewards + gamma * final_values * truncated.float()


def normalize(x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8,
              groups: torch.Tensor | None = None) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` over the entries where mask is true (all when mask is None); same shape, 0 where
    masked out. With ``groups`` (int ids, x's shape) each group is normalised by its own mean and std (per-task
    advantages in multi-task RL: a task whose returns vary little is not drowned by one whose returns vary a lot)."""
    m = torch.ones_like(x) if mask is None else mask.float()
    if groups is None:
        groups = torch.zeros(x.shape, dtype=torch.long, device=x.device)
    ids = torch.unique(groups, return_inverse=True)[1]
    k = int(ids.max()) + 1 if ids.numel() else 0
    n = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, ids.reshape(-1), m.reshape(-1)).clamp_min(1.0)
    mean = torch.zeros_like(n).index_add_(0, ids.reshape(-1), (x * m).reshape(-1)) / n
    dev = (x - mean[ids]) * m
    var = torch.zeros_like(n).index_add_(0, ids.reshape(-1), (dev**2).reshape(-1)) / n
    return dev / (var.sqrt()[ids] + eps)


@dataclass(frozen=True)
class PPOStats:
    """Diagnostics of one PPO actor loss evaluation (floats, detached)."""

    clip_fraction: float
    """Fraction of samples whose ratio left [1 - clip, 1 + clip]."""
    approx_kl: float
    """k3 estimator ``mean((r - 1) - log r)`` of KL(old || new)."""
    ratio_mean: float
    """Mean importance ratio."""


def ppo_actor_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, *,
                   clip: float = 0.2) -> tuple[torch.Tensor, PPOStats]:
    """Clipped PPO surrogate ``-mean(min(r A, clip(r, 1-c, 1+c) A))`` with ``r = exp(logp_new - logp_old)``.

    All inputs ``[M]``. Returns (scalar loss, :class:`PPOStats`).
    """
    log_ratio = logp_new - logp_old
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    loss = -torch.min(unclipped, clipped).mean()
    with torch.no_grad():
        clip_frac = ((ratio - 1.0).abs() > clip).float().mean().item()
        approx_kl = ((ratio - 1.0) - log_ratio).mean().item()
    return loss, PPOStats(clip_fraction=clip_frac, approx_kl=approx_kl, ratio_mean=ratio.mean().item())


def value_loss(values_new: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, *,
               clip: float | None = 0.2, huber_delta: float = 10.0) -> torch.Tensor:
    """Clipped Huber value loss ``mean(max(huber(V - R), huber(V_clip - R)))``, ``V_clip = V_old + clip(V - V_old)``.

    All inputs ``[M]``; ``clip=None`` disables value clipping. Returns a scalar.
    """
    unclipped = F.huber_loss(values_new, returns, delta=huber_delta, reduction="none")
    if clip is None:
        return unclipped.mean()
    v_clip = values_old + torch.clamp(values_new - values_old, -clip, clip)
    clipped = F.huber_loss(v_clip, returns, delta=huber_delta, reduction="none")
    return torch.max(unclipped, clipped).mean()


def episode_scores(rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
    """Sum of rewards of the first episode of each env: rewards, dones ``[T, B]`` -> ``[B]`` (steps after the
    first done are ignored, as a GRPO group member is one trajectory)."""
    alive = torch.cumprod(torch.cat([torch.ones_like(dones[:1]), 1.0 - dones[:-1].float()]), dim=0)
    return (rewards * alive).sum(dim=0)


def grpo_advantages(scores: torch.Tensor, group_size: int, *, eps: float = 1e-6,
                    filter_bounds: tuple[float, float] | None = (0.1, 0.9)) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO group-relative advantages ``(s - mean_group) / (std_group + eps)``.

    scores: ``[B]`` with B = groups * group_size and the members of group g at ``[g*G:(g+1)*G]``.
    filter_bounds: keep only groups whose mean score lies in ``[lo, hi]`` (drops all-fail / all-success groups);
    None keeps all. Returns (advantages ``[B]``, keep mask ``[B]`` bool).
    """
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    g = scores.reshape(-1, group_size)
    mean = g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, unbiased=False, keepdim=True)
    adv = ((g - mean) / (std + eps)).reshape(-1)
    if filter_bounds is None:
        keep = torch.ones_like(adv, dtype=torch.bool)
    else:
        lo, hi = filter_bounds
        keep = ((mean >= lo) & (mean <= hi)).expand_as(g).reshape(-1)
    return adv, keep


def grpo_rollout(rewards: torch.Tensor, dones: torch.Tensor, group_size: int, *,
                 filter_bounds: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO over one rollout in which every env ran one episode from its group's shared reset: rewards, dones
    ``[T, B]`` -> (advantages ``[T, B]``: each env's group-normalised episode score on every step, mask ``[T, B]``
    bool: the steps up to and including the env's first episode end, in groups the reward filter keeps)."""
    g_adv, keep = grpo_advantages(episode_scores(rewards, dones), group_size, filter_bounds=filter_bounds)
    alive = torch.cumprod(torch.cat([torch.ones_like(dones[:1]), 1.0 - dones[:-1].float()]), dim=0).bool()
    return g_adv[None, :].expand_as(rewards).clone(), alive & keep[None, :]
