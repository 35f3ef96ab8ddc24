"""Rollout sampling and log-prob replay of a flow-matching policy for Flow-SDE, Flow-Noise and ODE evaluation.

``sample`` runs the N-step denoising chain for a batch of observations and returns the executed action chunk, the
whole chain ``[B, N+1, H, A]`` (stored for training), the behaviour log-prob and the value. ``replay`` recomputes
the log-prob (and entropy, value) of stored chains under the current parameters; with unchanged parameters and the
same batch it returns the rollout's log-prob bit for bit (importance ratio exactly 1), because both go through
:func:`_transition` with the same inputs; given a reference policy it also returns the KL of the stochastic
transitions from the reference's on those chains (:func:`hetero.rl.flow.mean_shift_kl`, the current std on both).

- ``ode``: deterministic Euler (evaluation); log-prob 0.
- ``flow_sde``: two-layer MDP; per forward one step k (shared by the batch) is the SDE step, the rest are ODE steps;
  the log-prob is that one transition's, summed over the executed chunk and action dims.
- ``flow_noise``: every step is stochastic with the noise head's std; log-prob = mean over the N+1 chain terms
  (piRL joint log-prob), summed over chunk and action dims; entropy of the learned Gaussians.

Tests: ``python -m pytest -q tests/test_rl_policy.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch

from hetero.config import check
from hetero.models.vla import VLAPolicy
from hetero.rl import flow

if TYPE_CHECKING:
    from hetero.rl.config import PolicyConfig

NoiseMethod = Literal["flow_sde", "flow_noise", "ode"]


@dataclass(kw_only=True)
class SamplerConfig:
    """How actions are sampled from the flow policy."""

    method: NoiseMethod = "flow_sde"
    """flow_sde (one random SDE step per forward), flow_noise (learned noise at every step) or ode."""
    num_steps: int = 4
    """Denoising steps N."""
    noise_level: float = 0.5
    """Flow-SDE noise level a in sigma_t = a sqrt(t / (1 - t))."""
    chunk: int = 5
    """Executed actions per chunk (<= policy horizon); only these enter the log-prob."""

    def __post_init__(self):
        check(self.num_steps >= 1, "num_steps", "must be >= 1")
        check(self.noise_level >= 0, "noise_level", "must be >= 0")
        check(self.chunk >= 1, "chunk", "must be >= 1")


@dataclass
class Sample:
    """Output of :func:`sample` for a batch of B observations."""

    actions: torch.Tensor
    """Executed chunk ``[B, chunk, A]`` (last state of the chain; clip before sending to an env)."""
    chain: torch.Tensor
    """All denoising states ``[B, N+1, H, A]``, x_1 first."""
    denoise_ind: torch.Tensor
    """Stochastic step index per sample ``[B]`` (flow_sde), -1 otherwise."""
    logp: torch.Tensor
    """Behaviour log-prob ``[B]``."""
    value: torch.Tensor
    """Value estimate ``[B]``."""


def _transition(model: VLAPolicy, prefix: torch.Tensor, x: torch.Tensor, step: torch.Tensor, cfg: SamplerConfig,
                method: NoiseMethod) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian of the transition out of ``x [B, H, A]`` at step indices ``step [B]``: (mean, std), ``[B, H, A]``.

    For flow_sde the SDE mean/std apply where ``method`` says so; ode gives std 0.
    """
    n = cfg.num_steps
    grid = flow.time_grid(n, device=x.device)
    t = grid[step]
    delta = 1.0 / n
    v, feats = model.velocity(prefix, x, t)
    tb = t[:, None, None]
    if method == "flow_sde":
        sig = flow.sde_sigmas(n, cfg.noise_level).to(x.device)[step][:, None, None]
        mean = flow.sde_step_mean(x, v, tb, delta, sig)
        std = (delta ** 0.5) * sig.expand_as(mean)
    elif method == "flow_noise":
        mean = flow.ode_step(x, v, delta)
        std = model.noise_std(feats)
    else:
        mean = flow.ode_step(x, v, delta)
        std = torch.zeros_like(mean)
    return mean, std


