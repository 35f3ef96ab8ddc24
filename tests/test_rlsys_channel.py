"""Tests of the RL channels (ordering, back-pressure, local variant) and of weight sync version numbers, on gloo
CPU ranks (world size 2-3): python -m pytest -q tests/test_rlsys_channel.py"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import torch

from hetero.rl.channel import ChannelError, Channels, LocalChannel, P2PChannel
from hetero.runtime.testing import spawn


def _init(rank, backend="gloo"):
    import torch.distributed as dist

    if backend == "hetero":
        import hetero.communicator as hc

        hc.init_process_group(timeout=timedelta(seconds=30), device_type="cpu", device="cpu")
    else:
        dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    return dist


def _done(dist):
    dist.barrier()
    dist.destroy_process_group()


def _ordering(rank, backend):
    dist = _init(rank, backend)
    ch = P2PChannel(rank=rank, src=0, dst=1, capacity=8, tag_base=1)
    got = []
    if rank == 0:
        for i in range(6):  # two keys interleaved; a dict of tensors of several dtypes + python values
            ch.send(i % 2, {"x": torch.full((3, 2), float(i)), "i": torch.tensor([i]), "ids": torch.arange(i + 1),
                            "instruction": [f"task {i}"], "meta": {"seq": i}})
    else:
        for key in (1, 0, 0, 1, 1, 0):  # keys received out of send order: each key keeps its own order
            m = ch.recv(key)
            assert m["x"].shape == (3, 2) and m["x"].dtype == torch.float32 and m["i"].dtype == torch.int64
            assert m["ids"].tolist() == list(range(m["meta"]["seq"] + 1)) and m["instruction"] == [f"task {m['i'].item()}"]
            got.append((key, m["meta"]["seq"]))
    ch.close()
    _done(dist)
    return got


@pytest.mark.parametrize("backend", ["gloo", "hetero"])
def test_p2p_channel_keeps_order_per_key_and_carries_dicts(backend):
    out = spawn(_ordering, 2, args=(backend,), timeout_s=60)
    assert out[1] == [(1, 1), (0, 0), (0, 2), (1, 3), (1, 5), (0, 4)]


def _backpressure(rank, capacity, delay):
    dist = _init(rank)
    ch = P2PChannel(rank=rank, src=0, dst=1, capacity=capacity)
    t0 = time.perf_counter()
    times = []
    if rank == 0:
        for i in range(capacity + 2):
            ch.send(0, {"x": torch.full((1000,), float(i))})
            times.append(time.perf_counter() - t0)
    else:
        time.sleep(delay)
        for i in range(capacity + 2):
            times.append(time.perf_counter() - t0)
            assert ch.recv(0)["x"][0].item() == i
            time.sleep(0.1)
    ch.close()
    _done(dist)
    return times, ch.blocked_s if rank == 0 else 0.0


def test_p2p_channel_back_pressure_blocks_the_sender_at_capacity():
    delay = 1.0
    (send_t, blocked), (recv_t, _) = spawn(_backpressure, 2, args=(2, delay), timeout_s=60)
    # rank clocks start at slightly different moments: compare with margins far above that skew
    assert send_t[0] < delay / 2 and send_t[1] < delay / 2       # within capacity: no waiting
    assert send_t[2] > delay * 0.8                                # third send waits for the first receive
    assert send_t[3] > send_t[2] + 0.05                           # then one credit per receive
    assert blocked > delay * 0.7


def _three(rank):
    dist = _init(rank)
    chans = Channels(rank=rank, capacity=2)
    out = []
    if rank == 0:  # env: obs to rollout 1, which answers with actions; rank 2 gets a trajectory from rank 1
        c_obs, c_act = chans.get("obs", 0, 1, tag=1), chans.get("act", 1, 0, tag=2)
        for t in range(4):
            c_obs.send(0, {"obs": torch.full((2,), float(t))})
            out.append(c_act.recv(0)["a"].tolist())
    elif rank == 1:
        c_obs, c_act, c_traj = chans.get("obs", 0, 1, tag=1), chans.get("act", 1, 0, tag=2), chans.get("traj", 1, 2, tag=3)
        for _t in range(4):
            o = c_obs.recv(0)["obs"]
            c_act.send(0, {"a": o * 10})
            c_traj.send(0, {"o": o})
    else:
        c_traj = chans.get("traj", 1, 2, tag=3)
        out = [c_traj.recv(0)["o"][0].item() for _ in range(4)]
    chans.close()
    _done(dist)
    return out


def test_three_ranks_env_rollout_actor_roundtrip():
    out = spawn(_three, 3, timeout_s=60)
    assert out[0] == [[0.0, 0.0], [10.0, 10.0], [20.0, 20.0], [30.0, 30.0]]
    assert out[2] == [0.0, 1.0, 2.0, 3.0]


def test_local_channel_order_capacity_and_misuse():
    ch = LocalChannel(capacity=2, timeout_s=0.2)
    ch.send(1, {"a": 1})
    ch.send(0, {"a": 2})
    with pytest.raises(ChannelError, match="full"):
        ch.send(0, {"a": 3})
    assert ch.recv(0) == {"a": 2} and ch.recv(1) == {"a": 1}
    with pytest.raises(ChannelError, match="no message under key 5"):
        ch.recv(5)
    ch.close()
    with pytest.raises(ChannelError, match="src == dst"):
        P2PChannel(rank=0, src=0, dst=0)
    with pytest.raises(ChannelError, match="neither end"):
        P2PChannel(rank=2, src=0, dst=1)
    chans = Channels(rank=0)
    assert isinstance(chans.get("x", 0, 0, tag=1), LocalChannel)
    with pytest.raises(ChannelError, match="tags"):
        chans.get("x", 0, 0, tag=2)


def _sync(rank):
    from hetero.rl.weightsync import WeightSync, WeightSyncError

    dist = _init(rank)
    torch.manual_seed(rank)  # every rank starts with different weights
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    ws = WeightSync(src=0, ranks=[0, 1, 2])
    seen = []
    for v in (1, 2, 5):
        if rank == 0:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.5)
            ws.push(model, version=v)
            seen.append(v)
        else:
            seen.append(ws.pull(model))
    err = ""
    if rank == 0:
        try:
            ws.push(model, version=5)
        except WeightSyncError as e:
            err = str(e)
    sd = {k: v.tolist() for k, v in model.state_dict().items()}
    _done(dist)
    return seen, sd, err


def test_weight_sync_versions_and_exact_weights():
    out = spawn(_sync, 3, timeout_s=60)
    for seen, sd, _ in out:
        assert seen == [1, 2, 5]
        for k in sd:
            assert sd[k] == out[0][1][k]
    assert "version must increase" in out[0][2]
