"""Tests of the RL role plan and the profiling-guided scheduler: python -m pytest -q tests/test_rlsys_scheduler.py"""

import random

import pytest

from hetero.autoparallel.plan import Plan
from hetero.autoparallel.roles import RolePlan
from hetero.config import ConfigError, to_dict
from hetero.rl import scheduler as S


def _cfg(pools, profiles, *, num_envs=8, T=3, k_choices=(1, 2, 4), xfer=(0.0, 0.0), modes=None):
    d = {"devices": pools, "workload": {"num_envs": num_envs, "rollout_chunks": T,
                                         "transfer": {"fixed_s": xfer[0], "per_item_s": xfer[1]}},
         "profiles": profiles, "k_choices": list(k_choices)}
    if modes:
        d["modes"] = modes
    return S.build(S.SchedulerConfig, d)


def _prof(e, r, a, switch=0.0, sync=0.0, env_fixed=0.0, roll_fixed=0.0):
    return {"env": None if e is None else {"fixed_s": env_fixed, "per_item_s": e},
            "rollout": {"fixed_s": roll_fixed, "per_item_s": r}, "actor": {"per_item_s": a},
            "switch_s": switch, "sync_s": sync}


def test_role_plan_validation_names_the_problem():
    ok = {"mode": "disaggregated", "num_envs": 8, "k": 2, "env": {"ranks": [0]}, "rollout": {"ranks": [1]},
          "actor": {"ranks": [2]}}
    rp = RolePlan.from_dict(ok)
    assert rp.roles_of(1) == ["rollout"] and rp.micro_batch == 4 and list(rp.slots(1)) == [4, 5, 6, 7]
    with pytest.raises(ConfigError, match="roles.mode: disaggregated needs disjoint"):
        RolePlan.from_dict({**ok, "actor": {"ranks": [1]}})
    with pytest.raises(ConfigError, match="roles.k: num_envs 8 is not divisible by k 3"):
        RolePlan.from_dict({**ok, "k": 3})
    with pytest.raises(ConfigError, match="roles.mode: collocated needs"):
        RolePlan.from_dict({**ok, "mode": "collocated"})
    with pytest.raises(ConfigError, match="roles.env.devices: has 2 entries"):
        RolePlan.from_dict({**ok, "env": {"ranks": [0], "devices": ["cpu", "cpu"]}})
    with pytest.raises(ConfigError, match="roles.bogus: unknown key"):
        RolePlan.from_dict({**ok, "bogus": 1})
    with pytest.raises(ConfigError, match="roles: roles use ranks"):
        rp.validate(world_size=4)


def test_plan_with_roles_round_trips(tmp_path):
    cfg = _cfg([{"type": "cpu", "count": 3}], {"cpu": _prof(0.01, 0.004, 0.001, switch=0.01)})
    best, runner = S.schedule(cfg)
    plan = S.to_plan(best, samples=24)
    for name in ("p.yaml", "p.json"):
        plan.to_file(tmp_path / name)
        back = Plan.from_file(tmp_path / name)
        assert back.to_dict() == plan.to_dict() and back.roles == best
    assert Plan.from_dict({k: v for k, v in plan.to_dict().items() if k != "roles"}).roles is None


def test_rl_plan_world_size_counts_every_role_rank():
    rp = RolePlan.from_dict({"mode": "disaggregated", "num_envs": 8, "k": 2, "env": {"ranks": [0]},
                             "rollout": {"ranks": [1]}, "actor": {"ranks": [2, 3]}})
    plan = S.to_plan(rp, samples=24)
    assert plan.world_size == 4 and sorted(plan.rank_map()) == [2, 3]  # stages hold the actor ranks only
    plan.validate(world_size=4)
    with pytest.raises(ConfigError, match="roles: roles use ranks"):
        plan.validate(world_size=5)


def test_collocated_is_the_sum_of_role_times_plus_switches():
    # one rank does everything: T steps of (sample + env) on 8 envs, one bootstrap forward, update, switch
    cfg = _cfg([{"type": "cpu", "count": 1}], {"cpu": _prof(0.01, 0.002, 0.001, switch=0.05, roll_fixed=0.003)},
               k_choices=[1])
    best, runner = S.schedule(cfg)
    assert best.mode == "collocated" and runner is None
    p = best.predicted
    r, e = 0.003 + 0.002 * 8, 0.01 * 8
    assert p.rollout_s == pytest.approx(3 * (r + e) + r)
    assert p.train_s == pytest.approx(0.001 * 24) and p.switch_s == 0.05 and p.sync_s == 0.0
    assert p.iteration_s == pytest.approx(3 * (r + e) + r + 0.024 + 0.05)