class Replay(NamedTuple):
    """What :func:`replay` recomputes for stored chains, each ``[B]``."""

    logp: torch.Tensor
    """Log-prob under the current parameters (differentiable)."""
    entropy: torch.Tensor
    """Mean per-element entropy of the stochastic transitions (0 for flow_sde and ode)."""
    value: torch.Tensor
    """Value estimate."""
    ref_kl: torch.Tensor
    """KL of the stochastic transitions from the reference policy's (0 without one); same aggregation as logp:
    summed over the executed chunk and action dims, averaged over the N steps (flow_noise) or at step k (flow_sde)."""


@torch.no_grad()
def sample(model: VLAPolicy, obs: dict, cfg: SamplerConfig, *, method: NoiseMethod | None = None,
           generator: torch.Generator | None = None) -> Sample:
    """Run the denoising chain for a batch of observations (see the module docstring for the methods)."""
    method = method or cfg.method
    prefix = model.encode(obs)
    value = model.value(prefix)
    b = prefix.shape[0]
    mc = model.cfg
    n = cfg.num_steps
    dev = prefix.device
    x = torch.randn((b, mc.horizon, mc.action_dim), generator=generator, device=dev)
    chain = [x]
    k = -1
    if method == "flow_sde":
        k = int(torch.randint(0, n, (1,), generator=generator, device=dev).item())
    logps = []
    for i in range(n):
        step = torch.full((b,), i, dtype=torch.long, device=dev)
        m = method if (method != "flow_sde" or i == k) else "ode"
        mean, std = _transition(model, prefix, x, step, cfg, m)
        x = mean + std * torch.randn(mean.shape, generator=generator, device=dev)
        chain.append(x)
        if m != "ode":
            logps.append(flow.gaussian_logprob(x, mean, std))
    chain_t = torch.stack(chain, dim=1)
    c = cfg.chunk
    if method == "flow_noise":
        first = flow.gaussian_logprob(chain_t[:, 0], torch.zeros_like(x), torch.ones_like(x))
        lp = torch.stack([first] + logps, dim=1).mean(dim=1)
        logp = lp[:, :c].sum(dim=(1, 2))
    elif method == "flow_sde":
        logp = logps[0][:, :c].sum(dim=(1, 2))
    else:
        logp = torch.zeros(b, device=dev)
    ind = torch.full((b,), k, dtype=torch.long, device=dev)
    return Sample(actions=chain_t[:, -1, :c], chain=chain_t, denoise_ind=ind, logp=logp, value=value)


