"""Tests of context switching (offload to a host store and back): python -m pytest -q tests/test_rlsys_offload.py"""

import copy

import pytest
import torch

from hetero.rl.offload import HostStore, OffloadError


def _setup(device="cpu"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 4)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt


def _step(model, opt, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 16, generator=g).to(device)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def _snapshot(model, opt):
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
    ost = copy.deepcopy({i: {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in s.items()}
                         for i, s in enumerate(opt.state.values())})
    return sd, grads, ost


def _equal(a, b):
    sa, ga, oa = a
    sb, gb, ob = b
    assert sa.keys() == sb.keys() and ga.keys() == gb.keys() and len(ga) > 0
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and all(torch.equal(ga[k], gb[k]) for k in ga)
    for i in oa:
        for k in oa[i]:
            assert torch.equal(oa[i][k], ob[i][k]) if torch.is_tensor(oa[i][k]) else oa[i][k] == ob[i][k]


def _round_trip(device):
    model, opt = _setup(device)
    ref_model, ref_opt = _setup(device)
    for s in range(3):
        _step(model, opt, s, device)
        _step(ref_model, ref_opt, s, device)
    before = _snapshot(model, opt)
    store, lines = HostStore(), []
    st = store.offload("actor", model, opt, log=lines.append)
    n_params = sum(p.numel() * 4 for p in ref_model.parameters())
    # params + grads + two AdamW moments (+ BatchNorm buffers) left the device
    assert st.bytes >= 4 * n_params
    assert all(p.numel() == 0 and p.grad is None for p in model.parameters())
    assert all(v["exp_avg"].numel() == 0 for v in opt.state.values())
    rl = store.reload("actor", model, opt, log=lines.append)
    assert rl.bytes == st.bytes and lines[0].startswith("offload actor") and lines[1].startswith("reload actor")
    _equal(before, _snapshot(model, opt))
    # training continues exactly as without the switch
    for s in range(3, 6):
        assert _step(model, opt, s, device) == _step(ref_model, ref_opt, s, device)
    _equal(_snapshot(model, opt), _snapshot(ref_model, ref_opt))
    return st, rl


def test_offload_round_trip_is_exact_and_training_continues_identically():
    st, rl = _round_trip("cpu")
    assert st.device_freed_bytes == 0 and st.seconds >= 0


def test_offload_misuse_is_an_error():
    model, opt = _setup()
    store = HostStore()
    with pytest.raises(OffloadError, match="not offloaded"):
        store.reload("actor", model, opt)
    store.offload("actor", model, opt, log=None)
    with pytest.raises(OffloadError, match="already offloaded"):
        store.offload("actor", model, opt, log=None)
    model[0].weight.data = torch.zeros(32, 16)
    with pytest.raises(OffloadError, match="replaced while offloaded"):
        store.reload("actor", model, opt, log=None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offload_frees_device_memory_on_gpu():
    st, rl = _round_trip("cuda")
    assert st.device_freed_bytes >= 0.9 * st.bytes
    assert -rl.device_freed_bytes >= 0.9 * rl.bytes
