"""The slow-device emulator (tests/benchmarks only): padding, environment and cluster-derived slowdowns.

    python -m pytest -q tests/test_emulate.py
"""

from __future__ import annotations

import time

import pytest

from hetero.cluster.spec import Cluster
from hetero.config import ConfigError
from hetero.runtime.emulate import Emulator


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_compute_pads_to_slowdown():
    emu = Emulator(slowdown=3.0)
    t0 = time.perf_counter()
    with emu.compute():
        _busy(0.02)
    total = time.perf_counter() - t0
    assert emu.compute_s == pytest.approx(0.02, abs=0.01)
    # sleep never returns early; on a loaded machine it may overshoot by a few scheduler ticks
    assert 2 * emu.compute_s - 1e-3 <= emu.padded_s <= 2 * emu.compute_s + 0.03
    assert 3 * emu.compute_s - 1e-3 <= total <= 3 * emu.compute_s + 0.04
    assert emu.duty_cycle == pytest.approx(1 / 3)


def test_pad_returns_padded_time_and_no_pad_at_one():
    emu = Emulator(slowdown=2.0)
    got = emu.pad(0.01)
    assert 0.02 - 1e-3 <= got <= 0.02 + 0.03
    one = Emulator(slowdown=1)
    t0 = time.perf_counter()
    assert one.pad(0.5) == 0.5
    assert time.perf_counter() - t0 < 0.05 and not one.enabled
    with pytest.raises(ValueError):
        emu.pad(-1.0)


def test_invalid_slowdown():
    with pytest.raises(ConfigError, match="slowdown"):
        Emulator(slowdown=0.5)


def test_from_env(monkeypatch):
    monkeypatch.delenv("HETERO_SLOWDOWN", raising=False)
    assert Emulator.from_env().slowdown == 1.0
    monkeypatch.setenv("HETERO_SLOWDOWN", "2.5")
    assert Emulator.from_env().slowdown == 2.5
    monkeypatch.setenv("HETERO_SLOWDOWN", "fast")
    with pytest.raises(ConfigError, match="HETERO_SLOWDOWN"):
        Emulator.from_env()


def _cluster() -> Cluster:
    return Cluster.from_dict({
        "device_types": [{"id": "fast", "like": "cpu"}, {"id": "half", "like": "cpu", "scale": 0.5},
                         {"id": "third", "like": "cpu", "scale": 1 / 3}],
        "nodes": [{"name": "a", "devices": {"type": "fast", "count": 1}},
                  {"name": "b", "devices": {"type": "half", "count": 2}},
                  {"name": "c", "devices": {"type": "third", "count": 1}}],
        "network": {"bandwidth_gbps": 10}})


def test_from_cluster_ratios():
    c = _cluster()
    assert Emulator.from_cluster(c, 0).slowdown == pytest.approx(1.0)
    assert Emulator.from_cluster(c, 1).slowdown == pytest.approx(2.0)
    assert Emulator.from_cluster(c, 3).slowdown == pytest.approx(3.0)
    assert Emulator.from_cluster(c, 3, reference="half").slowdown == pytest.approx(1.5)
    with pytest.raises(ConfigError, match="slower"):
        Emulator.from_cluster(c, 0, reference="third")
    with pytest.raises(ConfigError, match="unknown device type"):
        Emulator.from_cluster(c, 0, reference="tpu")
    with pytest.raises(ConfigError, match="rank"):
        Emulator.from_cluster(c, 9)


def test_phase_moves_padding_before_the_block_and_keeps_the_total():
    """With phase 1 the padding the previous block needed is slept before the next block; the padded duration of
    each block stays slowdown x its compute (to the sleep's granularity)."""
    emu = Emulator(slowdown=3.0, phase=1.0)
    assert emu.before("fwd") == 0.0  # no previous block: nothing to size it from
    first = emu.pad(0.01, "fwd")
    assert first == pytest.approx(0.03, abs=0.01)
    t0 = time.perf_counter()
    pre = emu.before("fwd")
    assert pre == pytest.approx(0.02, abs=0.01) and time.perf_counter() - t0 >= 0.019
    second = emu.pad(0.01, "fwd")  # the remaining padding is ~0: total stays 3 x 0.01
    assert second == pytest.approx(0.03, abs=0.01)
    with pytest.raises(ConfigError, match="phase"):
        Emulator(slowdown=2.0, phase=1.5)


def test_alternating_phase_spreads_lockstep_ranks():
    c = Cluster.from_dict({"name": "c", "device_types": [{"id": "fast", "like": "cpu"},
                                                         {"id": "half", "like": "cpu", "scale": 0.5},
                                                         {"id": "third", "like": "cpu", "scale": 1 / 3}],
                           "nodes": [{"name": "a", "devices": {"type": "fast", "count": 1}},
                                     {"name": "b", "devices": {"type": "half", "count": 1}},
                                     {"name": "c", "devices": {"type": "third", "count": 2}}],
                           "network": {"bandwidth_gbps": 10}})
    slowdowns = [Emulator.from_cluster(c, r).slowdown for r in range(4)]
    assert [Emulator.alternating_phase(slowdowns, r) for r in range(4)] == [0.0, 0.0, 1.0, 0.0]


def test_padding_comes_from_the_fastest_block_so_contention_is_not_multiplied():
    """A block slowed by contention (elapsed above the kind's best) is padded to slowdown x best, not slowdown x
    elapsed; one slower than that is not padded at all; kinds keep separate bests."""
    emu = Emulator(slowdown=2.0)
    assert emu.pad(0.010, "fwd") == pytest.approx(0.020, abs=0.01)
    t0 = time.perf_counter()
    got = emu.pad(0.015, "fwd")  # contended run of the same block: padded to 2 x 0.010
    assert got == pytest.approx(0.020, abs=0.01) and time.perf_counter() - t0 < 0.015
    assert emu.pad(0.030, "fwd") == pytest.approx(0.030, abs=1e-9)  # later than its padded time: no sleep
    assert emu.pad(0.005, "bwd") == pytest.approx(0.010, abs=0.01)  # another kind, its own best
    assert emu.pad(0.008, "fwd") == pytest.approx(0.016, abs=0.01)  # a faster run lowers the best