def replay(model: VLAPolicy, obs: dict, chain: torch.Tensor, denoise_ind: torch.Tensor, cfg: SamplerConfig, *,
           method: NoiseMethod | None = None, ref: VLAPolicy | None = None) -> Replay:
    """Log-prob, entropy and value of stored chains ``[B, N+1, H, A]`` under the current parameters
    (differentiable), and with ``ref`` the KL of their stochastic transitions from ``ref``'s (no gradient into
    ``ref``); see :class:`Replay`."""
    method = method or cfg.method
    prefix = model.encode(obs)
    value = model.value(prefix)
    ref_prefix = None
    if ref is not None:
        with torch.no_grad():
            ref_prefix = ref.encode(obs)
    b = chain.shape[0]
    c = cfg.chunk
    dev = chain.device
    zeros = torch.zeros(b, device=dev)

    def kl(rows, x, step, m, mean, std) -> torch.Tensor | None:  # [b', H, A] of rows (None: all) vs ref, or None
        if ref is None:
            return None
        with torch.no_grad():
            ref_mean, _ = _transition(ref, ref_prefix if rows is None else ref_prefix[rows], x, step, cfg, m)
        return flow.mean_shift_kl(mean, ref_mean, std.detach())

    if method == "flow_sde":
        ks = denoise_ind.unique().tolist()
        one = len(ks) == 1
        logp, ref_kl = zeros, zeros
        for k in ks:  # one forward per distinct k (a rollout batch shares k, minibatches mix a few)
            sel = (denoise_ind == k).nonzero().squeeze(1)
            rows = None if one else sel
            x = chain[sel, k]
            step = torch.full((len(sel),), k, dtype=torch.long, device=dev)
            mean, std = _transition(model, prefix if one else prefix[sel], x, step, cfg, "flow_sde")
            lp = flow.gaussian_logprob(chain[sel, k + 1], mean, std)[:, :c].sum(dim=(1, 2))
            logp = lp if one else logp.index_put((sel,), lp)
            d = kl(rows, x, step, "flow_sde", mean, std)
            if d is not None:
                d = d[:, :c].sum(dim=(1, 2))
                ref_kl = d if one else ref_kl.index_put((sel,), d)
        return Replay(logp, zeros, value, ref_kl)
    if method == "flow_noise":
        n = cfg.num_steps
        first = flow.gaussian_logprob(chain[:, 0], torch.zeros_like(chain[:, 0]), torch.ones_like(chain[:, 0]))
        terms, ents, kls = [first], [], []
        for i in range(n):
            step = torch.full((b,), i, dtype=torch.long, device=dev)
            mean, std = _transition(model, prefix, chain[:, i], step, cfg, "flow_noise")
            terms.append(flow.gaussian_logprob(chain[:, i + 1], mean, std))
            ents.append(flow.gaussian_entropy(std)[:, :c].mean(dim=(1, 2)))
            d = kl(None, chain[:, i], step, "flow_noise", mean, std)
            if d is not None:
                kls.append(d[:, :c].sum(dim=(1, 2)))
        lp = torch.stack(terms, dim=1).mean(dim=1)
        ref_kl = torch.stack(kls, 1).mean(1) if kls else zeros
        return Replay(lp[:, :c].sum(dim=(1, 2)), torch.stack(ents, 1).mean(1), value, ref_kl)
    return Replay(zeros, zeros, value, zeros)


def save_checkpoint(path, *, model: VLAPolicy, extra: dict | None = None) -> None:
    """Write model config + weights (+ ``extra``: optimizer state, iteration, RL config) atomically."""
    import dataclasses
    import os

    tmp = f"{path}.tmp"
    torch.save({"vla_config": dataclasses.asdict(model.cfg), "model": model.state_dict(), **(extra or {})}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, *, map_location: str = "cpu", policy: PolicyConfig | None = None) -> tuple[VLAPolicy, dict]:
    """Rebuild the policy from a checkpoint; returns (model, the whole checkpoint dict).

    ``policy``: an RL config's policy section whose RL-time choices (critic input, Flow-Noise std bounds and detach)
    replace the checkpoint's, e.g. when RL starts from an SFT checkpoint.
    """
    import os

    from hetero.config import ConfigError
    from hetero.models.vla import VLAConfig

    if not os.path.isfile(path):
        raise ConfigError(str(path), "checkpoint file not found")
    ck = torch.load(path, map_location=map_location, weights_only=False)
    vc = dict(ck["vla_config"])
    vc["noise_hidden"] = tuple(vc["noise_hidden"])
    model_cfg = VLAConfig(**vc)
    model = VLAPolicy(policy.rl_options(model_cfg) if policy is not None else model_cfg)
    model.load_state_dict(ck["model"])
    return model, ck


def obs_to_torch(obs: dict, device: torch.device | str = "cpu") -> dict:
    """numpy observation dict from an env -> torch tensors (instructions stay strings)."""
    out = {"state": torch.as_tensor(obs["state"], device=device), "instruction": list(obs["instruction"])}
    if "images" in obs:
        out["images"] = torch.as_tensor(obs["images"], device=device)
    return out
