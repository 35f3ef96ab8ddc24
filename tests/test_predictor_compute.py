"""Compute-time formulas of hetero.predictor.compute against hand-computed values.

    python -m pytest -q tests/test_predictor_compute.py
"""

from __future__ import annotations

import time

import pytest

from hetero.cluster.spec import DeviceType
from hetero.models.spec import LayerSpec, ModelSpec
from hetero.predictor.compute import layer_times, optimizer_step_time
from hetero.predictor.profile import DeviceProfile, LayerRecord, OptimizerRecord

DEV = DeviceType(id="toy", memory_bytes=2**30, memory_bandwidth=1e11, peak_flops={"fp32": 1e12, "bf16": 2e12},
                 matmul_efficiency=0.5, torch_device="cpu")


def _layer(**kw) -> LayerSpec:
    base = dict(name="x", kind="other", params=1_000_000, flops_fwd=2e9, bytes_fwd=1e8, act_saved_bytes=0.0,
                act_in_bytes=0.0, act_out_bytes=0.0)
    base.update(kw)
    return LayerSpec(**base)


def _model(*layers: LayerSpec, dtype: str = "fp32") -> ModelSpec:
    return ModelSpec(name="toy", layers=list(layers), dtype=dtype)


def test_analytic_prior_matches_hand_computation():
    # one "other" layer of 2 GFLOP = a 1000^3 GEMM; efficiency 0.5 of 1 TFLOP/s; bandwidth 0.8 x 100 GB/s
    fwd, bwd = layer_times(_model(_layer()), DEV, mbs=1)[0]
    gemm = 2e9 / (1e12 * 0.5)  # 4 ms, compute-bound: operand bytes 3 * 1000^2 * 4 / 80 GB/s = 0.15 ms
    bw = 1e11 * 0.8
    assert fwd == pytest.approx(gemm + 1e8 / bw, rel=1e-3)
    # backward: dX and dW GEMMs (2 x 4 ms), twice the elementwise bytes, weight-gradient read+write (8 B/param)
    assert bwd == pytest.approx(2 * gemm + (2e8 + 8e6) / bw, rel=1e-3)


def test_memory_bound_gemm_uses_roofline():
    # a tiny GEMM (c = 10): 2000 FLOPs take 4 ns at 0.5 TFLOP/s but its 1200 operand bytes take 15 ns
    fwd, _ = layer_times(_model(_layer(flops_fwd=2e3, bytes_fwd=0.0, params=0)), DEV, mbs=1)[0]
    assert fwd == pytest.approx(3 * 100 * 4 / (1e11 * 0.8), rel=1e-3)


def test_mbs_and_tp_scaling_and_dtype():
    spec = ModelSpec.transformer(name="t", num_layers=2, hidden=1024, heads=16, seq_len=512, vocab=1000, dtype="fp32")
    one = layer_times(spec, DEV, mbs=1)
    four = layer_times(spec, DEV, mbs=4)
    tp2 = layer_times(spec, DEV, mbs=4, tp=2)
    blk = 1
    assert four[blk][0] == pytest.approx(4 * one[blk][0], rel=0.02)  # compute-bound: linear in mbs
    assert tp2[blk][0] == pytest.approx(four[blk][0] / 2, rel=0.05)  # TP halves the per-rank work
    bf16 = layer_times(spec, DEV, mbs=4, dtype="bf16")
    assert bf16[blk][0] < 0.6 * four[blk][0]  # twice the peak, half the bytes
    assert all(b > f > 0 for f, b in four[1:])


def test_bad_arguments():
    spec = _model(_layer())
    with pytest.raises(ValueError, match="mbs"):
        layer_times(spec, DEV, mbs=0)
    with pytest.raises(ValueError, match="tp"):
        layer_times(spec, DEV, mbs=1, tp=0)
    with pytest.raises(ValueError, match="dtype"):
        layer_times(spec, DEV, mbs=1, dtype="int3")


def test_optimizer_prior_and_profile():
    assert optimizer_step_time(1e6, DEV) == pytest.approx(1e6 * 28 / (1e11 * 0.8))
    assert optimizer_step_time(0, DEV) == 0.0
    prof = DeviceProfile(device="toy", peak_flops={"fp32": 1e12}, memory_bandwidth=5e10,
                         optimizer=[OptimizerRecord(params=1000, seconds=0.002), OptimizerRecord(params=3000, seconds=0.004)])
    # line through the two records: 1 ms fixed + 1 us per parameter
    assert optimizer_step_time(5000, DEV, profile=prof) == pytest.approx(0.006)


def _block_spec(hidden=256, seq=64):
    return ModelSpec.transformer(name="b", num_layers=1, hidden=hidden, heads=4, seq_len=seq, vocab=512, dtype="fp32")


def test_profile_exact_layer_record_is_used():
    spec = _block_spec()
    blk = spec.layers[1]
    rec = LayerRecord(kind="transformer", dtype="fp32", hidden=256, ffn=1024, heads=4, seq=64, mbs=2, tp=1,
                      flops_fwd=blk.flops_fwd * 2, fwd_s=0.010, bwd_s=0.021)
    prof = DeviceProfile(device="toy", peak_flops={"fp32": 1e12}, memory_bandwidth=5e10, layers=[rec])
    assert layer_times(spec, DEV, mbs=2, profile=prof)[1] == pytest.approx((0.010, 0.021))


def test_profile_layer_regressor_interpolates():
    # synthetic device whose blocks reach efficiency 0.2 at 1 sample and 0.4 from 4 samples on
    recs = []
    for mbs, eff in ((1, 0.2), (2, 0.3), (4, 0.4), (8, 0.4)):
        for hidden in (128, 256):
            f = _block_spec(hidden).layers[1].flops_fwd * mbs
            recs.append(LayerRecord(kind="transformer", dtype="fp32", hidden=hidden, ffn=4 * hidden, heads=4, seq=64,
                                    mbs=mbs, flops_fwd=f, fwd_s=f / (1e12 * eff), bwd_s=2 * f / (1e12 * eff)))
    prof = DeviceProfile(device="toy", peak_flops={"fp32": 1e12}, memory_bandwidth=5e10, layers=recs)
    spec = _block_spec(192)  # a hidden size between the profiled ones, no exact record
    f = spec.layers[1].flops_fwd * 8
    fwd, bwd = layer_times(spec, DEV, mbs=8, profile=prof)[1]
    assert f / fwd / 1e12 == pytest.approx(0.4, rel=0.1)
    assert 2 * f / bwd / 1e12 == pytest.approx(0.4, rel=0.1)
    fwd1, _ = layer_times(spec, DEV, mbs=1, profile=prof)[1]
    assert spec.layers[1].flops_fwd / fwd1 / 1e12 == pytest.approx(0.2, rel=0.15)


def test_many_combinations_are_fast():
    spec = ModelSpec.preset("llama2-70b")
    layer_times(spec, DEV, mbs=1)
    t0 = time.perf_counter()
    for mbs in (1, 2, 4, 8, 16):
        for tp in (1, 2, 4, 8):
            out = layer_times(spec, DEV, mbs=mbs, tp=tp)
    assert len(out) == spec.num_layers
    assert time.perf_counter() - t0 < 2.0