def test_pack_cores_gives_the_fast_rank_a_core_and_slow_ranks_share():
    assert Emulator.pack_cores([1.0, 2.0, 3.0], [0, 1]) == [([0], 0.0), ([1], 1.0), ([1], 0.0)]  # slowest at 0
    assert Emulator.pack_cores([2.0, 1.0], [4, 7]) == [([7], 0.0), ([4], 0.0)]
    assert Emulator.pack_cores([2.0, 2.0, 2.0, 2.0], [0, 1]) == [([0], 0.0), ([1], 0.0), ([0], 1.0), ([1], 1.0)]
    # three 1/3-duty ranks on one core would tile it, but spreading over the cores leaves them room
    assert Emulator.pack_cores([3.0, 3.0, 3.0], [0]) == [([0], 0.0), ([0], 0.5), ([0], 1.0)]
    assert Emulator.pack_cores([3.0, 3.0, 3.0], [0, 1]) == [([0], 0.0), ([1], 0.0), ([0], 1.0)]
    assert Emulator.pack_cores([1.0, 1.0, 2.0], [0, 1]) is None  # 2.5 cores of duty on 2 cores: do not pin


def test_worker_assignment_pins_emulated_ranks(tmp_path):
    from hetero.runtime.worker import assignment

    c = tmp_path / "c.yaml"
    Cluster.from_dict({"name": "c", "device_types": [{"id": "fast", "like": "cpu"},
                                                     {"id": "half", "like": "cpu", "scale": 0.5},
                                                     {"id": "third", "like": "cpu", "scale": 1 / 3}],
                       "nodes": [{"name": "a", "devices": {"type": "fast", "count": 1}},
                                 {"name": "b", "devices": {"type": "half", "count": 1}},
                                 {"name": "c", "devices": {"type": "third", "count": 1}}],
                       "network": {"bandwidth_gbps": 10}}).to_yaml(c)
    import os

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs 2 cores")
    got = [assignment({"RANK": str(r), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": "3", "HETERO_CLUSTER": str(c),
                       "HETERO_EMULATE": "1"}) for r in range(3)]
    assert [g["HETERO_SLOWDOWN"] for g in got] == ["1", "2", "3"]
    assert [g["HETERO_EMULATE_CPUS"] for g in got] == [str(cpus[0]), str(cpus[1]), str(cpus[1])]
    assert [g["HETERO_EMULATE_PHASE"] for g in got] == ["0", "1", "0"]
    assert "HETERO_EMULATE_CPUS" not in assignment({"RANK": "0", "LOCAL_WORLD_SIZE": "3", "HETERO_CLUSTER": str(c),
                                                    "HETERO_EMULATE": "1", "HETERO_EMULATE_CPUS": "0"})


def test_kinds_are_padded_from_their_own_fastest_block_and_slowdown_one_is_a_no_op():
    emu = Emulator(slowdown=2.0)
    for _ in range(2):
        with emu.compute(kind="short"):
            _busy(0.005)
        t0 = time.perf_counter()
        with emu.compute(kind="long"):
            _busy(0.02)
        long_s = time.perf_counter() - t0
    # the long kind is padded from its own 20 ms, not from the 5 ms of the short kind
    assert 0.04 - 2e-3 <= long_s <= 0.04 + 0.03
    one = Emulator(slowdown=1.0)
    with one.compute(kind="x"):
        _busy(0.005)
    assert one.compute_s == 0.0 and one.padded_s == 0.0


def test_pad_cpu_pads_to_slowdown_times_cpu_time_not_wall_time():
    emu = Emulator(slowdown=3.0)
    t0 = time.perf_counter()
    got = emu.pad_cpu(0.01, 0.004)  # a block that waited 6 ms of its 10 ms (another process had the core)
    total = time.perf_counter() - t0
    assert 0.012 - 1e-3 <= got <= 0.012 + 0.03 and 0.002 - 1e-3 <= total <= 0.002 + 0.03
    assert emu.pad_cpu(0.02, 0.004) == 0.02  # already later than 3 x its CPU time: not padded
    with pytest.raises(ValueError):
        emu.pad_cpu(-1.0, 0.0)


def test_worker_assignment_pins_ranks_given_slowdowns_by_rank():
    import os

    from hetero.runtime.worker import assignment

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs 2 cores")
    env = {"LOCAL_WORLD_SIZE": "4", "HETERO_SLOWDOWN_BY_RANK": "2,2,2,2"}
    got = [assignment({**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(4)]
    assert [g["HETERO_SLOWDOWN"] for g in got] == ["2"] * 4
    pinned = [g["HETERO_EMULATE_CPUS"] for g in got]
    assert sorted(pinned) == sorted([str(cpus[0]), str(cpus[0]), str(cpus[1]), str(cpus[1])])  # two per core
    assert all("HETERO_EMULATE_CPUS" not in assignment({**env, "HETERO_SLOWDOWN_BY_RANK": "1,1,1,1", "RANK": str(r),
                                                        "LOCAL_RANK": str(r)}) for r in range(4))  # do not fit
    with pytest.raises(ConfigError, match="HETERO_SLOWDOWN_BY_RANK"):
        assignment({**env, "HETERO_SLOWDOWN_BY_RANK": "2,x", "RANK": "0", "LOCAL_RANK": "0"})

