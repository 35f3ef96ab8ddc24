"""tools/rl_demo_fit.py's drift measure: python -m pytest -q tests/test_rl_demo_fit.py"""

import copy
import importlib.util
from pathlib import Path

import torch

from hetero.models.vla import VLAConfig, VLAPolicy
from hetero.rl.policy import SamplerConfig
from hetero.rl.sft import train_sft

_spec = importlib.util.spec_from_file_location("rl_demo_fit", Path(__file__).parents[1] / "tools" / "rl_demo_fit.py")
rl_demo_fit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rl_demo_fit)


def test_demo_fit_falls_when_the_policy_is_trained_on_the_demos():
    """Per grid time and per task: a policy fitted to the demos by flow matching scores lower on both measures
    than the same policy untrained; the ODE error is a per-chunk mean, so the overall figure lies within the tasks'."""
    g = torch.Generator().manual_seed(0)
    m = 96
    state = torch.randn(m, 5, generator=g)
    actions = torch.tanh(state[:, :3]).unsqueeze(1).repeat(1, 4, 1)  # [m, 4, 3]: a function of the state
    data = {"state": state, "actions": actions, "instruction": ["open the drawer", "press the button"] * (m // 2)}
    noise = torch.randn(actions.shape, generator=g)
    torch.manual_seed(0)
    model = VLAPolicy(VLAConfig(state_dim=5, action_dim=3, horizon=4, text="learned"))
    before = rl_demo_fit.demo_fit(model, data, noise, num_steps=4)
    assert list(before["fm_loss_at_t"]) == ["1", "0.75", "0.5", "0.25"]
    assert set(before["per_task"]) == {"open the drawer", "press the button"}
    train_sft(model, data, steps=120, batch_size=32, lr=3e-3, progress=False)
    after = rl_demo_fit.demo_fit(model, data, noise, num_steps=4)
    for t in before["fm_loss_at_t"]:
        assert after["fm_loss_at_t"][t] < 0.7 * before["fm_loss_at_t"][t]
    assert after["ode_vs_demo_mse"] < 0.5 * before["ode_vs_demo_mse"]
    tasks = list(after["per_task"].values())
    assert min(tasks) - 1e-6 <= after["ode_vs_demo_mse"] <= max(tasks) + 1e-6


def test_reference_kl_is_zero_against_itself_and_grows_with_training():
    g = torch.Generator().manual_seed(0)
    state = torch.randn(64, 5, generator=g)
    data = {"state": state, "actions": torch.tanh(state[:, :3]).unsqueeze(1).repeat(1, 4, 1),
            "instruction": ["open the drawer", "press the button"] * 32}
    noise = torch.randn(data["actions"].shape, generator=g)
    torch.manual_seed(0)
    model = VLAPolicy(VLAConfig(state_dim=5, action_dim=3, horizon=4, text="learned"))
    ref = copy.deepcopy(model)
    sampler = SamplerConfig(method="flow_noise", num_steps=4, chunk=4)

    def kl(m) -> dict:
        return rl_demo_fit.demo_fit(m, data, noise, 4, ref=ref, sampler=sampler, generator=torch.Generator().manual_seed(1))

    same = kl(model)
    assert same["ref_kl"] == 0.0 and set(same["ref_kl_per_task"].values()) == {0.0}
    train_sft(model, data, steps=60, batch_size=32, lr=3e-3, progress=False)
    moved = kl(model)
    assert moved["ref_kl"] > 0.1 and min(moved["ref_kl_per_task"].values()) > 0
