"""The shared PPO update (hetero/rl/update.py): python -m pytest -q tests/test_rl_update.py"""

import pytest
import torch

from hetero.config import build
from hetero.models.vla import VLAConfig, VLAPolicy
from hetero.rl.config import RLConfig
from hetero.rl.policy import SamplerConfig, replay, sample, save_checkpoint
from hetero.rl.update import make_optimizer, ppo_update, reference_policy, resume_optimizer


def _batch(model: VLAPolicy, n: int = 32, state_dim: int = 6) -> dict:
    g = torch.Generator().manual_seed(0)
    obs = {"state": torch.randn(n, state_dim, generator=g), "instruction": ["reach the goal"] * n}
    s = sample(model, obs, SamplerConfig(method="flow_sde", num_steps=3, chunk=4), generator=g)
    return {"obs": obs, "chain": s.chain, "denoise_ind": s.denoise_ind, "logp": s.logp, "value": s.value,
            "adv": torch.randn(n, generator=g), "ret": torch.rand(n, generator=g)}


def _model_cfg(**algo) -> tuple[VLAPolicy, RLConfig]:
    """A small seeded policy and an RL config with one update epoch at lr 1e-3 (``algo`` overrides)."""
    torch.manual_seed(0)
    model = VLAPolicy(VLAConfig(state_dim=6, action_dim=3, horizon=4, text="learned"))
    cfg = build(RLConfig, {"sampler": {"method": "flow_sde", "num_steps": 3, "chunk": 4}, "policy": {"horizon": 4},
                           "algo": {"critic_warmup_iters": 0, "lr": 1e-3, "update_epochs": 1, **algo}})
    return model, cfg


@pytest.mark.parametrize("expert_only", [True, False])
def test_train_expert_only_freezes_the_prefix_encoder(expert_only):
    model, cfg = _model_cfg(train_expert_only=expert_only, minibatch_size=16)
    opt, policy_params, value_params = make_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = ppo_update(model, opt, _batch(model), cfg, iteration=1)
    assert stats["samples"] == 32 and stats["kl"] >= 0
    assert stats["update_steps"] == 2 and stats["update_compute_s"] > 0 and stats["update_comm_s"] == 0.0  # 32 / 16
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    prefix = {n for n in before if not model.is_expert_param(n) and not n.startswith("value_head")}
    assert any(model.is_expert_param(n) for n in moved) and any(n.startswith("value_head") for n in moved)
    if expert_only:
        assert not moved & prefix, f"frozen prefix parameters moved: {sorted(moved & prefix)}"
        assert len(policy_params) == sum(1 for n, _ in model.named_parameters() if model.is_expert_param(n))
    else:
        assert moved & prefix
    assert len(value_params) == sum(1 for n, _ in model.named_parameters() if n.startswith("value_head"))


def test_resumed_optimizer_keeps_the_moments_but_takes_this_runs_learning_rates():
    """A resumed run that changes algo.lr/value_lr (``--set``) gets them; the Adam state still comes from the file."""
    model, cfg = _model_cfg(minibatch_size=16)
    opt, _, _ = make_optimizer(model, cfg)
    ppo_update(model, opt, _batch(model), cfg, iteration=1)
    state = opt.state_dict()
    _, cfg2 = _model_cfg(minibatch_size=16, lr=2e-4, value_lr=5e-3)
    opt2, _, _ = make_optimizer(model, cfg2)
    assert resume_optimizer(opt2, state, cfg2) == ["algo.lr 0.001 -> 0.0002", "algo.value_lr 0.001 -> 0.005"]
    assert [g["lr"] for g in opt2.param_groups] == [2e-4, 5e-3]
    p = opt.param_groups[0]["params"][0]
    assert torch.equal(opt2.state[opt2.param_groups[0]["params"][0]]["exp_avg"], opt.state[p]["exp_avg"])
    assert resume_optimizer(opt2, opt2.state_dict(), cfg2) == []


