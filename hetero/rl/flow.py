"""Denoising maths of flow-matching policies for online RL (piRL): ODE, SDE and Flow-Noise steps, log-probs.

Pure tensor functions, no modules and no state. Convention (openpi): ``x_t = t * noise + (1 - t) * action``,
velocity target ``u = noise - action``; sampling integrates from t=1 (noise) to t=0 (action) on the grid
``t_i = 1 - i/N`` (i = 0..N). One denoising transition at step i goes from ``x_{t_i}`` to ``x_{t_{i+1}}`` with
``delta = t_i - t_{i+1} = 1/N``; it is Gaussian ``N(mean_i, std_i^2)`` where:

- ODE (Euler, deterministic): ``mean = x - delta * v``, ``std = 0``;
- SDE (Flow-GRPO ODE->SDE, piRL Flow-SDE): ``sigma_i = a * sqrt(t_i / (1 - t'_i))`` with t'_0 = t_1 (t=1 would
  divide by zero), ``mean = x0_pred * (1 - s) + x1_pred * (s - sigma_i^2 * delta / (2 t_i))`` with ``s = t_i - delta``,
  ``x0_pred = x - t v``, ``x1_pred = x + (1 - t) v``, and ``std = sqrt(delta) * sigma_i``;
- Flow-Noise (ReinFlow, piRL Flow-Noise): the ODE mean and a learned std from a noise network whose raw output is
  squashed by tanh into ``[log min_std^2, log max_std^2]``.

Shapes: ``x``, ``v``, ``mean``, ``std`` are ``[B, H, A]`` (batch, horizon, action dim); chains are
``[B, N+1, H, A]``. Unit tests: ``python -m pytest -q tests/test_rl_flow.py``.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def time_grid(num_steps: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Denoising times ``[1, 1 - 1/N, ..., 1/N, 0]``: shape ``[N+1]``, float32."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.cat([torch.linspace(1.0, 1.0 / num_steps, num_steps, device=device),
                      torch.zeros(1, device=device)])


def interpolate(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-matching training pair: ``x_t = t * noise + (1 - t) * actions`` and target ``u = noise - actions``.

    actions, noise: ``[B, H, A]``; t: ``[B]``. Returns (x_t ``[B, H, A]``, u ``[B, H, A]``).
    """
    tb = t.reshape(-1, *([1] * (actions.dim() - 1)))
    return tb * noise + (1.0 - tb) * actions, noise - actions


def sample_train_times(batch: int, *, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """openpi's flow-matching time distribution ``Beta(1.5, 1) * 0.999 + 0.001``: shape ``[B]``.

    Beta(1.5, 1) has CDF ``u^1.5`` so it is sampled as ``U^(1/1.5)``.
    """
    u = torch.rand(batch, generator=generator, device=device)
    return u.pow(1.0 / 1.5) * 0.999 + 0.001


def ode_step(x: torch.Tensor, v: torch.Tensor, delta: float | torch.Tensor) -> torch.Tensor:
    """Euler step from t to t - delta: ``x - delta * v``. x, v: ``[B, H, A]``."""
    return x - delta * v


def sde_sigmas(num_steps: int, noise_level: float) -> torch.Tensor:
    """Flow-SDE noise scale per step ``sigma_i = a * sqrt(t_i / (1 - t'_i))``, t'_0 replaced by t_1: ``[N]``.

    For N=1 the grid has no interior point; t'_0 = 1 - 1/2 is used so that sigma stays finite.
    """
    t = time_grid(num_steps)[:-1]
    t_safe = torch.where(t == 1.0, t[1] if num_steps > 1 else torch.tensor(0.5), t)
    return noise_level * torch.sqrt(t / (1.0 - t_safe))


def sde_step_std(num_steps: int, noise_level: float) -> torch.Tensor:
    """Per-step std of the Flow-SDE transition ``sqrt(delta) * sigma_i``: ``[N]`` (step 0 always equals a)."""
    return math.sqrt(1.0 / num_steps) * sde_sigmas(num_steps, noise_level)


def sde_step_mean(x: torch.Tensor, v: torch.Tensor, t: float | torch.Tensor, delta: float | torch.Tensor,
                  sigma: float | torch.Tensor) -> torch.Tensor:
    """Mean of the Flow-SDE transition from t to t - delta (ODE mean plus the drift correction).

    ``mean = x0_pred * (1 - s) + x1_pred * (s - sigma^2 * delta / (2 t))`` with ``s = t - delta``. Equivalently
    ``x - delta * v - sigma^2 * delta / (2 t) * x1_pred``. x, v: ``[B, H, A]``; t, delta, sigma scalars or
    broadcastable tensors.
    """
    s = t - delta
    x0_pred = x - t * v
    x1_pred = x + (1.0 - t) * v
    return x0_pred * (1.0 - s) + x1_pred * (s - sigma * sigma * delta / (2.0 * t))


def bounded_std(raw: torch.Tensor, min_std: float, max_std: float) -> torch.Tensor:
    """Flow-Noise std from a noise network's raw output: tanh into ``[log min^2, log max^2]``, then ``exp(lv/2)``.

    raw: any shape; returns the same shape with values in ``[min_std, max_std]``.
    """
    lo, hi = 2.0 * math.log(min_std), 2.0 * math.log(max_std)
    logvar = lo + (torch.tanh(raw) + 1.0) * 0.5 * (hi - lo)
    return torch.exp(0.5 * logvar)


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Element-wise ``log N(x; mean, std^2)``, defined as 0 where std == 0 (deterministic ODE steps).

    x, mean, std broadcastable, e.g. ``[B, H, A]``; returns their broadcast shape.
    """
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    zero = std == 0
    safe = torch.where(zero, torch.ones_like(std), std)
    lp = -0.5 * ((x - mean) / safe) ** 2 - torch.log(safe) - 0.5 * LOG_2PI
    return torch.where(zero, torch.zeros_like(lp), lp)


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Element-wise entropy ``0.5 * log(2 pi e std^2)`` of a Gaussian: same shape as std."""
    return 0.5 * (LOG_2PI + 1.0) + torch.log(std)


def mean_shift_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Element-wise ``KL(N(mean, std^2) || N(ref_mean, std^2)) = (mean - ref_mean)^2 / (2 std^2)``: the KL between
    two transitions that share their std (Flow-GRPO's KL penalty). Shapes broadcast, e.g. ``[B, H, A]``; std > 0."""
    return (mean - ref_mean) ** 2 / (2.0 * std**2)


def chain_logprob(chain: torch.Tensor, means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """Joint log-prob of a whole denoising chain, averaged over its N+1 terms as piRL (Flow-Noise) does.

    chain: ``[B, N+1, H, A]`` (x_1 = initial noise first, the action last); means, stds: ``[B, N, H, A]``, the
    Gaussian of each transition ``chain[:, i] -> chain[:, i+1]``. The first term is ``log N(chain[:, 0]; 0, I)``.
    Returns ``[B, H, A]``: the mean over the N+1 per-element terms (sum over H, A is left to the caller).
    """
    first = gaussian_logprob(chain[:, 0], torch.zeros_like(chain[:, 0]), torch.ones_like(chain[:, 0]))
    steps = gaussian_logprob(chain[:, 1:], means, stds)
    return torch.cat([first.unsqueeze(1), steps], dim=1).mean(dim=1)