def test_env_bound_pipeline_is_warmup_plus_bottleneck_times_microbatches():
    cfg = _cfg([{"type": "cpu", "count": 3}], {"cpu": _prof(0.01, 0.002, 0.001)}, k_choices=[1, 2, 4])
    for k in (2, 4):
        rp = RolePlan.from_dict({"mode": "disaggregated", "num_envs": 8, "k": k, "env": {"ranks": [0]},
                                 "rollout": {"ranks": [1]}, "actor": {"ranks": [2]}})
        p = S.predict(rp, cfg)
        m = 8 // k
        r, e = 0.002 * m, 0.01 * m
        # warm-up (first inference) + env bottleneck x (T x k micro-batch steps) + last bootstrap forward
        assert p.rollout_s == pytest.approx(r + 3 * k * e + r)
    seq = S.predict(RolePlan.from_dict({"mode": "disaggregated", "num_envs": 8, "k": 1, "env": {"ranks": [0]},
                                        "rollout": {"ranks": [1]}, "actor": {"ranks": [2]}}), cfg)
    assert seq.rollout_s == pytest.approx(3 * (0.016 + 0.08) + 0.016)


def test_an_accelerator_rank_with_two_microbatches_overlaps_inference_with_simulation():
    # one rank, both roles, k=2 micro-batches of 4 envs: on a GPU rank inference on one micro-batch runs while
    # the other simulates on the host; on a CPU rank both take the same cores and add up
    prof = {"cpu": _prof(0.01, 0.002, 0.001, roll_fixed=0.003)}
    gpu = _cfg([{"type": "cpu", "count": 1, "device": "cuda"}], prof, k_choices=[2])
    cpu = _cfg([{"type": "cpu", "count": 1}], prof, k_choices=[2])
    rp = RolePlan.from_dict({"mode": "collocated", "num_envs": 8, "k": 2, "env": {"ranks": [0]},
                             "rollout": {"ranks": [0]}, "actor": {"ranks": [0]}})
    r, e = 0.003 + 0.002 * 4, 0.01 * 4  # env-bound: the simulators are busy from the first actions on
    # warm-up R(0); then the simulators back to back: T steps x 2 micro-batches; then the last bootstrap of
    # micro-batch 1 (that of micro-batch 0 runs while micro-batch 1 simulates)
    assert S.predict(rp, gpu).rollout_s == pytest.approx(r + 3 * 2 * e + r)
    assert S.predict(rp, cpu).rollout_s == pytest.approx(3 * 2 * (r + e) + 2 * r)
    one = RolePlan.from_dict({**rp.to_dict(), "k": 1})
    assert S.predict(one, gpu).rollout_s == pytest.approx(3 * (0.003 + 0.016 + 0.08) + 0.019)  # one: no overlap


def test_measured_microbatch_costs_make_side_by_side_ranks_wait_for_the_slowest():
    # 8 envs in 2 micro-batches of 4; micro-batch 1 (slots 4-7) is 3x as costly as micro-batch 0
    prof = {**_prof(0.01, 0.002, 0.001), "env_microbatch": {4: [0.02, 0.06]}}
    cfg = _cfg([{"type": "cpu", "count": 2}], {"cpu": prof}, k_choices=[2])
    col = RolePlan.from_dict({"mode": "collocated", "num_envs": 8, "k": 2, "env": {"ranks": [0, 1]},
                              "rollout": {"ranks": [0, 1]}, "actor": {"ranks": [0, 1]}})
    r = 0.002 * 4
    # each rank steps its own micro-batch: the phase ends with the slow one (3 chunk-steps + bootstrap)
    assert S.predict(col, cfg).rollout_s == pytest.approx(3 * (r + 0.06) + r)
    # without the measured figures both cost env(4) = 0.04
    plain = _cfg([{"type": "cpu", "count": 2}], {"cpu": _prof(0.01, 0.002, 0.001)}, k_choices=[2])
    assert S.predict(col, plain).rollout_s == pytest.approx(3 * (r + 0.04) + r)
    # sizes without measured figures (k=1: 8 slots) fall back to env(n)
    one = RolePlan.from_dict({"mode": "collocated", "num_envs": 8, "k": 1, "env": {"ranks": [0, 1]},
                              "rollout": {"ranks": [0, 1]}, "actor": {"ranks": [0, 1]}})
    assert S.predict(one, cfg).rollout_s == pytest.approx(S.predict(one, plain).rollout_s)
    with pytest.raises(ConfigError, match="env_microbatch: keys must be micro-batch sizes"):
        _cfg([{"type": "cpu", "count": 2}], {"cpu": {**prof, "env_microbatch": {4: [-1.0]}}}, k_choices=[2])


