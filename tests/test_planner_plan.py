"""Plans written by the planner round-trip through YAML and JSON without loss; hand-written plans get clear
validation errors naming the stage.

    python -m pytest -q tests/test_planner_plan.py
"""

from __future__ import annotations

import copy

import pytest

from hetero.autoparallel.plan import Plan
from hetero.autoparallel.search import SearchConfig, search
from hetero.cluster.spec import Cluster
from hetero.config import ConfigError
from hetero.models.spec import ModelSpec
from hetero.predictor.predict import predict


@pytest.fixture(scope="module")
def setup():
    cluster = Cluster.from_dict({"nodes": [
        {"name": "a", "devices": {"type": "A100", "count": 4}},
        {"name": "v", "devices": {"type": "V100", "count": 4}}], "network": {"bandwidth_gbps": 100}})
    model = ModelSpec.preset("gpt2-medium")
    res = search(cluster, model, SearchConfig(global_batch=32, schedules=["1f1b"]))
    return cluster, model, res.best.plan


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(setup, tmp_path, suffix):
    _, _, plan = setup
    path = tmp_path / f"plan{suffix}"
    plan.to_file(path)
    back = Plan.from_file(path)
    assert back.to_dict() == plan.to_dict()
    assert back.predicted.rank_memory_bytes == plan.predicted.rank_memory_bytes
    assert back.cluster_hash and back.model_hash and back.version == plan.version


def test_hashes_identify_cluster_and_model(setup):
    cluster, model, plan = setup
    assert plan.cluster_hash == cluster.fingerprint()
    assert plan.model_hash == model.fingerprint()


def _mutated(plan: Plan, fn) -> dict:
    d = copy.deepcopy(plan.to_dict())
    fn(d)
    return d


def test_gap_in_layers_names_stage(setup):
    _, _, plan = setup
    assert plan.pp >= 2

    def gap(d):
        d["stages"][1]["layers"][0] += 1
    with pytest.raises(ConfigError, match=r"stages\[1\]\.layers: starts at layer \d+ but the previous stage ends"):
        Plan.from_dict(_mutated(plan, gap))


def test_rank_twice_names_stage(setup):
    _, _, plan = setup

    def dup(d):
        d["stages"][1]["ranks"][0] = d["stages"][0]["ranks"][0]
    with pytest.raises(ConfigError, match=r"stages\[1\]\.ranks: rank \d+ is already used by stages\[0\]"):
        Plan.from_dict(_mutated(plan, dup))


def test_missing_rank_and_wrong_type(setup):
    cluster, model, plan = setup
    with pytest.raises(ConfigError, match="every rank must be in exactly one stage"):
        plan.validate(world_size=cluster.world_size + 4)
    bad = Plan.from_dict(_mutated(plan, lambda d: d["stages"][0].update(device_type="nvidia_t4")))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.device_type: is 'nvidia_t4' but rank \d+ is a"):
        bad.validate(rank_types=cluster.rank_types())


def test_degrees_consistent(setup):
    _, _, plan = setup

    def tp(d):
        d["stages"][0]["tp"] = d["stages"][0]["tp"] * 2 + 1
    with pytest.raises(ConfigError, match=r"stages\[0\]\.ranks: has \d+ ranks but tp\*dp"):
        Plan.from_dict(_mutated(plan, tp))


def test_memory_over_capacity_names_stage(setup):
    cluster, model, plan = setup
    caps = {k: v.memory_bytes for k, v in cluster.device_types().items()}
    plan.validate_memory(caps)
    small = dict(caps)
    last = plan.stages[-1].device_type
    small[last] = 2**20  # 1 MiB devices
    with pytest.raises(ConfigError, match=rf"stages\[\d+\]: stage on \d+×{last} \(layers .*\) needs [\d.]+ GiB"):
        plan.validate_memory(small)
    # a hand-written plan without recomputation that overflows: predicted memory grows with the micro-batch
    big = Plan.from_dict(_mutated(plan, lambda d: (d.update(global_batch=d["global_batch"] * 512, predicted=None),
                                                   [s.update(batch_shares=[], recompute=False) for s in d["stages"]])))
    big.predicted = predict(cluster, model, big)
    with pytest.raises(ConfigError, match="needs"):
        big.validate_memory(caps)
