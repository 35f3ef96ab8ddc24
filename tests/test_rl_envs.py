"""Tests of the chunk-stepping vector env and Meta-World: python -m pytest -q tests/test_rl_envs.py

Skipped with a reason when metaworld is not installed (``pip install -e .[rl]``)."""

import numpy as np
import pytest

from hetero.config import ConfigError

metaworld = pytest.importorskip("metaworld", reason="metaworld not installed: pip install -e .[rl]")

from hetero.rl.envs.metaworld import MetaWorldConfig, collect_demos, instruction, make_vec_env, resolve_tasks  # noqa: E402


def test_task_names_resolve_and_unknown_lists_valid():
    assert len(resolve_tasks("MT10")) == 10 and len(resolve_tasks("MT50")) == 50
    assert resolve_tasks("MT1:reach-v3") == ["reach-v3"]
    with pytest.raises(ConfigError, match="unknown Meta-World task 'reach-v9'.*pick-place-v3"):
        resolve_tasks("MT1:reach-v9")
    with pytest.raises(ConfigError, match=r"tasks\[1\]"):
        resolve_tasks(["reach-v3", "nope"])
    with pytest.raises(ConfigError, match="unknown benchmark"):
        resolve_tasks("MT7")
    assert instruction("pick-place-v3") == "pick up the puck and place it at the goal"
    assert instruction("hammer-v3") == "hammer"


def test_vec_env_chunks_autoreset_seeds_and_crash_restart():
    cfg = MetaWorldConfig(tasks=["reach-v3", "drawer-close-v3"], num_envs=4, num_workers=2, max_episode_steps=12)
    env = make_vec_env(cfg)
    try:
        obs = env.reset(seed=3)
        assert obs["state"].shape == (4, 39) and obs["state"].dtype == np.float32
        assert env.task_names == ["reach-v3", "drawer-close-v3", "reach-v3", "drawer-close-v3"]
        assert obs["instruction"][1] == "close the drawer"
        zeros = np.zeros((4, 5, 4))
        r1 = env.chunk_step(zeros)
        assert r1.env_steps == 20 and r1.reward.shape == (4,) and not r1.done.any()
        env.chunk_step(zeros)
        r3 = env.chunk_step(zeros)  # steps 11-12 of 12: time limit inside the chunk
        assert r3.done.all() and r3.truncated.all() and r3.env_steps == 8
        assert len(r3.episodes) == 4 and all(e["length"] == 12 for e in r3.episodes)
        # same seed -> same episodes; another seed -> other variations
        a = env.reset(seed=3)["state"]
        b = env.reset(seed=3)["state"]
        c = env.reset(seed=4)["state"]
        assert np.array_equal(a, obs["state"]) and np.array_equal(a, b) and not np.array_equal(a, c)
        with pytest.raises(ValueError, match="actions must be"):
            env.chunk_step(np.zeros((3, 5, 4)))
        # a crashed worker is restarted; its envs' episodes are discarded, not counted
        env.crash_worker_for_test(0)
        r = env.chunk_step(zeros)
        assert env.restarts == 1
        assert r.discarded.tolist() == [True, False, True, False] and r.done[[0, 2]].all()
        assert all(e["env"] in (1, 3) for e in r.episodes)
        r = env.chunk_step(zeros)
        assert not r.discarded.any() and r.obs["state"].shape == (4, 39)
        # the step split in two (start the simulators, collect later) gives the same result as one call
        env.reset(seed=5)
        moves = np.random.default_rng(0).uniform(-1, 1, (4, 5, 4))
        whole = env.chunk_step(moves)
        env.reset(seed=5)
        env.chunk_step_async(moves)
        with pytest.raises(RuntimeError, match="step in flight"):
            env.chunk_step_async(moves)
        split = env.chunk_step_wait()
        assert np.array_equal(split.obs["state"], whole.obs["state"]) and np.array_equal(split.reward, whole.reward)
        with pytest.raises(RuntimeError, match="no step in flight"):
            env.chunk_step_wait()
    finally:
        env.close()


def test_scripted_expert_demos_succeed():
    demos = collect_demos(MetaWorldConfig(tasks="MT1:drawer-close-v3", max_episode_steps=150), per_task=2, seed=0)
    assert len(demos) == 2
    for d in demos:
        assert d["states"].shape[1] == 39 and d["actions"].shape[1] == 4
        assert len(d["states"]) == len(d["actions"]) < 150
        assert np.abs(d["actions"]).max() <= 1.0
    counts = {"drawer-close-v3": 1, "button-press-v3": 2}
    demos = collect_demos(MetaWorldConfig(tasks=list(counts), max_episode_steps=150), per_task=counts, seed=0)
    assert [d["task"] for d in demos] == ["drawer-close-v3", "button-press-v3", "button-press-v3"]