def _random_case(rng):
    types = ["slow", "fast"]
    pools = [{"type": "slow", "count": rng.randint(1, 3)}, {"type": "fast", "count": rng.randint(1, 2)}]
    profiles = {}
    for t in types:
        profiles[t] = _prof(None if (t == "fast" and rng.random() < 0.5) else rng.uniform(1e-3, 2e-2),
                            rng.uniform(1e-4, 1e-2), rng.uniform(1e-4, 3e-3), switch=rng.uniform(0, 0.2),
                            sync=rng.uniform(0, 0.05), env_fixed=rng.uniform(0, 5e-3),
                            roll_fixed=rng.uniform(0, 5e-3))
    return _cfg(pools, profiles, num_envs=8, T=rng.randint(1, 4), k_choices=[1, 2, 4, 8],
                xfer=(rng.uniform(0, 2e-3), rng.uniform(0, 1e-4)))


@pytest.mark.parametrize("seed", range(12))
def test_search_matches_exhaustive_search_on_synthetic_profiles(seed):
    cfg = _random_case(random.Random(seed))
    best = S.search(cfg, top=2)
    ex = S.exhaustive(cfg)
    assert best[0].time_s == pytest.approx(ex.time_s, rel=1e-12)
    assert best[0].time_s <= best[-1].time_s
    # the chosen plan really has the predicted time and its mode matches its structure
    rp = best[0].plan
    assert S.predict(rp, cfg).iteration_s == pytest.approx(best[0].time_s)
    assert S.classify(rp.env.ranks, rp.rollout.ranks, rp.actor.ranks) == rp.mode


def test_scheduler_prefers_pipelining_when_env_bound_and_collocation_when_switching_is_free():
    env_bound = _cfg([{"type": "cpu", "count": 3}], {"cpu": _prof(0.02, 0.01, 0.0005, switch=0.05, sync=0.001)})
    best, _ = S.schedule(env_bound)
    assert best.mode in ("disaggregated", "hybrid") and best.k > 1
    one_dev = _cfg([{"type": "gpu", "count": 1}, {"type": "cpu", "count": 1}],
                   {"gpu": _prof(None, 0.0001, 0.0001), "cpu": _prof(0.001, 0.05, 0.05)}, modes=["hybrid"])
    best, _ = S.schedule(one_dev)
    assert best.mode == "hybrid" and best.env.device_types == ["cpu"] and best.actor.device_types == ["gpu"]


def test_bad_config_errors_name_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("devices: [{type: tpu, count: 2}]\nworkload: {num_envs: 8, rollout_chunks: 2}\n"
                 "profiles: {cpu: {rollout: {per_item_s: 1}, actor: {per_item_s: 1}}}\n")
    with pytest.raises(ConfigError, match=r"devices\[0\].type: 'tpu' has no profile"):
        S.load_config(str(p))
    assert S.main(["--rl", str(p)]) == 2


def test_cli_prints_choice_and_runner_up(tmp_path, capsys):
    assert S.main(["--rl", "examples/rl/system_cpu3.yaml", "-o", str(tmp_path / "plan.yaml")]) == 0
    out = capsys.readouterr().out
    assert "chosen:" in out and "runner-up:" in out and "predicted iteration" in out
    assert Plan.from_file(tmp_path / "plan.yaml").roles is not None


def test_shared_host_cores_bound_the_phases():
    prof = {"cpu": _prof(0.01, 0.005, 0.001)}
    col = RolePlan.from_dict({"mode": "collocated", "num_envs": 8, "k": 4, "env": {"ranks": [0, 1, 2, 3]},
                              "rollout": {"ranks": [0, 1, 2, 3]}, "actor": {"ranks": [0, 1, 2, 3]}})
    free = S.predict(col, _cfg([{"type": "cpu", "count": 4}], prof))
    shared = S.build(S.SchedulerConfig, {**to_dict(_cfg([{"type": "cpu", "count": 4}], prof)), "host_cores": 2})
    p = S.predict(col, shared)
    work = 3 * 4 * (0.01 * 2 + 0.005 * 2)  # T x k micro-batch steps of env + inference, all on the host
    assert p.rollout_s == pytest.approx(max(free.rollout_s, work / 2))
    assert p.rollout_s > free.rollout_s and p.train_s == pytest.approx(4 * 0.001 * 6 / 2)


