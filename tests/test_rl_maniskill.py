"""Tests of the ManiSkill3 env (CPU PhysX, state observations): python -m pytest -q tests/test_rl_maniskill.py

The config tests run everywhere; the env tests are skipped with a reason when ManiSkill is not installed
(``tools/install_maniskill.sh``: pip install "hetero[maniskill]" plus a Vulkan device). About 30 s on two cores."""

import sys

import numpy as np
import pytest

from hetero.config import ConfigError, build
from hetero.rl.envs.maniskill import STATE_DIM, ManiSkillConfig, instruction, resolve_tasks


@pytest.fixture(scope="module")
def maniskill():
    return pytest.importorskip("mani_skill", reason='ManiSkill not installed: tools/install_maniskill.sh '
                                                    '(pip install "hetero[maniskill]" + Vulkan)')


def test_unknown_task_lists_the_valid_ones_and_config_sizes_the_policy():
    assert resolve_tasks("PickCube-v1") == ["PickCube-v1"]
    with pytest.raises(ConfigError, match=r"^tasks: unknown ManiSkill task 'PickCub-v1'; valid tasks: PickCube-v1, "
                                          r"PushCube-v1, StackCube-v1$"):
        ManiSkillConfig(tasks="PickCub-v1")
    with pytest.raises(ConfigError, match=r"^tasks\[1\]: unknown ManiSkill task 'Nope-v1'; valid tasks: PickCube"):
        ManiSkillConfig(tasks=["PushCube-v1", "Nope-v1"])
    with pytest.raises(ConfigError, match=r"^group_size: must be >= 1 and divide num_envs=8"):
        ManiSkillConfig(group_size=3)
    cfg = ManiSkillConfig(tasks=["PushCube-v1", "PickCube-v1"])
    assert cfg.state_dim == 42 and cfg.action_dim == 8 and cfg.max_episode_steps == 50
    assert ManiSkillConfig(tasks="PushCube-v1", control_mode="pd_ee_delta_pose").action_dim == 7
    assert instruction("PickCube-v1") == "pick up the cube and move it to the goal"

    from hetero.rl.config import RLConfig, load_config
    from hetero.rl.sft import build_model

    rl = load_config("examples/rl/maniskill_pickcube_flow_noise.yaml")  # loads without ManiSkill installed
    assert rl.benchmark == "maniskill" and isinstance(rl.env, ManiSkillConfig) and rl.sampler.method == "flow_noise"
    model = build_model(rl, state_dim=rl.env.state_dim, action_dim=rl.env.action_dim)
    assert (model.cfg.state_dim, model.cfg.action_dim, model.cfg.num_cameras) == (42, 8, 0)
    with pytest.raises(ConfigError, match=r"^env\.tasks\[0\]: unknown ManiSkill task"):
        build(RLConfig, {"benchmark": "maniskill", "env": {"tasks": ["pick-place-v3"]}})
    with pytest.raises(ConfigError, match=r"^env\.control_mode: must be one of"):
        build(RLConfig, {"benchmark": "maniskill", "env": {"control_mode": "pd_joint_pos"}})


def test_missing_package_says_how_to_install(monkeypatch):
    from hetero.rl.envs import maniskill as ms

    monkeypatch.setitem(sys.modules, "mani_skill", None)
    monkeypatch.setitem(sys.modules, "mani_skill.envs", None)
    with pytest.raises(ImportError, match=r'pip install "hetero\[maniskill\]".*tools/install_maniskill\.sh'):
        ms.make_vec_env(ManiSkillConfig(num_envs=2))


