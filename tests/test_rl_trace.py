"""tools/rl_trace.py: per-episode traces of one Meta-World task. python -m pytest -q tests/test_rl_trace.py"""

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("rl_trace", Path(__file__).parents[1] / "tools" / "rl_trace.py")
rl_trace = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rl_trace)


def test_splits_success_at_the_median_start_x():
    rows = [{"object_start": [x, 0.7, 0.1], "success": ok} for x, ok in
            [(-0.09, False), (-0.05, False), (-0.02, True), (0.03, True), (0.06, True), (0.08, True)]]
    split = rl_trace.split_by_x(rows)
    assert split["median_x"] == pytest.approx(0.005)
    assert split["left"] == {"episodes": 3, "success_rate": pytest.approx(1 / 3)}
    assert split["right"] == {"episodes": 3, "success_rate": 1.0} and split["by"] == "object_start"
    for r, gx in zip(rows, [0.1, 0.2, 0.3, -0.1, -0.2, -0.3]):
        r["goal"] = [gx, 0.8, 0.2]
    by_goal = rl_trace.split_by_x(rows, "goal")
    assert by_goal["median_x"] == pytest.approx(0.0) and by_goal["by"] == "goal"
    assert by_goal["left"] == {"episodes": 3, "success_rate": 1.0}
    assert by_goal["right"] == {"episodes": 3, "success_rate": pytest.approx(1 / 3)}
    same_x = rl_trace.split_by_x([{"object_start": [0.05, 0.7, 0.1], "success": True}] * 2)
    assert same_x["left"] == {"episodes": 0, "success_rate": None}  # no side below the median: no rate


def test_traces_one_row_per_episode_with_start_goal_and_end():
    pytest.importorskip("metaworld")
    from hetero.models.vla import VLAConfig, VLAPolicy
    from hetero.rl.envs.metaworld import MetaWorldConfig
    from hetero.rl.policy import SamplerConfig

    torch.manual_seed(0)
    model = VLAPolicy(VLAConfig.preset("cpu", state_dim=39, action_dim=4, horizon=5, text="learned"))
    env_cfg = MetaWorldConfig(tasks="MT1:reach-v3", max_episode_steps=12, variation_seed=1)
    rows = rl_trace.trace_episodes(model, env_cfg, "reach-v3", episodes=2, seed=7,
                                   sampler=SamplerConfig(method="flow_sde", num_steps=2, chunk=5))
    assert [r["episode"] for r in rows] == [0, 1]
    for r in rows:
        assert 1 <= r["steps"] <= 12 and isinstance(r["success"], bool)
        assert len(r["object_start"]) == len(r["goal"]) == len(r["tcp_end"]) == len(r["object_end"]) == 3
    assert rows[0]["goal"] != rows[1]["goal"]  # each slot draws its own variation