def test_update_steps_and_link_price_the_update_and_weight_sync():
    from hetero.cluster.spec import Link
    from hetero.predictor.comm import allreduce_time, broadcast_time

    link = {"fabric": "eth", "bandwidth": 1e9, "latency": 1e-4}
    d = {"devices": [{"type": "cpu", "count": 4}],
         "workload": {"num_envs": 8, "rollout_chunks": 3, "update_steps": 4, "grad_bytes": 4e6, "weight_bytes": 8e6},
         "profiles": {"cpu": {"env": {"per_item_s": 0.01}, "rollout": {"per_item_s": 0.002},
                              "actor": {"fixed_s": 0.05, "per_item_s": 0.001}, "sync_s": 0.003}},
         "link": link}
    cfg = S.build(S.SchedulerConfig, d)
    L = Link(**link)
    col = RolePlan.from_dict({"mode": "collocated", "num_envs": 8, "k": 4, "env": {"ranks": [0, 1, 2, 3]},
                              "rollout": {"ranks": [0, 1, 2, 3]}, "actor": {"ranks": [0, 1, 2, 3]}})
    p = S.predict(col, cfg)
    # every actor rank takes all 4 optimizer steps on a quarter of the 24 samples, and all-reduces each step
    steps = 4 * (allreduce_time(4e6, 4, L) + allreduce_time(40, 4, L))
    assert p.train_s == pytest.approx(4 * 0.05 + 0.001 * 6 + steps)
    assert p.sync_s == pytest.approx(0.003 + broadcast_time(8e6, 4, L))
    one = RolePlan.from_dict({"mode": "disaggregated", "num_envs": 8, "k": 1, "env": {"ranks": [0]},
                              "rollout": {"ranks": [1]}, "actor": {"ranks": [2]}})
    q = S.predict(one, cfg)
    assert q.train_s == pytest.approx(4 * 0.05 + 0.001 * 24)  # one actor rank: no all-reduce
    assert q.sync_s == pytest.approx(0.003 + broadcast_time(8e6, 2, L))
    no_link = S.build(S.SchedulerConfig, {k: v for k, v in d.items() if k != "link"})
    assert S.predict(col, no_link).train_s == pytest.approx(4 * 0.05 + 0.001 * 6)
    with pytest.raises(ConfigError, match="workload.update_steps: must be >= 1"):
        S.build(S.SchedulerConfig, {**d, "workload": {**d["workload"], "update_steps": 0}})
    # a measured all-reduce for 4 lockstep ranks replaces the priced one for 4 actors only; 2 actors stay priced
    measured = S.build(S.SchedulerConfig, {**d, "workload": {**d["workload"], "step_sync_s": {4: 0.03}}})
    assert S.predict(col, measured).train_s == pytest.approx(4 * 0.05 + 0.001 * 6 + 4 * 0.03)
    two = RolePlan.from_dict({"mode": "hybrid", "num_envs": 8, "k": 2, "env": {"ranks": [0]},
                              "rollout": {"ranks": [1]}, "actor": {"ranks": [0, 1]}})
    assert S.predict(two, measured).train_s == pytest.approx(S.predict(two, cfg).train_s)
    with pytest.raises(ConfigError, match="workload.step_sync_s: keys must be actor counts >= 2"):
        S.build(S.SchedulerConfig, {**d, "workload": {**d["workload"], "step_sync_s": {1: 0.03}}})


def test_measure_profile_times_every_microbatch_and_fits_the_update_per_step(tmp_path, monkeypatch):
    import torch

    import hetero.rl.update as U
    from hetero.models.vla import VLAPolicy
    from hetero.rl.config import load_config
    from hetero.rl.policy import save_checkpoint

    cfg = load_config("examples/rl/system_tiny.yaml", [f"train.init_checkpoint={tmp_path / 'init.pt'}",
                                                        "env.max_episode_steps=10"])
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "init.pt", model=VLAPolicy(cfg.policy.vla_config(state_dim=39, action_dim=4,
                                                                                num_cameras=0, image_size=64)))
    lines, updated = [], []
    real_update = U.ppo_update
    monkeypatch.setattr(U, "ppo_update", lambda model, opt, batch, *a, **kw: (
        updated.append(batch["denoise_ind"]), real_update(model, opt, batch, *a, **kw))[1])
    prof = S.measure_profile(cfg, sizes=[2, 4], sample_sizes=[8, 16], repeats=2, slowdown=2.0, log=lines.append)
    # the update is timed on samples whose stochastic (Flow-SDE) step varies, as a rollout's do (replay runs one
    # forward per distinct step), not on one sample call's single step
    assert updated and all(ind.unique().numel() > 1 for ind in updated)
    assert prof.env.per_item_s > 0 and prof.rollout(4) > 0 and prof.actor.per_item_s + prof.actor.fixed_s > 0
    assert prof.switch_s > 0 and prof.sync_s > 0 and "slowdown 2.0" in lines[0]
    # one chunk-step figure per micro-batch of each size (4 envs: two of 2 slots, one of 4)
    assert sorted(prof.env_microbatch) == [2, 4] and len(prof.env_microbatch[2]) == 2
    assert len(prof.env_microbatch[4]) == 1 and all(t > 0 for t in prof.env_microbatch[2])