def test_per_task_advantage_normalisation_ignores_each_tasks_scale():
    """adv_norm=task: rescaling and shifting one task's advantages leaves the update unchanged ("batch" does not)."""
    def run(adv_norm: str, scale: float) -> dict:
        model, cfg = _model_cfg(adv_norm=adv_norm, minibatch_size=32)
        opt, _, _ = make_optimizer(model, cfg)
        b = _batch(model)
        b["obs"]["instruction"] = ["reach the goal", "push the puck"] * 16
        b["adv"][1::2] = b["adv"][1::2] * scale + 3.0 * (scale != 1.0)
        ppo_update(model, opt, b, cfg, iteration=1)
        return {n: p.detach().clone() for n, p in model.named_parameters() if model.is_expert_param(n)}

    def gap(a, b) -> float:  # largest parameter difference (lr 1e-3: a changed update moves params ~1e-3)
        return max((a[n] - b[n]).abs().max().item() for n in a)
    assert gap(run("task", 1.0), run("task", 50.0)) < 1e-4  # float32 rounding of the rescaled advantages only
    assert gap(run("batch", 1.0), run("batch", 50.0)) > 1e-3


@pytest.mark.parametrize("anchor", ["bc", "sil"])
def test_anchor_pulls_the_expert_towards_its_chunks(anchor):
    """algo.bc_coef (demos, bc_data) and algo.sil_coef (successful rollout chunks, sil_data): with zero advantages
    PPO leaves the expert where it is; the flow-matching term then moves it so that its loss on the anchor's chunks
    falls (and it is logged as bc_loss / sil_loss), and it stays off during the critic warm-up."""
    g = torch.Generator().manual_seed(1)
    chunks = {"state": torch.randn(64, 6, generator=g), "actions": torch.rand(64, 4, 3, generator=g) * 2 - 1,
              "instruction": ["reach the goal"] * 64}

    def fm(model) -> float:
        torch.manual_seed(5)
        with torch.no_grad():
            return model.fm_loss({"state": chunks["state"], "instruction": chunks["instruction"]},
                                 chunks["actions"]).item()

    def run(coef: float, warmup: int = 0) -> tuple[dict, float, float]:
        model, cfg = _model_cfg(**{f"{anchor}_coef": coef}, bc_batch_size=32, minibatch_size=32, update_epochs=20,
                                entropy_bonus=0.0, critic_warmup_iters=warmup)
        opt, _, _ = make_optimizer(model, cfg)
        b = _batch(model)
        b["adv"] = torch.zeros_like(b["adv"])
        before = fm(model)
        stats = ppo_update(model, opt, b, cfg, iteration=1, **{f"{anchor}_data": chunks})
        return stats, before, fm(model)

    other = {"bc": "sil", "sil": "bc"}[anchor]
    stats, before, after = run(0.0)
    assert stats[f"{anchor}_loss"] == 0.0 and abs(after - before) < 1e-6
    stats, before, after = run(1.0)
    assert stats[f"{anchor}_loss"] > 0 and stats[f"{other}_loss"] == 0.0 and after < 0.9 * before
    stats, before, after = run(1.0, warmup=1)  # iteration 1 is a warm-up iteration: only the value head moves
    assert stats[f"{anchor}_loss"] == 0.0 and abs(after - before) < 1e-6