def test_dense_reward_pays_the_rest_of_the_episode_at_success():
    from metaworld.policies import ENV_POLICY_MAP

    from hetero.rl.envs.metaworld import MetaWorldSlice

    cfg = MetaWorldConfig(tasks="MT1:drawer-close-v3", num_envs=1, max_episode_steps=150, reward="dense")
    sl = MetaWorldSlice(cfg, [0], 0)
    expert = ENV_POLICY_MAP["drawer-close-v3"]()
    o = sl.reset_one(0)
    total = 0.0
    for _ in range(150):
        o, r, term, trunc, success = sl.step_one(0, expert.get_action(o["state"].astype(np.float64)))
        total += r
        if term:
            break
        assert 0.0 <= r <= 1.0 / 150 + 1e-9  # shaped reward / (10 x max_episode_steps)
    assert success and term and not trunc
    bonus = (150 - sl.steps[0]) / 150  # the share of the episode left
    assert bonus <= r <= bonus + 1.0 / 150 + 1e-9 and 0.0 < total <= 1.0 + 1e-9
    sl.close()


def test_evaluate_counts_its_episodes_per_task_and_refuses_a_short_count():
    import torch

    from hetero.models.vla import VLAConfig, VLAPolicy
    from hetero.rl.eval import evaluate
    from hetero.rl.policy import SamplerConfig

    torch.manual_seed(0)
    model = VLAPolicy(VLAConfig.preset("cpu", state_dim=39, action_dim=4, horizon=5, text="learned"))
    cfg = MetaWorldConfig(tasks=["reach-v3", "drawer-close-v3"], num_envs=4, num_workers=1, max_episode_steps=10)
    env = make_vec_env(cfg)
    try:
        sampler = SamplerConfig(method="flow_sde", num_steps=2, chunk=5)
        res = evaluate(model, env, sampler, episodes=3, seed=0)  # 2 chunk steps per episode
        assert res["episodes"] == 6 and sorted(res["per_task"]) == ["drawer-close-v3", "reach-v3"]
        assert res["length"] == 10 and 0.0 <= res["success_rate"] <= 1.0
        lo, hi = res["success_ci95"]
        assert lo <= res["success_rate"] <= hi and hi - lo > 0.3  # 6 episodes say little
        with pytest.raises(RuntimeError, match="0 of 6 episodes finished"):
            evaluate(model, env, sampler, episodes=3, seed=0, max_chunks=1)
    finally:
        env.close()


def test_wilson_interval_matches_hand_worked_values():
    from hetero.rl.eval import wilson_interval

    lo, hi = wilson_interval(85, 100)  # centre (0.85 + 1.96^2/200) / (1 + 1.96^2/100) = 0.8371, half-width 0.0699
    assert lo == pytest.approx(0.7672, abs=1e-4) and hi == pytest.approx(0.9069, abs=1e-4)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    w200, w1000 = wilson_interval(170, 200), wilson_interval(850, 1000)
    assert w1000[1] - w1000[0] < 0.5 * (w200[1] - w200[0])  # ~1/sqrt(5) as wide
    with pytest.raises(ValueError, match="3 of 2"):
        wilson_interval(3, 2)


class _Conn:
    """A pipe end whose poll advances a fake clock: by ``t`` per poll (a silent worker), or by ``jump`` once (the
    process suspended for that long during the poll) before the message arrives."""

    def __init__(self, clock, jump=None):
        self.clock, self.jump, self.polls = clock, jump, 0

    def poll(self, t):
        self.polls += 1
        if self.jump is not None:
            if self.polls == 1:
                self.clock[0] += self.jump
                return False
            return True
        self.clock[0] += t
        return False

    def recv(self):
        return ("ok", "data")


def test_worker_timeout_ignores_time_suspended_but_not_a_silent_worker(monkeypatch):
    from hetero.rl.envs import base

    clock = [0.0]
    monkeypatch.setattr(base.time, "monotonic", lambda: clock[0])
    env = base.ChunkVecEnv.__new__(base.ChunkVecEnv)
    env.timeout_s = 12.0
    env.conns = [_Conn(clock, jump=3600.0)]  # suspended for an hour, then the answer is there
    assert env._recv(0, poll_s=5.0) == "data"
    env.conns = [_Conn(clock)]  # never answers: 5 + 5 + 2 s of polls
    with pytest.raises(TimeoutError, match="env worker 0 did not answer in 12.0 s"):
        env._recv(0, poll_s=5.0)
    assert env.conns[0].polls == 3
