"""The RL example configs load and bad values name their key: python -m pytest -q tests/test_rl_config.py"""

import pytest

from hetero.config import ConfigError, build
from hetero.rl.config import RLConfig, load_config

CONFIGS = ["metaworld_mt10_flow_sde", "metaworld_mt10_flow_noise", "metaworld_mt10_grpo",
           "metaworld_mt1_button_flow_sde", "libero_spatial_flow_sde", "maniskill_pickcube_flow_noise"]


@pytest.mark.parametrize("name", CONFIGS)
def test_example_configs_load(name):
    cfg = load_config(f"examples/rl/{name}.yaml")
    assert cfg.sampler.chunk <= cfg.policy.horizon
    assert cfg.algo.name in name or cfg.algo.name == "ppo"


def test_overrides_and_errors_name_the_key():
    cfg = load_config("examples/rl/metaworld_mt10_flow_sde.yaml", ["train.iterations=3", "sampler.method=flow_noise"])
    assert cfg.train.iterations == 3 and cfg.sampler.method == "flow_noise"
    with pytest.raises(ConfigError, match=r"^algo\.clip: must be > 0"):
        build(RLConfig, {"algo": {"clip": 0}})
    with pytest.raises(ConfigError, match=r"^sampler\.method: must be one of"):
        build(RLConfig, {"sampler": {"method": "flow_xyz"}})
    with pytest.raises(ConfigError, match=r"^train\.nope: unknown key"):
        build(RLConfig, {"train": {"nope": 1}})
    with pytest.raises(ConfigError, match=r"^sampler\.chunk: must be <= policy\.horizon"):
        build(RLConfig, {"sampler": {"chunk": 8}, "policy": {"horizon": 5}})
    with pytest.raises(ConfigError, match=r"^env\.group_size"):
        build(RLConfig, {"algo": {"name": "grpo", "group_size": 4}, "env": {"num_envs": 8}})
    with pytest.raises(ConfigError, match="file not found"):
        load_config("examples/rl/missing.yaml")


def test_per_task_demo_counts_override_and_unknown_tasks_are_named():
    from hetero.rl.sft import demo_counts

    cfg = load_config("examples/rl/metaworld_mt10_flow_sde.yaml", ["sft.task_demos={reach-v3: 4, push-v3: 2}"])
    counts = demo_counts(cfg)
    assert len(counts) == 10 and counts["reach-v3"] == 4 and counts["push-v3"] == 2
    assert counts["button-press-topdown-v3"] == cfg.sft.demos_per_task == 1
    bad = load_config("examples/rl/metaworld_mt10_flow_sde.yaml", ["sft.task_demos={reach-v9: 4}"])
    with pytest.raises(ConfigError, match=r"^sft\.task_demos: names \['reach-v9'\]"):
        demo_counts(bad)
    with pytest.raises(ConfigError, match=r"^sft\.task_demos\.reach-v3: must be >= 1"):
        build(RLConfig, {"sft": {"task_demos": {"reach-v3": 0}}})


def test_rl_options_apply_the_noise_bounds_to_a_loaded_model_and_bad_bounds_are_named():
    import torch

    from hetero.models.vla import VLAConfig, VLAPolicy
    from hetero.rl import flow

    sft = VLAPolicy(VLAConfig.preset("cpu", state_dim=6, action_dim=4, horizon=5, text="learned"))
    assert (sft.cfg.noise_min_std, sft.cfg.noise_max_std) == (0.08, 0.16)
    cfg = load_config("examples/rl/metaworld_mt10_flow_noise.yaml",
                      ["policy.noise_min_std=0.12", "policy.noise_max_std=0.24", "policy.detach_critic_input=false",
                       "policy.noise_detach=false"])
    sft.cfg = cfg.policy.rl_options(sft.cfg)
    assert (sft.cfg.noise_min_std, sft.cfg.noise_max_std, sft.cfg.detach_critic_input) == (0.12, 0.24, False)
    feats = torch.randn(3, 5, sft.cfg.d_model, generator=torch.Generator().manual_seed(0))
    std = sft.noise_std(feats)  # [3, 5, A]
    assert torch.equal(std, flow.bounded_std(sft.noise_head(feats), 0.12, 0.24))
    assert 0.12 - 1e-6 <= float(std.min().detach()) and float(std.max().detach()) <= 0.24 + 1e-6
    feats.requires_grad_(True)
    sft.noise_std(feats).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0  # piRL: std gradients reach the expert
    feats.grad = None
    sft.cfg = load_config("examples/rl/metaworld_mt10_flow_noise.yaml", ["policy.noise_detach=true"]).policy.rl_options(
        sft.cfg)
    sft.noise_std(feats).sum().backward()
    assert feats.grad is None and sft.noise_head[0].weight.grad is not None  # the head still learns
    with pytest.raises(ConfigError, match=r"^policy\.noise_min_std: must satisfy 0 < noise_min_std < noise_max_std"):
        build(RLConfig, {"policy": {"noise_min_std": 0.2, "noise_max_std": 0.1}})


def test_load_checkpoint_applies_the_rl_policy_options_and_keeps_the_weights(tmp_path):
    import torch

    from hetero.models.vla import VLAConfig, VLAPolicy
    from hetero.rl.policy import load_checkpoint, save_checkpoint

    sft = VLAPolicy(VLAConfig.preset("cpu", state_dim=6, action_dim=4, horizon=5, text="learned"))
    save_checkpoint(tmp_path / "sft.pt", model=sft)
    plain, _ = load_checkpoint(tmp_path / "sft.pt")
    assert plain.cfg == sft.cfg  # without policy=, the checkpoint's own choices
    policy = load_config("examples/rl/metaworld_mt10_flow_noise.yaml").policy
    rl, ck = load_checkpoint(tmp_path / "sft.pt", policy=policy)
    assert (rl.cfg.noise_min_std, rl.cfg.noise_max_std, rl.cfg.noise_detach, rl.cfg.detach_critic_input) == (
        policy.noise_min_std, policy.noise_max_std, policy.noise_detach, policy.detach_critic_input)
    assert (rl.cfg.noise_min_std, rl.cfg.noise_detach) != (sft.cfg.noise_min_std, sft.cfg.noise_detach)
    assert all(torch.equal(a, b) for a, b in zip(rl.state_dict().values(), sft.state_dict().values(), strict=True))
    assert set(ck) == {"vla_config", "model"}