def test_anchored_update_does_not_depend_on_the_global_rng():
    """The anchors' flow-matching noise comes from the update's seeded generator, so two runs with the same seed
    are identical whatever else drew from torch's global RNG (it did not: twenty-second session)."""
    g = torch.Generator().manual_seed(1)
    chunks = {"state": torch.randn(64, 6, generator=g), "actions": torch.rand(64, 4, 3, generator=g) * 2 - 1,
              "instruction": ["reach the goal"] * 64}

    def run(global_seed: int) -> list[torch.Tensor]:
        model, cfg = _model_cfg(bc_coef=0.5, sil_coef=0.5, bc_batch_size=16, minibatch_size=16)
        opt, _, _ = make_optimizer(model, cfg)
        b = _batch(model)
        torch.manual_seed(global_seed)
        ppo_update(model, opt, b, cfg, iteration=1, bc_data=chunks, sil_data=chunks)
        return [p.detach().clone() for p in model.parameters()]

    a, b = run(1), run(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_anchor_distractors_redraw_the_named_tasks_rows_in_both_anchors(monkeypatch):
    """algo.anchor_distractors: the flow-matching loss of both anchors sees reach's puck entries (4:7, 22:25)
    redrawn in reach's rows and every other entry and row as in the data."""
    pytest.importorskip("metaworld", reason="metaworld not installed: pip install -e .[rl]")  # resolves MT10
    g = torch.Generator().manual_seed(1)
    state = torch.randn(64, 39, generator=g)
    state[:, 0] = torch.arange(64.0)  # each row's id
    state[:, 22:25] = state[:, 4:7]
    instr = ["reach the red goal position", "push the puck to the goal"] * 32
    chunks = {"state": state, "actions": torch.rand(64, 4, 3, generator=g) * 2 - 1, "instruction": instr}
    torch.manual_seed(0)
    model = VLAPolicy(VLAConfig(state_dim=39, action_dim=3, horizon=4, text="learned"))
    cfg = build(RLConfig, {"sampler": {"method": "flow_sde", "num_steps": 3, "chunk": 4}, "policy": {"horizon": 4},
                           "env": {"tasks": "MT10"},
                           "algo": {"critic_warmup_iters": 0, "update_epochs": 1, "minibatch_size": 32,
                                    "bc_batch_size": 16, "bc_coef": 0.5, "sil_coef": 0.5,
                                    "anchor_distractors": ["reach-v3"]}})
    seen = []
    fm_loss = VLAPolicy.fm_loss

    def spy(self, obs, actions, **kw):
        seen.append(obs)
        return fm_loss(self, obs, actions, **kw)
    monkeypatch.setattr(VLAPolicy, "fm_loss", spy)
    opt, _, _ = make_optimizer(model, cfg)
    b = _batch(model, state_dim=39)
    stats = ppo_update(model, opt, b, cfg, iteration=1, bc_data=chunks, sil_data=chunks)
    assert stats["bc_loss"] > 0 and stats["sil_loss"] > 0 and len(seen) == 2  # one minibatch, both anchors
    for obs in seen:
        src = state[obs["state"][:, 0].long()]
        reach = torch.tensor([i.startswith("reach") for i in obs["instruction"]])
        assert reach.any() and (~reach).any()
        keep = [i for i in range(39) if not (4 <= i < 7 or 22 <= i < 25)]
        assert torch.equal(obs["state"][:, keep], src[:, keep])
        assert torch.equal(obs["state"][~reach], src[~reach])
        assert not torch.isclose(obs["state"][reach][:, 4:7], src[reach][:, 4:7]).any()
        assert torch.equal(obs["state"][reach][:, 4:7], obs["state"][reach][:, 22:25])
        assert (obs["state"][reach][:, 4] >= -0.1).all() and (obs["state"][reach][:, 4] <= 0.1).all()


def test_reference_kl_pulls_the_policy_back_to_the_reference(tmp_path):
    """algo.ref_kl_coef: the reference is the frozen init checkpoint (None when off); with zero advantages the
    KL term moves a policy that has drifted from it back towards it on the batch's chains (logged as ref_kl), and
    it stays off during the critic warm-up."""
    model, cfg = _model_cfg(ref_kl_coef=1.0)
    save_checkpoint(tmp_path / "sft.pt", model=model)
    cfg.train.init_checkpoint = str(tmp_path / "sft.pt")
    ref = reference_policy(cfg)
    assert torch.equal(ref.velocity_out.bias, model.velocity_out.bias)
    assert not any(p.requires_grad for p in ref.parameters())
    cfg.algo.ref_kl_coef = 0.0
    assert reference_policy(cfg) is None

    def run(coef: float, warmup: int = 0) -> tuple[dict, float, float]:
        drifted, cfg = _model_cfg(ref_kl_coef=coef, minibatch_size=32, update_epochs=20, entropy_bonus=0.0,
                                  critic_warmup_iters=warmup)
        with torch.no_grad():
            drifted.velocity_out.bias.add_(0.5)
        opt, _, _ = make_optimizer(drifted, cfg)
        b = _batch(drifted)
        b["adv"] = torch.zeros_like(b["adv"])

        def kl() -> float:
            with torch.no_grad():
                return replay(drifted, b["obs"], b["chain"], b["denoise_ind"], cfg.sampler, ref=ref).ref_kl.mean().item()

        before = kl()
        stats = ppo_update(drifted, opt, b, cfg, iteration=1, ref=ref)
        return stats, before, kl()

    stats, before, after = run(0.0)
    assert stats["ref_kl"] == 0.0 and before > 0 and abs(after - before) < 1e-6
    stats, before, after = run(1.0)
    assert stats["ref_kl"] > 0 and after < 0.5 * before
    stats, before, after = run(1.0, warmup=1)  # iteration 1 is a warm-up iteration: only the value head moves
    assert stats["ref_kl"] == 0.0 and abs(after - before) < 1e-6
