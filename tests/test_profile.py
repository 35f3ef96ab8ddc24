"""DeviceProfile round trip, calibration fits and the ``hetero profile`` command.

    python -m pytest -q tests/test_profile.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from hetero.config import ConfigError
from hetero.predictor.calibrate import GemmEfficiency, mape
from hetero.predictor.profile import (
    CollectiveRecord,
    DeviceProfile,
    GemmRecord,
    LayerRecord,
    fit_link,
    fit_op_link,
)


def _profile(**kw) -> DeviceProfile:
    base = dict(device="cpu", peak_flops={"fp32": 1e11}, memory_bandwidth=2e10, memory_overhead_bytes=123,
                gemms=[GemmRecord(m=64, n=64, k=64, dtype="fp32", seconds=1e-5)],
                layers=[LayerRecord(kind="transformer", dtype="fp32", hidden=64, ffn=256, heads=2, seq=32, mbs=1,
                                    flops_fwd=1e6, fwd_s=1e-4, bwd_s=2e-4)])
    base.update(kw)
    return DeviceProfile(**base)


def test_json_round_trip(tmp_path):
    p = _profile()
    path = tmp_path / "p.json"
    p.to_json(path)
    q = DeviceProfile.from_json(path)
    assert q.to_dict() == p.to_dict()
    assert q.layers[0].fwd_s == 1e-4 and q.memory_overhead_bytes == 123


def test_bad_profile_names_the_key(tmp_path):
    data = _profile().to_dict()
    data["gemms"][0]["m"] = "big"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"gemms\[0\]\.m"):
        DeviceProfile.from_json(path)
    data = _profile().to_dict()
    data["peak_flops"] = {"fp32": -1.0}
    with pytest.raises(ConfigError, match="peak_flops.fp32"):
        DeviceProfile.from_dict(data)
    with pytest.raises(ConfigError, match="not found"):
        DeviceProfile.from_json(tmp_path / "missing.json")


def test_scaled_profile_is_slower():
    p = _profile()
    s = p.scaled(device="slow", scale=0.5)
    assert s.device == "slow" and s.peak_flops["fp32"] == 5e10 and s.memory_bandwidth == 1e10
    assert s.layers[0].fwd_s == pytest.approx(2e-4) and s.gemms[0].seconds == pytest.approx(2e-5)


def test_fit_link_recovers_alpha_beta():
    alpha, bw = 50e-6, 2e9
    recs = [CollectiveRecord(op="send_recv", world_size=2, nbytes=n, seconds=alpha + n / bw) for n in (4096, 2**20, 2**22)]
    recs += [CollectiveRecord(op="all_reduce", world_size=2, nbytes=n, seconds=2 * alpha + n / bw) for n in (4096, 2**22)]
    a, b = fit_link(recs)
    assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(bw, rel=1e-6)
    assert fit_link(recs[:1]) == (0.0, 0.0)


def test_per_op_links_price_each_collective_by_its_own_records():
    """gloo's all-reduce is slower than its ring formula over the send/recv link (it also reduces and chunks):
    each op gets the alpha-beta link its own records imply, and the predictor prices a one-node DP all-reduce
    with it."""
    from hetero.cluster.spec import Cluster
    from hetero.predictor import comm

    p2p = (40e-6, 3e9)  # send/recv link
    ar = (120e-6, 1e9)  # what all_reduce's own timings imply (2 ranks: 2 alpha + S / B)
    recs = [CollectiveRecord(op="send_recv", world_size=2, nbytes=n, seconds=p2p[0] + n / p2p[1])
            for n in (4096, 2**20, 2**24)]
    recs += [CollectiveRecord(op="all_reduce", world_size=2, nbytes=n, seconds=2 * ar[0] + n / ar[1])
             for n in (4096, 2**20, 2**24)]
    assert fit_op_link(recs, "all_reduce") == pytest.approx(ar, rel=1e-6)
    assert fit_op_link(recs, "send_recv") == pytest.approx(p2p, rel=1e-6)
    assert fit_op_link(recs, "broadcast") == (0.0, 0.0)
    prof = _profile(collectives=recs)
    links = prof.collective_links
    assert set(links) == {"send_recv", "all_reduce"} and links["all_reduce"].bandwidth == pytest.approx(1e9)
    cluster = Cluster.from_dict({"name": "c", "nodes": [{"name": "a", "devices": {"type": "cpu", "count": 2}},
                                                        {"name": "b", "devices": {"type": "cpu", "count": 1}}],
                                 "network": {"bandwidth_gbps": 8, "latency_us": 10}})
    assert comm.measured_link(cluster, [0, 1], prof, "all_reduce") is links["all_reduce"]
    assert comm.measured_link(cluster, [0, 2], prof, "all_reduce") is None  # crosses nodes: cluster numbers
    n = 40 * 2**20
    t = comm.dp_allreduce_time(cluster, [0, 1], n, link=links["all_reduce"])
    assert t == pytest.approx(2 * (2 * ar[0] + n / 2 / ar[1]), rel=1e-6)  # two 25 MiB-max buckets, ring of 2


def _synthetic_gemms(rng):
    """A device whose GEMM efficiency rises with the smallest dimension: eff = 0.9 * d / (d + 96)."""
    out = []
    for _ in range(120):
        m, n, k = (int(2 ** rng.uniform(4, 12)) for _ in range(3))
        eff = 0.9 * min(m, n, k) / (min(m, n, k) + 96) * rng.uniform(0.95, 1.05)
        out.append(GemmRecord(m=m, n=n, k=k, dtype="fp32", seconds=2 * m * n * k / (eff * 1e11)))
    return out


def _held_out_errors(recs, peak):
    train, test = recs[: len(recs) * 2 // 3], recs[len(recs) * 2 // 3:]
    model = GemmEfficiency.fit(train, {"fp32": peak})
    eff = model.efficiency("fp32", [r.m for r in test], [r.n for r in test], [r.k for r in test])
    fitted = [2 * r.m * r.n * r.k / (e * peak) for r, e in zip(test, eff)]
    const = float(np.median([2 * r.m * r.n * r.k / r.seconds / peak for r in train]))  # best constant prior
    prior = [2 * r.m * r.n * r.k / (const * peak) for r in test]
    truth = [r.seconds for r in test]
    return mape(fitted, truth), mape(prior, truth)


def test_calibration_beats_constant_prior_on_held_out_synthetic_shapes():
    fitted, prior = _held_out_errors(_synthetic_gemms(np.random.default_rng(0)), 1e11)
    assert fitted < 0.5 * prior and fitted < 15.0


def test_calibration_beats_prior_on_this_cpu(tmp_path):
    """Real GEMMs timed on this machine: the regressor predicts held-out shapes better than one efficiency."""
    import torch

    from hetero.predictor.microbench import time_fn

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    recs = []
    for _ in range(45):
        m, n, k = (int(2 ** rng.uniform(3, 9.5)) for _ in range(3))
        a, b = torch.randn(m, k), torch.randn(k, n)
        recs.append(GemmRecord(m=m, n=n, k=k, dtype="fp32",
                               seconds=time_fn(lambda a=a, b=b: a @ b, sync=lambda: None, min_time=0.002,
                                               clock=time.thread_time)))
    peak = max(2 * r.m * r.n * r.k / r.seconds for r in recs)
    fitted, prior = _held_out_errors(recs, peak)
    assert fitted < prior


def test_hetero_profile_cli_quick(tmp_path):
    from hetero.cli import main

    out = tmp_path / "p.json"
    assert main(["profile", "--device", "cpu", "--quick", "--no-collectives", "--dtypes", "fp32", "-o", str(out)]) == 0
    p = DeviceProfile.from_json(out)
    assert p.peak_flops["fp32"] > 1e9 and p.memory_bandwidth > 1e9
    assert {r.kind for r in p.layers} == {"transformer", "head"}
    assert p.layer_model.has("transformer", "fp32") and p.gemm_model.has("fp32")
    assert len(p.optimizer) >= 2 and p.optimizer_time(1e6) > 0


def test_collectives_and_baseline():
    from hetero.predictor.microbench import run_collectives

    recs, rss, runtime = run_collectives([4096, 2**18], timeout=60, min_time=0.005)
    assert {r.op for r in recs} == {"all_reduce", "all_gather", "broadcast", "send_recv"}
    assert all(r.seconds > 0 for r in recs)
    assert 50 * 2**20 < rss < 4 * 2**30  # python + torch + gloo resident after init
    assert 0 <= runtime < 256 * 2**20
    alpha, bw = fit_link(recs)
    assert bw > 0


def test_cli_profile_assignment_scales_emulated_types(tmp_path):
    from hetero.cluster.spec import Cluster
    from hetero.predictor.predict_cli import load_profiles

    cluster = Cluster.from_yaml(Path(__file__).resolve().parents[1] / "examples" / "clusters" / "cpu_mix.yaml")
    path = tmp_path / "p.json"
    _profile().to_json(path)
    profs = load_profiles([f"cpu-fast={path}", f"cpu-slow={path}"], cluster)
    assert profs["cpu-fast"].peak_flops["fp32"] == pytest.approx(2 * profs["cpu-slow"].peak_flops["fp32"])
    assert profs["cpu-slow"].device == "cpu-slow"
    assert set(load_profiles([str(path)], cluster)) == {_profile().device}
    with pytest.raises(ConfigError, match="no device type 'gpu'"):
        load_profiles([f"gpu={path}"], cluster)
