"""The PPO update on a flow policy learns: a contextual bandit with a known best action chunk, no simulator.

Rewards are ``-mean((a - a*(s))^2)`` for a fixed random map ``a*(s) = tanh(W s)``; one decision per episode, so
the advantage is the normalised reward (GRPO-style, no critic). From a random policy, a few dozen iterations of
:func:`hetero.rl.update.ppo_update` with Flow-SDE or Flow-Noise replays must cut the deterministic (ODE) policy's
error: if the log-prob, ratio or advantage sign were wrong, the error would not fall.
Run: python -m pytest -q tests/test_rl_learns.py
"""

import pytest
import torch

from hetero.config import build
from hetero.models.vla import VLAConfig, VLAPolicy
from hetero.rl.config import RLConfig
from hetero.rl.policy import sample
from hetero.rl.update import make_optimizer, ppo_update


@pytest.mark.parametrize("method,iters,gain", [("flow_sde", 25, 0.25), ("flow_noise", 25, 0.25)])
def test_ppo_update_improves_a_contextual_bandit(method, iters, gain):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _bandit(method, iters, gain)
    finally:
        torch.set_num_threads(threads)


def _bandit(method: str, iters: int, gain: float) -> None:
    torch.manual_seed(0)
    n, s_dim, a_dim, h = 64, 6, 4, 5
    model = VLAPolicy(VLAConfig(state_dim=s_dim, action_dim=a_dim, horizon=h, text="none"))
    cfg = build(RLConfig, {"sampler": {"method": method, "num_steps": 4, "chunk": h}, "policy": {"horizon": h},
                           "algo": {"name": "grpo", "lr": 3e-4, "update_epochs": 2, "minibatch_size": 32,
                                    "train_expert_only": False, "group_size": 2},
                           "env": {"group_size": 2}})
    opt, _, _ = make_optimizer(model, cfg)
    w = torch.randn(s_dim, a_dim, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)

    def error(actions, s):
        return ((actions.clamp(-1, 1) - torch.tanh(s @ w)[:, None, :]) ** 2).mean(dim=(1, 2))

    probe = torch.randn(512, s_dim, generator=torch.Generator().manual_seed(3))
    probe_obs = {"state": probe, "instruction": [""] * len(probe)}
    err0 = error(sample(model, probe_obs, cfg.sampler, method="ode").actions, probe).mean().item()
    for it in range(1, iters + 1):
        s = torch.randn(n, s_dim, generator=gen)
        obs = {"state": s, "instruction": [""] * n}
        model.eval()
        smp = sample(model, obs, cfg.sampler, generator=gen)
        reward = -error(smp.actions, s)
        batch = {"obs": obs, "chain": smp.chain, "denoise_ind": smp.denoise_ind, "logp": smp.logp,
                 "value": smp.value, "adv": (reward - reward.mean()) / (reward.std() + 1e-8),
                 "ret": torch.zeros(n)}
        ppo_update(model, opt, batch, cfg, iteration=it)
    err1 = error(sample(model, probe_obs, cfg.sampler, method="ode").actions, probe).mean().item()
    assert err1 < (1 - gain) * err0, f"{method}: ODE error {err0:.3f} -> {err1:.3f}"
