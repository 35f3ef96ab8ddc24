"""Unit tests of hetero.rl.algos (GAE, PPO, GRPO) against hand-worked values: python -m pytest -q tests/test_rl_algos.py"""

import pytest
import torch

from hetero.rl import algos


def test_gae_hand_worked_trajectory():
    # one env, 3 chunk-steps, episode ends at t=1 and a new one starts at t=2
    r = torch.tensor([[1.0], [0.0], [2.0]])
    v = torch.tensor([[0.5], [0.2], [1.0]])
    d = torch.tensor([[0.0], [1.0], [0.0]])
    nv = torch.tensor([3.0])
    g, lam = 0.9, 0.5
    d2 = 2.0 + 0.9 * 3.0 - 1.0               # 3.7
    d1 = 0.0 + 0.0 - 0.2                      # -0.2 (done: no bootstrap)
    d0 = 1.0 + 0.9 * 0.2 - 0.5                # 0.68
    a2 = d2
    a1 = d1                                   # done cuts the recursion
    a0 = d0 + g * lam * a1                    # 0.68 - 0.09 = 0.59
    adv, ret = algos.gae(r, v, d, nv, gamma=g, lam=lam)
    assert adv.flatten().tolist() == pytest.approx([a0, a1, a2])
    assert ret.flatten().tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 1.0])


def test_gae_lambda1_equals_discounted_return_minus_value():
    r = torch.tensor([[1.0], [1.0], [1.0]])
    v = torch.zeros(3, 1)
    adv, _ = algos.gae(r, v, torch.zeros(3, 1), torch.zeros(1), gamma=0.5, lam=1.0)
    assert adv.flatten().tolist() == pytest.approx([1.75, 1.5, 1.0])


def test_bootstrap_truncated():
    out = algos.bootstrap_truncated(torch.tensor([1.0, 1.0]), torch.tensor([True, False]), torch.tensor([2.0, 2.0]),
                                    gamma=0.5)
    assert out.tolist() == [2.0, 1.0]


def test_normalize_masked():
    x = torch.tensor([1.0, 3.0, 100.0])
    out = algos.normalize(x, torch.tensor([True, True, False]))
    assert out.tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)
    assert algos.normalize(torch.tensor([1.0, 3.0])).tolist() == pytest.approx([-1.0, 1.0], abs=1e-6)


def test_normalize_per_group():
    # group 0 varies little, group 1 a lot: each comes out with mean 0 and std 1 of its own; masked entries 0
    x = torch.tensor([0.50, 0.52, 10.0, 30.0, 0.48, 999.0])
    g = torch.tensor([7, 7, 3, 3, 7, 3])
    out = algos.normalize(x, torch.tensor([True, True, True, True, True, False]), groups=g)
    assert out[[0, 1, 4]].tolist() == pytest.approx([0.0, 1.2247, -1.2247], abs=1e-3)
    assert out[[2, 3, 5]].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)
    # one group: the same as without groups
    y = torch.randn(9)
    assert torch.allclose(algos.normalize(y, groups=torch.zeros(9, dtype=torch.long)), algos.normalize(y))


def test_ppo_clip_behaviour():
    old = torch.zeros(4)
    # ratios 2.0 (A>0: clipped at 1.2), 0.5 (A>0: unclipped 0.5), 2.0 (A<0: unclipped -2), 0.5 (A<0: clipped -0.8)
    new = torch.log(torch.tensor([2.0, 0.5, 2.0, 0.5])).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, st = algos.ppo_actor_loss(new, old, adv, clip=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 2.0 - 0.8) / 4)
    assert st.clip_fraction == 1.0
    loss.backward()
    # clipped terms carry no gradient; unclipped ones d(-rA/4)/dlogp = -rA/4
    assert new.grad.tolist() == pytest.approx([0.0, -0.125, 0.5, 0.0])


def test_ppo_ratio_one_gives_policy_gradient_and_zero_kl():
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss, st = algos.ppo_actor_loss(lp, lp.detach(), torch.tensor([1.0, -1.0]))
    assert st.approx_kl == 0.0 and st.clip_fraction == 0.0 and st.ratio_mean == 1.0
    loss.backward()
    assert lp.grad.tolist() == pytest.approx([-0.5, 0.5])


def test_value_loss_clip_and_huber():
    ret = torch.tensor([1.0])
    # new moves from 0 to 1 (exact), clipped value 0.2 has error 0.8: max picks the clipped one
    vl = algos.value_loss(torch.tensor([1.0]), torch.tensor([0.0]), ret, clip=0.2, huber_delta=10.0)
    assert vl.item() == pytest.approx(0.5 * 0.8 ** 2)
    assert algos.value_loss(torch.tensor([1.0]), torch.tensor([0.0]), ret, clip=None).item() == 0.0
    # huber is linear beyond delta: error 30, delta 10 -> 10 * (30 - 5) = 250
    assert algos.value_loss(torch.tensor([31.0]), torch.tensor([31.0]), ret, huber_delta=10.0).item() == pytest.approx(250.0)


def test_grpo_advantages_and_filter():
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv, keep = algos.grpo_advantages(scores, 4)
    assert adv[:4].tolist() == pytest.approx([1.0, -1.0, 1.0, -1.0], abs=1e-5)
    assert adv[4:].tolist() == [0.0] * 4
    assert keep.tolist() == [True] * 4 + [False] * 4
    _, keep_all = algos.grpo_advantages(scores, 4, filter_bounds=None)
    assert keep_all.all()
    with pytest.raises(ValueError):
        algos.grpo_advantages(scores, 3)


def test_episode_scores_first_episode_only():
    r = torch.tensor([[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]])
    d = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    assert algos.episode_scores(r, d).tolist() == [1.0, 1.0]


def test_grpo_rollout_spreads_group_advantages_over_each_first_episode():
    # T=3, B=2 (one group): env 0 scores 1 (ends at t=1), env 1 scores 0 (ends at t=0, then a second episode)
    r = torch.tensor([[0.0, 0.0], [1.0, 7.0], [3.0, 7.0]])
    d = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    adv, mask = algos.grpo_rollout(r, d, 2, filter_bounds=None)
    assert adv[:, 0].tolist() == pytest.approx([1.0] * 3, abs=1e-5) and adv[:, 1].tolist() == pytest.approx([-1.0] * 3, abs=1e-5)
    assert mask.tolist() == [[True, True], [True, False], [False, False]]
    _, filtered = algos.grpo_rollout(r, d, 2, filter_bounds=(0.6, 0.9))  # group mean 0.5 < 0.6: dropped
    assert not filtered.any()
