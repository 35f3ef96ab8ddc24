"""The C++ layer-partition DP against exhaustive enumeration, and its memory terms against the predictor's.

    python -m pytest -q tests/test_planner_partition.py
"""

from __future__ import annotations

import numpy as np
import pytest

from hetero.autoparallel.partition import (
    CostArrays,
    Slot,
    brute_force,
    cost_arrays,
    evaluate,
    min_capacity_scale,
    partition,
)
from hetero.cluster.catalog import resolve
from hetero.cluster.spec import Link
from hetero.models.spec import ModelSpec
from hetero.predictor.memory import stage_memory


def _random_case(rng: np.random.Generator, p: int, n: int, tight: float) -> CostArrays:
    speed = rng.uniform(0.3, 3.0, size=(p, 1))
    base = rng.uniform(0.5, 2.0, size=(1, n))
    time0 = base / speed * rng.uniform(0.8, 1.2, size=(p, n))
    state = rng.uniform(1.0, 3.0, size=(p, n))
    act = rng.uniform(0.5, 2.0, size=(p, n))
    act_rc = act * rng.uniform(0.05, 0.3, size=(p, n))
    # capacity around what an even split needs: some splits fit, some need recomputation, some do not fit
    even = (state.sum(1) + act.sum(1) * 2) / p
    return CostArrays(time0=time0, time_rc=time0 * 1.33, state=state, act=act, act_rc=act_rc, worst_rc=act.copy(),
                      out=rng.uniform(0.0, 0.2, size=(p, n)), inflight=np.arange(p, 0, -1, dtype=float),
                      overhead=np.full(p, 0.1), capacity=even * tight, w_max=float(rng.integers(0, 8)), w_sum=1.0)


@pytest.mark.parametrize("seed", range(40))
def test_dp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    p = int(rng.integers(1, 5))
    n = int(rng.integers(p, 10))
    c = _random_case(rng, p, n, tight=float(rng.uniform(0.6, 2.5)))
    for allow in (True, False):
        ref = brute_force(c, allow_recompute=allow)
        got = partition(c, allow_recompute=allow)
        if ref is None:
            assert got is None
            continue
        assert got is not None
        assert got.objective == pytest.approx(ref.objective, rel=1e-12)
        # the returned split really has that cost and fits
        again = evaluate(c, got.bounds, allow_recompute=allow)
        assert again is not None and again.objective == pytest.approx(got.objective, rel=1e-12)
        assert again.recompute == got.recompute


def test_dp_finds_some_infeasible_and_recompute_cases():
    """The random cases above exercise all three branches (fits, fits only with recompute, does not fit)."""
    kinds = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        p = int(rng.integers(1, 5))
        n = int(rng.integers(p, 10))
        c = _random_case(rng, p, n, tight=float(rng.uniform(0.6, 2.5)))
        r = partition(c)
        kinds.add("none" if r is None else ("rc" if any(r.recompute) else "plain"))
    assert kinds == {"none", "rc", "plain"}


def test_bound_prunes():
    rng = np.random.default_rng(3)
    c = _random_case(rng, 3, 8, tight=3.0)
    best = partition(c)
    assert best is not None
    assert partition(c, bound=best.objective * 0.999) is None
    assert partition(c, bound=best.objective * 1.001).objective == pytest.approx(best.objective)


def test_memory_terms_equal_predictor_stage_memory():
    model = ModelSpec.preset("gpt2-small")
    link = Link(bandwidth=300e9, latency=2e-6)
    slots = [Slot(device=resolve("A100"), tp=2, tp_link=link), Slot(device=resolve("V100")),
             Slot(device=resolve("T4"))]
    for schedule in ("1f1b", "gpipe"):
        c = cost_arrays(model, slots, mbs=4, num_microbatches=6, schedule=schedule)
        for s, (lo, hi) in enumerate([(0, 5), (5, 11), (11, 14)]):
            for rc in (False, True):
                ref = stage_memory(model, (lo, hi), mbs=4, pp=3, stage_index=s, num_microbatches=6,
                                   tp=slots[s].tp, schedule=schedule, recompute=rc)
                assert c.stage_memory(s, lo, hi, rc) == pytest.approx(ref.total, rel=1e-12)


def test_real_model_dp_matches_brute_force_and_favours_fast_stage():
    model = ModelSpec.preset("gpt2-small")  # 14 layers
    slots = [Slot(device=resolve("A100")), Slot(device=resolve("V100")), Slot(device=resolve("T4"))]
    c = cost_arrays(model, slots, mbs=8, num_microbatches=8)
    got, ref = partition(c), brute_force(c)
    assert got.objective == pytest.approx(ref.objective, rel=1e-12)
    sizes = [hi - lo for lo, hi in got.ranges]
    assert sizes[0] > sizes[2]  # the A100 takes more blocks than the T4


def test_min_capacity_scale_explains_overflow():
    model = ModelSpec.preset("llama2-13b", seq_len=4096)
    slots = [Slot(device=resolve("T4"))]  # 13B on one 16 GB T4 cannot fit
    c = cost_arrays(model, slots, mbs=1, num_microbatches=1)
    assert partition(c) is None
    k = min_capacity_scale(c)
    assert 1.0 < k < 100
    need = c.stage_memory(0, 0, model.num_layers, True)
    assert k * c.capacity[0] == pytest.approx(need, rel=1e-6)
