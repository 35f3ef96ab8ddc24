"""Predictor formulas against hand-computed values: comm (alpha-beta), memory, pipeline schedules."""

import math

import pytest

from hetero.cluster.spec import Link
from hetero.models.spec import ModelSpec
from hetero.predictor import comm
from hetero.predictor.memory import in_flight, stage_memory, state_bytes_per_param
from hetero.predictor.pipeline import simulate, stage_order

LINK = Link(bandwidth=100e9, latency=1e-5)


def test_collectives_alpha_beta():
    s, n = 1e9, 4
    assert comm.allreduce_time(s, n, LINK, algo="ring") == pytest.approx(6 * 1e-5 + 1.5 * 1e9 / 100e9)
    assert comm.allreduce_time(s, n, LINK, algo="tree") == pytest.approx(4 * 1e-5 + 2 * 1e9 / 100e9)
    assert comm.allreduce_time(s, n, LINK) == pytest.approx(min(0.01506, 0.02004))
    # small message: latency-bound, the tree wins at large n
    assert comm.allreduce_time(1e3, 64, LINK, algo="auto") == comm.allreduce_time(1e3, 64, LINK, algo="tree")
    assert comm.allgather_time(s, n, LINK) == pytest.approx(3e-5 + 0.75 * 0.01)
    assert comm.broadcast_time(s, n, LINK, algo="ring") == pytest.approx(3e-5 + 0.01)
    assert comm.broadcast_time(s, n, LINK, algo="tree") == pytest.approx(2 * (1e-5 + 0.01))
    assert comm.p2p_time(s, LINK) == pytest.approx(1e-5 + 0.01)
    assert comm.allreduce_time(s, 1, LINK) == 0.0


def test_hierarchical_beats_flat_on_slow_bridge():
    fast = Link(bandwidth=100e9, latency=1e-6)
    slow = Link(bandwidth=1e9, latency=1e-4)
    s = 1e8
    hier = comm.hierarchical_allreduce_time(s, [(4, fast), (4, fast)], slow)
    flat = comm.allreduce_time(s, 8, slow, algo="ring")  # a flat ring crosses the slow bridge at every step
    inside = 2 * (3 * 1e-6 + 0.75 * s / 100e9)
    assert hier == pytest.approx(inside + comm.allreduce_time(s, 2, slow) + comm.broadcast_time(s, 4, fast))
    assert hier < flat


def test_state_bytes():
    assert state_bytes_per_param("fp32", "fp32") == (4, 4, 8)
    assert sum(state_bytes_per_param("bf16", "fp32")) == 18


def test_in_flight():
    assert in_flight("gpipe", pp=4, stage_index=3, num_microbatches=8) == 8
    assert [in_flight("1f1b", pp=4, stage_index=s, num_microbatches=8) for s in range(4)] == [4, 3, 2, 1]
    assert in_flight("1f1b", pp=4, stage_index=0, num_microbatches=2) == 2
    # interleaved, p=4, v=2, stage 0: 2*3 + 1*4 + 1 = 11 chunks of half a stage
    assert in_flight("interleaved_1f1b", pp=4, stage_index=0, num_microbatches=8, virtual_stages=2) == 5.5


def test_stage_memory_by_hand():
    spec = ModelSpec.transformer(name="t", num_layers=2, hidden=64, heads=4, vocab=100, seq_len=16,
                                 dtype="fp32", param_dtype="fp32")
    blk = spec.layers[1]
    m = stage_memory(spec, (1, 3), mbs=2, pp=2, stage_index=0, num_microbatches=4, tp=1)
    assert m.params == 2 * blk.params * 4
    assert m.optimizer == 2 * blk.params * 8
    # 1F1B stage 0 of 2 holds 2 micro-batches; plus p2p buffers (2 x output of the last layer)
    # plus the backward workspace of the largest layer (one block's saved bytes)
    assert m.activations == pytest.approx(2 * blk.act_saved_bytes * 2 * 2 + blk.act_saved_bytes * 2 + 2 * blk.act_out_bytes * 2)
    r = stage_memory(spec, (1, 3), mbs=2, pp=2, stage_index=0, num_microbatches=4, recompute=True)
    assert r.activations == pytest.approx(2 * blk.act_in_bytes * 2 * 2 + blk.act_saved_bytes * 2 + 2 * blk.act_out_bytes * 2)
    assert r.activations < m.activations
    t2 = stage_memory(spec, (1, 3), mbs=2, pp=2, stage_index=0, num_microbatches=4, tp=2)
    assert t2.params == m.params / 2


