"""tools/rl_explore.py's per-task learned Flow-Noise std: python -m pytest -q tests/test_rl_explore.py"""

import importlib.util
from pathlib import Path

import pytest
import torch

from hetero.models.vla import VLAConfig, VLAPolicy
from hetero.rl.policy import SamplerConfig

_spec = importlib.util.spec_from_file_location("rl_explore", Path(__file__).parents[1] / "tools" / "rl_explore.py")
rl_explore = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rl_explore)


def _model():
    torch.manual_seed(0)
    return VLAPolicy(VLAConfig.preset("cpu", state_dim=7, action_dim=3, horizon=4, text="learned",
                                      noise_min_std=0.1, noise_max_std=0.3)).eval()


def _obs():
    g = torch.Generator().manual_seed(1)
    return {"state": torch.randn(4, 7, generator=g), "instruction": ["open the drawer", "press button"] * 2}


@pytest.mark.parametrize("bias,at", [(0.0, None), (50.0, "at_max"), (-50.0, "at_min")])
def test_learned_std_per_task_within_bounds_and_flags_saturation(bias, at):
    m = _model()
    with torch.no_grad():
        m.noise_head[-1].weight.zero_()
        m.noise_head[-1].bias.fill_(bias)
    tasks = ["drawer", "button", "drawer", "button"]
    out = rl_explore._learned_std(m, _obs(), SamplerConfig(method="flow_noise", num_steps=4, chunk=3), tasks,
                                  torch.Generator().manual_seed(0))
    assert set(out["noise_std"]) == {"drawer", "button"}
    for t in ("drawer", "button"):
        assert 0.1 <= out["noise_std"][t] <= 0.3
        if at is None:  # logvar 0 after tanh: the middle of [log 0.01, log 0.09], std sqrt(0.1 * 0.3)
            assert out["noise_std"][t] == pytest.approx((0.1 * 0.3) ** 0.5, rel=1e-3)
            assert out["at_min"][t] == out["at_max"][t] == 0.0
        else:
            assert out[at][t] == 1.0
