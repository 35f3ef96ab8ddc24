"""Failures of the ``hetero`` backend are catchable errors that say what went wrong.

Mismatched sizes are caught before any data moves (and the group stays usable); a peer that dies and a peer
that never arrives give a CommError naming the op, the group and the ranks waited for; bad settings give a
ConfigError naming the variable. Also single-process checks of the topology and of a world of one.

    python -m pytest -q tests/test_comm_failures.py
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from test_comm_harness import launch  # noqa: I001

from hetero.communicator.topology import CommConfig, Declaration, Topology
from hetero.config import ConfigError


def _mismatch(rank: int, world: int):
    from hetero.communicator import CommError

    msgs = []
    for n in ((10, 12), (5, 5)):
        t = torch.ones(n[rank % 2])
        try:
            dist.all_reduce(t)
            msgs.append(("ok", t.sum().item()))
        except CommError as e:
            msgs.append(("CommError", e.op, str(e)))
    outs = [torch.empty(3) for _ in range(world)]
    try:  # the output list says rank r sends 3 elements, but this rank's input has 4
        dist.all_gather(outs, torch.ones(4))
        msgs.append(("ok",))
    except CommError as e:
        msgs.append(("CommError", e.op, str(e)))
    return msgs


@pytest.mark.parametrize("types", [["a", "b"], ["a", "a"]], ids=["two-types", "one-type"])
def test_size_mismatch_is_caught_before_sending(types):
    outs = launch(_mismatch, world=2, types=types, timeout_s=90)
    for msgs in outs:
        assert msgs[0][0] == "CommError" and msgs[0][1] == "all_reduce", msgs
        assert "numel=10" in msgs[0][2] and "numel=12" in msgs[0][2], msgs[0][2]
        assert msgs[1] == ("ok", 10.0), "group must stay usable after a caught mismatch"
        assert msgs[2][0] == "CommError" and "output[" in msgs[2][2], msgs[2]


def _mismatch_on_third_call(rank: int, world: int):
    from hetero.communicator import CommError

    msgs = []
    for n in ((4, 4), (6, 6), (10, 12), (5, 5)):
        try:
            dist.all_reduce(torch.ones(n[rank % 2]))
            msgs.append("ok")
        except CommError as e:
            msgs.append(f"CommError {e.op}")
    return msgs


def test_sampled_size_checks_cover_the_scheduled_calls():
    """HETERO_CHECK_SIZES=2 checks calls 0, 2, 4, ... of each op (the same calls on every rank): a mismatch on
    call 2 is caught, and the call after a caught mismatch is checked too."""
    outs = launch(_mismatch_on_third_call, world=2, types=["a", "a"], env={"HETERO_CHECK_SIZES": "2"},
                  timeout_s=90)
    assert outs == [["ok", "ok", "CommError all_reduce", "ok"]] * 2, outs


def _peer_dies(rank: int, world: int):
    from hetero.communicator import CommError

    dist.all_reduce(torch.ones(4))
    if rank == 1:
        os._exit(0)
    time.sleep(0.5)
    t0 = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1 << 16))
        return ("no error", time.monotonic() - t0)
    except CommError as e:
        return ("CommError", e.op, e.group, list(e.ranks), str(e), time.monotonic() - t0)
    finally:
        dist.destroy_process_group()


def test_dead_peer_raises_comm_error():
    outs = launch(_peer_dies, world=2, types=["a", "b"], expect_fail=True, timeout_s=60, op_timeout_s=10)
    status, res = outs[0]
    assert status == "ok", res
    assert res[0] == "CommError", res
    assert res[1] in ("all_reduce", "all_gather"), res  # the size check (an all_gather) may be what fails
    assert 1 in res[3], res


def _late_peer(rank: int, world: int):
    from hetero.communicator import CommError

    if rank == 1:
        time.sleep(6)
        dist.destroy_process_group()
        return ("slept",)
    t0 = time.monotonic()
    try:
        dist.all_reduce(torch.ones(8))
        return ("no error", time.monotonic() - t0)
    except CommError as e:
        return ("CommError", e.op, list(e.ranks), str(e), time.monotonic() - t0)
    finally:
        dist.destroy_process_group()


def test_timeout_raises_comm_error_naming_the_ranks():
    outs = launch(_late_peer, world=2, types=["a", "b"], expect_fail=True, timeout_s=60, op_timeout_s=2)
    status, res = outs[0]
    assert status == "ok", res
    assert res[0] == "CommError" and res[2] == [1], res
    assert 1.5 < res[-1] < 15, f"should fail soon after the 2 s timeout, took {res[-1]:.1f}s"


# -- single process ---------------------------------------------------------------------------------------
def test_config_errors_name_the_variable():
    with pytest.raises(ConfigError, match="HETERO_BRIDGE"):
        CommConfig.from_env(env={"HETERO_BRIDGE": "nccl"})
    with pytest.raises(ConfigError, match="HETERO_CHUNK_BYTES"):
        CommConfig.from_env(env={"HETERO_CHUNK_BYTES": "lots"})
    with pytest.raises(ConfigError, match="chunk_bytes"):
        CommConfig.from_env(env={"HETERO_CHUNK_BYTES": "12"})
    with pytest.raises(ConfigError, match="HETERO_CHECK_SIZES"):
        CommConfig.from_env(env={"HETERO_CHECK_SIZES": "maybe"})
    assert [CommConfig.from_env(env={"HETERO_CHECK_SIZES": v}).check_every for v in ("always", "off", "8", "1")] == \
        [1, 0, 8, 1]
    assert CommConfig.from_env(env={}).check_every == 64
    assert CommConfig.from_env(env={"HETERO_BRIDGE": "MPI"}).bridge == "mpi"


def test_topology_groups_by_type_and_rejects_mixed_kinds():
    d = [Declaration(device_type=t, device_kind="cpu") for t in ["x", "y", "x", "z"]]
    topo = Topology.build(rank=2, declarations=d)
    assert [t.ranks for t in topo.types] == [(0, 2), (1,), (3,)]
    assert topo.leaders == (0, 1, 3) and topo.mine.device_type == "x" and not topo.single_type
    bad = [Declaration(device_type="x", device_kind="cpu"), Declaration(device_type="x", device_kind="cuda")]
    with pytest.raises(ConfigError, match="different torch devices"):
        Topology.build(rank=0, declarations=bad)


def test_world_of_one_in_process():
    import hetero.communicator as hc

    pg = None
    try:
        hc.init_process_group(device_type="cpu-slow", store=dist.HashStore(), rank=0, world_size=1,
                              timeout=timedelta(seconds=10))
        pg = dist.group.WORLD
        d = hc.describe()
        assert d["backend"] == "hetero" and d["rank_types"] == ["cpu-slow"]
        t = torch.arange(4.0)
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
        assert torch.equal(t, torch.arange(4.0))
        assert dist.get_backend() == "hetero"
    finally:
        if pg is not None:
            dist.destroy_process_group()


def test_plain_torch_init_reads_the_environment(monkeypatch):
    import hetero.communicator as hc

    monkeypatch.setenv("HETERO_DEVICE_TYPE", "mi250")
    monkeypatch.setenv("HETERO_DEVICE", "cpu")
    monkeypatch.setenv("HETERO_BRIDGE", "gloo")
    dist.init_process_group("hetero", store=dist.HashStore(), rank=0, world_size=1, timeout=timedelta(seconds=10))
    try:
        d = hc.describe()
        assert d["rank_types"] == ["mi250"] and d["groups"][0]["library"] == "none (one rank)"
        sub = dist.new_group([0], backend="hetero")  # a sub-group inherits the declaration
        assert hc.describe(sub)["rank_types"] == ["mi250"]
        t = torch.ones(3, dtype=torch.bfloat16)
        dist.all_reduce(t, group=sub)
        assert torch.equal(t, torch.ones(3, dtype=torch.bfloat16))
    finally:
        dist.destroy_process_group()
