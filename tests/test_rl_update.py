"""The shared PPO update (hetero/rl/update.py): python -m pytest -q tests/test_rl_update.py"""

import pytest
import torch

from hetero.config import build
from hetero.models.vla import VLAConfig, VLAPolicy
from hetero.rl.config import RLConfig
from hetero.rl.policy import SamplerConfig, sample
from hetero.rl.update import make_optimizer, ppo_update


def _batch(model: VLAPolicy, n: int = 32) -> dict:
    g = torch.Generator().manual_seed(0)
    obs = {"state": torch.randn(n, 6, generator=g), "instruction": ["reach the goal"] * n}
    s = sample(model, obs, SamplerConfig(method="flow_sde", num_steps=3, chunk=4), generator=g)
    return {"obs": obs, "chain": s.chain, "denoise_ind": s.denoise_ind, "logp": s.logp, "value": s.value,
            "adv": torch.randn(n, generator=g), "ret": torch.rand(n, generator=g)}


@pytest.mark.parametrize("expert_only", [True, False])
def test_train_expert_only_freezes_the_prefix_encoder(expert_only):
    torch.manual_seed(0)
    model = VLAPolicy(VLAConfig(state_dim=6, action_dim=3, horizon=4, text="learned"))
    cfg = build(RLConfig, {"sampler": {"method": "flow_sde", "num_steps": 3, "chunk": 4}, "policy": {"horizon": 4},
                           "algo": {"train_expert_only": expert_only, "critic_warmup_iters": 0, "lr": 1e-3,
                                    "minibatch_size": 16, "update_epochs": 1}})
    opt, policy_params, value_params = make_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = ppo_update(model, opt, _batch(model), cfg, iteration=1)
    assert stats["samples"] == 32 and stats["kl"] >= 0
    assert stats["update_steps"] == 2 and stats["update_compute_s"] > 0 and stats["update_comm_s"] == 0.0  # 32 / 16
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    prefix = {n for n in before if not model.is_expert_param(n) and not n.startswith("value_head")}
    assert any(model.is_expert_param(n) for n in moved) and any(n.startswith("value_head") for n in moved)
    if expert_only:
        assert not moved & prefix, f"frozen prefix parameters moved: {sorted(moved & prefix)}"
        assert len(policy_params) == sum(1 for n, _ in model.named_parameters() if model.is_expert_param(n))
    else:
        assert moved & prefix
    assert len(value_params) == sum(1 for n, _ in model.named_parameters() if n.startswith("value_head"))
