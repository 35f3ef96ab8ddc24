"""The planner's search: plans it writes are valid and predicted, it beats an even split, pruning loses nothing
on small clusters, and bad input gets a clear error.

    python -m pytest -q tests/test_planner_search.py
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from hetero.autoparallel.search import SearchConfig, efficiency, naive, search
from hetero.cluster.spec import Cluster
from hetero.config import ConfigError
from hetero.models.spec import ModelSpec
from hetero.predictor.predict import predict


def _cluster(*types: tuple[str, int], per_node: int = 4, name: str = "t") -> Cluster:
    nodes = [{"name": t.lower(), "repeat": n // per_node, "devices": {"type": t, "count": per_node}} for t, n in types]
    return Cluster.from_dict({"name": name, "nodes": nodes, "network": {"bandwidth_gbps": 200}})


@pytest.fixture(scope="module")
def a100_v100():
    return _cluster(("A100", 8), ("V100", 8))


@pytest.fixture(scope="module")
def llama7b():
    return ModelSpec.preset("llama2-7b", seq_len=2048)


def test_best_plan_is_valid_and_predicted(a100_v100, llama7b):
    res = search(a100_v100, llama7b, SearchConfig(global_batch=64))
    plan = res.best.plan
    plan.validate(world_size=a100_v100.world_size, num_layers=llama7b.num_layers, rank_types=a100_v100.rank_types())
    again = predict(a100_v100, llama7b, plan)
    assert again.step_time_s == pytest.approx(plan.predicted.step_time_s, rel=1e-9)
    plan.validate_memory({k: v.memory_bytes for k, v in a100_v100.device_types().items()})
    # ranked by predicted step time
    times = [c.step_time for c in res.ranked]
    assert times == sorted(times) and math.isfinite(times[0])
    # TP groups stay inside one node and one type
    devs = a100_v100.devices()
    for st in plan.stages:
        for d in range(st.dp):
            group = [st.rank(d, t) for t in range(st.tp)]
            assert len({devs[r][1].name for r in group}) == 1


def test_faster_devices_get_more_layers(a100_v100, llama7b):
    plan = search(a100_v100, llama7b, SearchConfig(global_batch=64, schedules=["1f1b"])).best.plan
    per_type: dict[str, list[float]] = {}
    for st in plan.stages:
        per_type.setdefault(st.device_type, []).append(st.num_layers / st.tp)
    a100 = sum(per_type["nvidia_a100_sxm4_80gb"]) / len(per_type["nvidia_a100_sxm4_80gb"])
    v100 = sum(per_type["nvidia_v100_sxm2_32gb"]) / len(per_type["nvidia_v100_sxm2_32gb"])
    assert a100 > 1.5 * v100


def test_beats_even_split(a100_v100, llama7b):
    cfg = SearchConfig(global_batch=64)
    best = search(a100_v100, llama7b, cfg).best
    base = naive(a100_v100, llama7b, cfg)
    assert best.step_time < base.step_time


def test_pruned_search_matches_exhaustive_on_small_cluster(llama7b):
    cluster = _cluster(("A100", 4), ("V100", 4), ("T4", 4))
    cfg = SearchConfig(global_batch=32, micro_batch_sizes=[1, 2], schedules=["1f1b", "gpipe"])
    fast = search(cluster, llama7b, cfg)
    full = search(cluster, llama7b, cfg, exhaustive=True)
    assert fast.evaluated < full.evaluated
    assert fast.best.step_time <= full.best.step_time * 1.01


def test_time_limit_returns_best_so_far(a100_v100, llama7b):
    res = search(a100_v100, llama7b, SearchConfig(global_batch=64, time_limit_s=1e-6))
    assert res.time_limited
    assert res.best.plan is not None


def test_model_too_big_names_the_constraint():
    cluster = _cluster(("T4", 4), ("V100", 4))
    with pytest.raises(ConfigError, match=r"model too big for the cluster: llama2-70b .* needs \d+ GiB"):
        search(cluster, ModelSpec.preset("llama2-70b"), SearchConfig(global_batch=8))


def test_no_fit_names_the_binding_stage():
    # state fits in total, but not with activations at seq 16384 on small-memory parts
    cluster = _cluster(("T4", 4), ("V100", 4))
    with pytest.raises(ConfigError, match=r"closest: stage \d+ on \d+×\S+ .*needs [\d.]+ GiB per device at "
                                          r"micro-batch 1 even with recomputation"):
        search(cluster, ModelSpec.preset("llama2-7b", seq_len=65536), SearchConfig(global_batch=8, max_tp=1))


def test_global_batch_not_divisible():
    cluster = _cluster(("A100", 4), ("V100", 4))
    cfg = SearchConfig(global_batch=7, micro_batch_sizes=[2])
    with pytest.raises(ConfigError, match="no candidate structure"):
        search(cluster, ModelSpec.preset("gpt2-small"), cfg)


def test_efficiency_against_homogeneous_parts(a100_v100, llama7b):
    cfg = SearchConfig(global_batch=64, schedules=["1f1b"])
    thr = search(a100_v100, llama7b, cfg).best.plan.predicted.throughput_samples_s
    eff, per = efficiency(a100_v100, llama7b, cfg, thr)
    assert set(per) == set(a100_v100.device_types())
    assert eff == pytest.approx(thr / sum(per.values()))
    assert 0.5 < eff < 1.2


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"schedules\[0\]: unknown schedule 'zigzag'"):
        SearchConfig(global_batch=8, schedules=["zigzag"])
    with pytest.raises(ConfigError, match="global_batch: must be > 0"):
        SearchConfig(global_batch=0)


def test_dp_across_types_with_shares_by_speed():
    """A model small enough for one device per replica: the planner's best plan is DP across the types with
    batch shares proportional to speed, and the prediction balances the replicas."""
    from hetero.models.gpt import GPTConfig

    cl = Cluster.from_dict({"name": "mix", "device_types": [{"id": "fast", "like": "cpu", "scale": 1.0},
                                                            {"id": "slow", "like": "cpu", "scale": 0.5}],
                            "nodes": [{"name": "a", "devices": {"type": "fast", "count": 1}},
                                      {"name": "b", "devices": {"type": "slow", "count": 1}}],
                            "network": {"bandwidth_gbps": 40, "latency_us": 50}})
    spec = GPTConfig(name="tiny", vocab=256, hidden=128, heads=4, num_layers=4, seq_len=64).spec(dtype="fp32")
    res = search(cl, spec, SearchConfig(global_batch=48, dtype="fp32", max_tp=1))
    plan = res.best.plan
    assert plan.meta["family"] == "cross-type weighted DP" and len(plan.stages) == 1
    st = plan.stages[0]
    assert st.replica_types == ["fast", "slow"] and st.batch_shares == [32, 16]
    plan.validate(world_size=2, num_layers=spec.num_layers, rank_types=cl.rank_types())
    rep = predict(cl, spec, plan)
    assert rep.step_time_s == pytest.approx(plan.predicted.step_time_s, rel=1e-9)
    even = dataclasses.replace(plan, stages=[dataclasses.replace(st, batch_shares=[24, 24])])
    assert predict(cl, spec, even).step_time_s > 1.2 * rep.step_time_s  # the slow replica would set the pace
