"""Unit tests of hetero.rl.flow against hand-computed values: python -m pytest -q tests/test_rl_flow.py"""

import math

import pytest
import torch

from hetero.rl import flow


def test_time_grid_n4():
    assert torch.allclose(flow.time_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    with pytest.raises(ValueError):
        flow.time_grid(0)


def test_sde_sigma_and_std_n4_a05_by_hand():
    # sigma_i = 0.5 * sqrt(t_i / (1 - t'_i)), t = 1, .75, .5, .25 with t'_0 = .75
    want_sigma = [0.5 * math.sqrt(1 / 0.25), 0.5 * math.sqrt(0.75 / 0.25), 0.5 * math.sqrt(0.5 / 0.5),
                  0.5 * math.sqrt(0.25 / 0.75)]
    assert want_sigma == pytest.approx([1.0, 0.8660254, 0.5, 0.2886751], abs=1e-6)
    assert flow.sde_sigmas(4, 0.5).tolist() == pytest.approx(want_sigma, abs=1e-6)
    # std = sqrt(1/4) * sigma: 0.5, 0.433, 0.25, 0.144 (step 0 always equals a)
    assert flow.sde_step_std(4, 0.5).tolist() == pytest.approx([0.5, 0.4330127, 0.25, 0.1443376], abs=1e-6)
    assert flow.sde_step_std(5, 0.3).tolist() == pytest.approx([0.3, 0.268, 0.164, 0.110, 0.067], abs=1e-3)


def test_ode_step_and_sde_mean_by_hand():
    x = torch.tensor([[[0.4]]])
    v = torch.tensor([[[2.0]]])
    assert flow.ode_step(x, v, 0.25).item() == pytest.approx(0.4 - 0.5)
    # t=.75, delta=.25, sigma=.5: x0 = .4 - 1.5 = -1.1, x1 = .4 + .5 = .9, s = .5
    # mean = -1.1 * .5 + .9 * (.5 - .25 * .25 / 1.5) = -.55 + .9 * (.5 - .0416667) = -.1375
    assert flow.sde_step_mean(x, v, 0.75, 0.25, 0.5).item() == pytest.approx(-0.1375, abs=1e-6)
    # sigma = 0 gives back the Euler step exactly
    assert flow.sde_step_mean(x, v, 0.75, 0.25, 0.0).item() == pytest.approx(flow.ode_step(x, v, 0.25).item())


def test_drift_correction_keeps_ode_marginal():
    """With the exact velocity of a point mass at `a`, x_t ~ N((1-t)a, t^2): the SDE step's next state has the
    ODE's mean exactly and its variance up to O(delta^2)."""
    g = torch.Generator().manual_seed(0)
    a = torch.tensor(0.7)
    n = 400_000
    for num_steps, level in [(4, 0.5), (10, 0.5), (5, 0.3)]:
        t_grid = flow.time_grid(num_steps)
        sig = flow.sde_sigmas(num_steps, level)
        std = flow.sde_step_std(num_steps, level)
        for i in range(1, num_steps):  # t=1 has no finite exact velocity for a point mass at x_1=noise only
            t, s = t_grid[i].item(), t_grid[i + 1].item()
            delta = t - s
            eps = torch.randn(n, generator=g)
            x = t * eps + (1 - t) * a
            v = (x - a) / t
            ode = flow.ode_step(x, v, delta)
            sde = flow.sde_step_mean(x, v, t, delta, sig[i]) + std[i] * torch.randn(n, generator=g)
            assert ode.mean().item() == pytest.approx((1 - s) * a.item(), abs=4e-3)
            assert sde.mean().item() == pytest.approx(ode.mean().item(), abs=4e-3)
            # variance: ODE gives s^2 exactly; SDE gives s^2 + O(delta^2) (analytic excess below)
            k = s - sig[i].item() ** 2 * delta / (2 * t)
            want_var = k * k + std[i].item() ** 2
            sg2 = sig[i].item() ** 2
            assert want_var - s * s == pytest.approx(delta ** 2 * (sg2 / t + sg2 * sg2 / (4 * t * t)), rel=1e-4)
            assert sde.var().item() == pytest.approx(want_var, rel=1e-2)


def test_bounded_std_range_and_midpoint():
    raw = torch.tensor([-100.0, 0.0, 100.0])
    s = flow.bounded_std(raw, 0.08, 0.16)
    assert s[0].item() == pytest.approx(0.08, rel=1e-5)
    assert s[2].item() == pytest.approx(0.16, rel=1e-5)
    assert s[1].item() == pytest.approx(math.sqrt(0.08 * 0.16), rel=1e-5)  # geometric mean: mid of log-var


def test_gaussian_logprob_by_hand_and_zero_std():
    lp = flow.gaussian_logprob(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([2.0]))
    assert lp.item() == pytest.approx(-0.5 * 0.25 - math.log(2.0) - 0.5 * math.log(2 * math.pi))
    assert flow.gaussian_logprob(torch.tensor([3.0]), torch.tensor([0.0]), torch.tensor([0.0])).item() == 0.0
    assert flow.gaussian_entropy(torch.tensor([1.0])).item() == pytest.approx(0.5 * math.log(2 * math.pi * math.e))


def test_chain_logprob_is_mean_of_terms():
    g = torch.Generator().manual_seed(1)
    chain = torch.randn(2, 4, 3, 2, generator=g)
    means = torch.randn(2, 3, 3, 2, generator=g)
    stds = torch.rand(2, 3, 3, 2, generator=g) + 0.1
    terms = [flow.gaussian_logprob(chain[:, 0], torch.zeros(2, 3, 2), torch.ones(2, 3, 2))]
    terms += [flow.gaussian_logprob(chain[:, i + 1], means[:, i], stds[:, i]) for i in range(3)]
    want = torch.stack(terms).mean(0)
    assert torch.allclose(flow.chain_logprob(chain, means, stds), want)


def test_interpolate_and_train_times():
    a, e = torch.ones(2, 1, 1), torch.zeros(2, 1, 1)
    x, u = flow.interpolate(a, e, torch.tensor([0.25, 1.0]))
    assert x.flatten().tolist() == pytest.approx([0.75, 0.0])
    assert u.flatten().tolist() == [-1.0, -1.0]
    t = flow.sample_train_times(10_000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0.001 and t.max() <= 1.0
    assert t.mean().item() == pytest.approx(0.6 * 0.999 + 0.001, abs=0.01)  # E[Beta(1.5,1)] = 0.6


def test_mean_shift_kl_is_the_gaussian_kl_with_a_shared_std():
    g = torch.Generator().manual_seed(0)
    mean, ref_mean = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    std = torch.rand(5, 4, generator=g) + 0.1
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std), torch.distributions.Normal(ref_mean, std))
    assert torch.allclose(flow.mean_shift_kl(mean, ref_mean, std), want, atol=1e-6)
    assert flow.mean_shift_kl(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.5)).item() == pytest.approx(2.0)
