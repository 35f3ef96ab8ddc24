"""predict(): a plan on a mixed cluster end to end, consistent with its parts; CLI table and JSON."""

import json

import pytest

from hetero.autoparallel.plan import Plan, Stage
from hetero.cluster.spec import Cluster
from hetero.config import ConfigError
from hetero.models.spec import ModelSpec
from hetero.predictor import check_memory, predict, predict_detailed
from hetero.predictor.compute import layer_times
from hetero.predictor.pipeline import simulate

CLUSTER = {
    "nodes": [{"name": "a", "devices": {"type": "A100", "count": 2}},
              {"name": "v", "devices": {"type": "V100", "count": 2}}],
    "network": {"bandwidth_gbps": 100, "latency_us": 5},
}


def plan(shares=(8, 8), layers=(9, 14), schedule="1f1b"):
    return Plan(model="gpt2-small", num_layers=14, global_batch=sum(shares), num_microbatches=4, seq_len=1024,
                schedule=schedule, dtype="bf16",
                stages=[Stage(layers=(0, layers[0]), device_type="nvidia_a100_sxm4_80gb", ranks=[0, 1], dp=2,
                              batch_shares=list(shares)),
                        Stage(layers=(layers[0], layers[1]), device_type="nvidia_v100_sxm2_32gb", ranks=[2, 3],
                              dp=2, batch_shares=list(shares))])


def test_predict_matches_parts():
    c = Cluster.from_dict(CLUSTER)
    m = ModelSpec.preset("gpt2-small")
    p = plan()
    rep = predict_detailed(c, m, p)
    pred = rep.prediction
    a = layer_times(m, c.device_types()["nvidia_a100_sxm4_80gb"], mbs=2, dtype="bf16")
    v = layer_times(m, c.device_types()["nvidia_v100_sxm2_32gb"], mbs=2, dtype="bf16")
    f = [sum(t[0] for t in a[:9]), sum(t[0] for t in v[9:])]
    assert rep.stages[0].fwd_s[0] == pytest.approx(f[0])
    assert rep.stages[1].fwd_s[0] == pytest.approx(f[1])
    sim = rep.simulations[0]
    no_comm = simulate(f, [sum(t[1] for t in a[:9]), sum(t[1] for t in v[9:])], 4)
    assert sim.makespan >= no_comm.makespan  # p2p transfers only add time
    assert pred.step_time_s >= sim.makespan
    assert pred.throughput_samples_s == pytest.approx(16 / pred.step_time_s)
    assert pred.throughput_tokens_s == pytest.approx(16 * 1024 / pred.step_time_s)
    assert set(pred.rank_memory_bytes) == {0, 1, 2, 3}
    assert 0 <= pred.bubble_fraction < 1


def test_unequal_shares_and_balance():
    c = Cluster.from_dict(CLUSTER)
    m = ModelSpec.preset("gpt2-small")
    even = predict(c, m, plan(layers=(7, 14)))
    # the V100 stage is slower: moving layers to the A100 stage helps
    better = predict(c, m, plan(layers=(10, 14)))
    assert better.step_time_s < even.step_time_s
    # an unequal share makes the bigger replica the critical path
    skew = predict(c, m, plan(shares=(12, 4)))
    assert skew.step_time_s > predict(c, m, plan(shares=(8, 8))).step_time_s


def test_interleaved_and_gpipe_run():
    c = Cluster.from_dict(CLUSTER)
    m = ModelSpec.preset("gpt2-small")
    g = predict(c, m, plan(schedule="gpipe"))
    o = predict(c, m, plan(schedule="1f1b"))
    assert g.step_time_s == pytest.approx(o.step_time_s, rel=0.05)
    assert max(g.rank_memory_bytes.values()) > max(o.rank_memory_bytes.values())


def test_plan_world_mismatch_and_memory_error():
    c = Cluster.from_dict(CLUSTER)
    big = ModelSpec.preset("llama2-13b", seq_len=4096)
    p = Plan(model="llama2-13b", num_layers=big.num_layers, global_batch=8, num_microbatches=8,
             stages=[Stage(layers=(0, 21), device_type="nvidia_a100_sxm4_80gb", ranks=[0]),
                     Stage(layers=(21, big.num_layers), device_type="nvidia_v100_sxm2_32gb", ranks=[2])])
    with pytest.raises(ConfigError, match="covers ranks 0,2 but the world has 4 ranks"):
        predict(c, big, p)
    c2 = Cluster.from_dict({"nodes": [{"name": "a", "devices": {"type": "A100", "count": 1}},
                                      {"name": "v", "devices": {"type": "V100", "count": 1}}],
                            "network": {"bandwidth_gbps": 100}})
    p.stages[1].ranks = [1]
    pred = predict(c2, big, p)
    with pytest.raises(ConfigError, match=r"stages\[0\]: needs .* GiB per device but nvidia_a100_sxm4_80gb has 80.0 GiB \(layers 0-20"):
        check_memory(c2, p, pred)


def test_cli(tmp_path, capsys):
    import yaml

    from hetero.cli import main

    cf = tmp_path / "c.yaml"
    cf.write_text(yaml.safe_dump(CLUSTER))
    pf = tmp_path / "p.yaml"
    plan().to_file(pf)
    assert main(["predict", "--cluster", str(cf), "--model", "gpt2-small", "--plan", str(pf), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["step_time_s"] > 0 and len(out["stages"]) == 2
    assert main(["predict", "--cluster", str(cf), "--model", "gpt2-small", "--plan", str(pf)]) == 0
    assert "bubble" in capsys.readouterr().out