def test_transformer_spec_by_hand():
    spec = ModelSpec.transformer(name="t", num_layers=1, hidden=64, heads=4, ffn=256, vocab=100, seq_len=16)
    blk = spec.layers[1]
    p_mat = 4 * 64 * 64 + 2 * 64 * 256
    assert blk.flops_fwd == 2 * 16 * p_mat + 4 * 16 * 16 * 64
    assert spec.flops_per_sample == 3 * sum(layer.flops_fwd for layer in spec.layers)
    llama = ModelSpec.preset("llama2-70b")
    assert 68e9 < llama.params < 70e9
    assert ModelSpec.preset("llama2-7b").params == pytest.approx(6.74e9, rel=0.01)


def test_1f1b_order():
    assert stage_order("1f1b", 2, 0, 3) == [("F", 0, 0), ("F", 1, 0), ("B", 0, 0), ("F", 2, 0), ("B", 1, 0), ("B", 2, 0)]
    assert stage_order("1f1b", 2, 1, 3) == [("F", 0, 0), ("B", 0, 0), ("F", 1, 0), ("B", 1, 0), ("F", 2, 0), ("B", 2, 0)]


def test_even_pipeline_closed_form():
    # p equal stages, m micro-batches: (m + p - 1) (f + b) for both GPipe and 1F1B
    for sched in ("gpipe", "1f1b"):
        r = simulate([1, 1, 1, 1], [2, 2, 2, 2], 8, schedule=sched)
        assert r.makespan == pytest.approx((8 + 3) * 3)
        assert r.bubble_fraction == pytest.approx(1 - 8 * 3 / 33)
    # interleaved with v chunks: the bubble shrinks by v
    r = simulate([1, 1, 1, 1], [2, 2, 2, 2], 8, schedule="interleaved_1f1b", virtual_stages=2)
    assert r.makespan == pytest.approx(8 * 3 + 3 * 3 / 2)


def test_uneven_two_stage_1f1b_by_hand():
    # stage 0: F=2, B=4; stage 1: F=1, B=2; 4 micro-batches. Worked by hand:
    # s0: F0 0-2, F1 2-4, B0 5-9, F2 9-11, B1 11-15, F3 15-17, B2 17-21, B3 21-25
    # s1: F0 2-3, B0 3-5, F1 5-6, B1 6-8, F2 11-12, B2 12-14, F3 17-18, B3 18-20
    r = simulate([2, 1], [4, 2], 4, schedule="1f1b", keep_blocks=True)
    assert r.makespan == 25
    s0 = [(b.kind, b.micro, b.start, b.end) for b in r.blocks if b.stage == 0]
    assert s0 == [("F", 0, 0, 2), ("F", 1, 2, 4), ("B", 0, 5, 9), ("F", 2, 9, 11), ("B", 1, 11, 15),
                  ("F", 3, 15, 17), ("B", 2, 17, 21), ("B", 3, 21, 25)]
    assert r.busy == [24, 12]
    # with a 0.5 s transfer each way between the stages
    r2 = simulate([2, 1], [4, 2], 4, schedule="1f1b", p2p=[0.5])
    assert r2.makespan == pytest.approx(26)


def test_gpipe_two_stage_by_hand():
    # s0 forwards 0-2,2-4,4-6; s1 forwards 2-3,4-5,6-7 then backwards 7-9,9-11,11-13; s0 backwards 9-13,13-17,17-21
    r = simulate([2, 1], [4, 2], 3, schedule="gpipe")
    assert r.makespan == 21


def test_deadlock_free_on_random_inputs():
    import random

    rng = random.Random(0)
    for _ in range(50):
        p = rng.randint(1, 5)
        m = rng.randint(1, 9)
        f = [rng.uniform(0.1, 2) for _ in range(p)]
        b = [2 * x for x in f]
        for sched in ("gpipe", "1f1b"):
            r = simulate(f, b, m, schedule=sched)
            assert r.makespan >= sum(f) + sum(b) - 1e-9
            assert r.makespan >= m * max(x + y for x, y in zip(f, b)) - 1e-9
        if m % p == 0:
            r = simulate(f, b, m, schedule="interleaved_1f1b", virtual_stages=2)
            assert math.isfinite(r.makespan)