def test_vec_env_chunks_determinism_and_crash_restart(maniskill):
    from hetero.rl.envs.maniskill import make_vec_env

    cfg = ManiSkillConfig(tasks=["PickCube-v1", "PushCube-v1"], num_envs=2, num_workers=2, max_episode_steps=12)
    env = make_vec_env(cfg)
    try:
        obs = env.reset(seed=3)
        assert obs["state"].shape == (2, 42) and obs["state"].dtype == np.float32 and "images" not in obs
        assert env.task_names == ["PickCube-v1", "PushCube-v1"]
        assert obs["instruction"] == ["pick up the cube and move it to the goal", "push the cube to the goal region"]
        assert (obs["state"][1, STATE_DIM["PushCube-v1"]:] == 0).all()  # PushCube's 35 values zero-padded to 42
        actions = np.random.default_rng(0).uniform(-1, 1, (3, 2, 5, 8))
        r1 = env.chunk_step(actions[0])
        assert r1.env_steps == 10 and r1.reward.shape == (2,) and not r1.done.any() and not r1.success.any()
        assert not np.array_equal(r1.obs["state"], obs["state"])
        env.chunk_step(actions[1])
        r3 = env.chunk_step(actions[2])  # steps 11-12 of 12: time limit inside the chunk
        assert r3.done.all() and r3.truncated.all() and r3.env_steps == 4
        assert [e["length"] for e in r3.episodes] == [12, 12] and all(e["return"] == 0 for e in r3.episodes)
        assert not np.array_equal(r3.obs["state"], r3.final_obs["state"])  # auto-reset: a new episode's obs
        # same seed + same actions -> bit-identical states; another seed gives other initial states
        assert np.array_equal(env.reset(seed=3)["state"], obs["state"])
        for a in actions[:2]:
            env.chunk_step(a)
        assert np.array_equal(env.chunk_step(actions[2]).final_obs["state"], r3.final_obs["state"])
        assert not np.array_equal(env.reset(seed=4)["state"], obs["state"])
        # a crashed worker is restarted; its env's episode is discarded, not counted
        env.crash_worker_for_test(0)
        r = env.chunk_step(actions[0])
        assert env.restarts == 1 and r.discarded.tolist() == [True, False] and r.done.tolist() == [True, False]
        assert r.episodes == []
        for a in actions[1:]:
            r = env.chunk_step(a)
        assert [e["env"] for e in r.episodes] == [1]  # only the surviving env finishes an episode at step 12
        assert r.obs["state"].shape == (2, 42)
    finally:
        env.close()


def test_planner_demos_convert_to_joint_deltas_and_replay_to_success(maniskill):
    from hetero.rl.envs.maniskill import ManiSkillSlice, collect_demos, replay_demos

    cfg = ManiSkillConfig(tasks=["PickCube-v1", "PushCube-v1"], reward="dense")
    demos = collect_demos(cfg, per_task=2, seed=0)
    assert [d["task"] for d in demos] == ["PickCube-v1"] * 2 + ["PushCube-v1"] * 2
    for d in demos:
        T = len(d["actions"])
        assert d["states"].shape == (T, 42) and d["actions"].shape == (T, 8) and d["actions"].dtype == np.float32
        assert T <= cfg.max_episode_steps < d["plan_steps"]  # retimed: faster than the planner's own timing
        assert np.abs(d["actions"]).max() <= 1.0 and set(np.unique(d["actions"][:, 7])) <= {-1.0, 1.0}
    assert replay_demos(cfg, demos) == [True] * 4  # open-loop replay from the seed: same states, success
    # the success step ends the episode; dense returns stay within (0, 1], sparse pays 1 once
    for reward in ("dense", "sparse"):
        one = ManiSkillConfig(tasks=["PickCube-v1"], reward=reward)
        sl = ManiSkillSlice(one, [0], seed=0)
        try:
            sl.reset_seeded(0, demos[0]["seed"])
            rewards, ends = [], []
            for a in demos[0]["actions"]:
                _, r, term, trunc, success = sl.step_one(0, a)
                rewards.append(r)
                ends.append((term, trunc, success))
            assert ends[-1] == (True, False, True) and not any(e[0] for e in ends[:-1])
            if reward == "sparse":
                assert rewards == [0.0] * (len(rewards) - 1) + [1.0]
            else:
                assert 0 < sum(rewards) <= 1.0 + 1e-6 and rewards[-1] > rewards[-2]
        finally:
            sl.close()
