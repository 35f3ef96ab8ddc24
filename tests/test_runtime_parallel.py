"""Correctness of hetero.parallelize on CPU ranks (gloo): every parallel layout matches single-process training.

World size 2 and 4: weighted DP with unequal shares, uneven PP ([3,1]-style layer ranges) under GPipe, 1F1B and
interleaved 1F1B, speed-proportional TP (hetero's uneven column/row-parallel layers), TP with recomputation, and
DP x PP. Each rank checks its loss and gradients against a single-process reference after every step (1e-5).

    python -m pytest -q tests/test_runtime_parallel.py
"""

from __future__ import annotations

import pytest
import torch

from hetero.runtime.testing import spawn

TOL = 1e-5
STEPS = 3


def _plan(stages, *, global_batch=8, microbatches=2, schedule="1f1b", num_layers=6, virtual_stages=1):
    from hetero.autoparallel.plan import Plan

    return Plan.from_dict(dict(model="gpt-tiny", num_layers=num_layers, global_batch=global_batch,
                               num_microbatches=microbatches, seq_len=16, schedule=schedule, dtype="fp32",
                               virtual_stages=virtual_stages, stages=stages))


def _cfg(plan):
    from hetero.models.gpt import GPTConfig

    return GPTConfig(vocab=64, hidden=32, heads=4, num_layers=plan.num_layers - 2, seq_len=16, ffn=96)


def _full(t):
    """A DTensor's full value (collective over its mesh); plain tensors unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _check(rank: int, plans: dict) -> dict:
    """Worker: train every plan for STEPS steps next to a local single-process reference; return max errors."""
    import hetero
    from hetero.data import SyntheticTokens, shard
    from hetero.models.gpt import GPT, lm_loss
    from hetero.runtime.tp import shard_of

    out = {}
    for name, plan in plans.items():
        rt = hetero.init(plan, timeout_s=30)
        cfg = _cfg(plan)
        ref = GPT(cfg, seed=3)
        pm = hetero.parallelize(GPT(cfg, seed=3), rt, loss_fn=lm_loss)
        opt = torch.optim.SGD(pm.parameters(), lr=0.5)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
        data = SyntheticTokens(vocab=cfg.vocab, seq_len=cfg.seq_len, seed=7)
        loss_err = grad_err = 0.0
        losses = []
        for step in range(STEPS):
            x, y = data.batch(step, plan.global_batch)
            xs, ys = shard((x, y), plan, rt.dp_index)
            loss = pm.train_step(xs, ys)
            ref_loss = lm_loss(ref(x), y)
            ref_loss.backward()
            losses.append(loss)
            loss_err = max(loss_err, abs(loss - float(ref_loss)))
            for pname, p in pm.named_parameters():
                want = shard_of(ref.get_parameter(pname).grad, getattr(p, "_hetero_shard", None))
                grad_err = max(grad_err, float((_full(p.grad) - want).abs().max()))
            opt.step()
            ref_opt.step()
            opt.zero_grad()
            ref_opt.zero_grad()
        param_err = max(float((_full(p.detach()) - shard_of(ref.get_parameter(n).detach(), getattr(p, "_hetero_shard", None)))
                              .abs().max()) for n, p in pm.named_parameters())
        out[name] = dict(loss_err=loss_err, grad_err=grad_err, param_err=param_err, losses=losses,
                         nparams=len(pm.parameters()),
                         dtensor=any(hasattr(p, "full_tensor") for p in pm.parameters()),
                         mesh=rt.mesh is not None or rt.stage.tp * rt.stage.dp == 1, backend=rt.backend)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return out


def _assert_ok(results, names, dtensor=None):
    """``dtensor``: plan name -> ranks whose TP must be DTensor (the others use hetero's uneven layers)."""
    dtensor = dtensor or {}
    for rank, res in enumerate(results):
        for name in names:
            r = res[name]
            # even TP shares go to DTensor when the backend's groups can back a DeviceMesh
            assert r["dtensor"] == (rank in dtensor.get(name, ()) and r["mesh"]), (rank, name, "TP implementation")
            assert r["nparams"] > 0, (rank, name)
            assert r["loss_err"] < TOL, (rank, name, r)
            assert r["grad_err"] < TOL, (rank, name, r)
            assert r["param_err"] < TOL, (rank, name, r)
            assert r["losses"][-1] < r["losses"][0], (rank, name, r["losses"])  # it trains


def _env(world, backend):
    return {r: {"HETERO_BACKEND": backend} for r in range(world)}


@pytest.mark.parametrize("backend", ["gloo", "hetero"])
def test_world2_layouts(backend):
    plans = {
        # weighted DP: replica 0 takes 6 of 8 samples, replica 1 takes 2
        "dp_unequal": _plan([dict(layers=[0, 6], device_type="cpu", ranks=[0, 1], dp=2, batch_shares=[6, 2])]),
        # uneven PP: 5 of 6 layers (embedding + 4 blocks) on stage 0, the head alone on stage 1
        "pp_5_1_gpipe": _plan([dict(layers=[0, 5], device_type="cpu", ranks=[0]),
                               dict(layers=[5, 6], device_type="cpu", ranks=[1])], schedule="gpipe", microbatches=4),
        "pp_2_4_1f1b": _plan([dict(layers=[0, 2], device_type="cpu", ranks=[0]),
                              dict(layers=[2, 6], device_type="cpu", ranks=[1])], schedule="1f1b", microbatches=4),
        # interleaved 1F1B, 2 chunks per rank, uneven: stage 0 holds 4 layers, stage 1 holds 2
        "pp_interleaved": _plan([dict(layers=[0, 4], device_type="cpu", ranks=[0]),
                                 dict(layers=[4, 6], device_type="cpu", ranks=[1])],
                                schedule="interleaved_1f1b", virtual_stages=2, microbatches=4),
        # speed-proportional TP: rank 0 gets 3/4 of the heads and FFN columns
        "tp_uneven": _plan([dict(layers=[0, 6], device_type="cpu", ranks=[0, 1], tp=2, tp_shares=[0.75, 0.25])]),
        # even TP goes to DTensor (ColwiseParallel / RowwiseParallel), here with activation recomputation
        "tp_even_recompute": _plan([dict(layers=[0, 6], device_type="cpu", ranks=[0, 1], tp=2, recompute=True)]),
    }
    res = spawn(_check, 2, args=(plans,), timeout_s=120, env=_env(2, backend))
    assert {r["backend"] for x in res for r in x.values()} == {backend}
    _assert_ok(res, plans, dtensor={"tp_even_recompute": {0, 1}})


@pytest.mark.parametrize("backend", ["gloo"])
def test_world4_layouts(backend):
    plans = {
        # DP x PP: 2 pipelines with unequal shares, uneven layer split [4, 2]
        "dp_x_pp": _plan([dict(layers=[0, 4], device_type="cpu", ranks=[0, 1], dp=2, batch_shares=[4, 4]),
                          dict(layers=[4, 6], device_type="cpu", ranks=[2, 3], dp=2, batch_shares=[4, 4])],
                         global_batch=8, microbatches=2),
        "dp_x_pp_unequal": _plan([dict(layers=[0, 3], device_type="cpu", ranks=[0, 2], dp=2, batch_shares=[6, 2]),
                                  dict(layers=[3, 6], device_type="cpu", ranks=[1, 3], dp=2, batch_shares=[6, 2])],
                                 global_batch=8, microbatches=2, schedule="gpipe"),
        # PP x TP: uneven TP (hetero's layers) on stage 0, even TP (DTensor) on stage 1; the pipeline ranks are in
        # reverse order of the stages
        "pp_x_tp": _plan([dict(layers=[0, 4], device_type="cpu", ranks=[2, 3], tp=2, tp_shares=[0.75, 0.25]),
                          dict(layers=[4, 6], device_type="cpu", ranks=[0, 1], tp=2)], microbatches=2),
        # DP x even TP (DTensor on the stage's 2-D mesh): 2 replicas of a 2-way TP group, batch shares 6:2
        "dp_x_tp": _plan([dict(layers=[0, 6], device_type="cpu", ranks=[0, 1, 2, 3], tp=2, dp=2,
                               batch_shares=[6, 2], tp_shares=[0.5, 0.5])], microbatches=2),
    }
    res = spawn(_check, 4, args=(plans,), timeout_s=180, env=_env(4, backend))
    assert {r["backend"] for x in res for r in x.values()} == {backend}
    _assert_ok(res, plans, dtensor={"dp_x_tp": {0, 1, 2, 3}, "pp_x_tp": {0, 1}})


def test_single_process_matches_model():
    """World size 1 needs no launcher: hetero.init creates a 1-rank group."""
    res = spawn(_check, 1, args=({"single": _plan([dict(layers=[0, 6], device_type="cpu", ranks=[0])])},),
                timeout_s=60)
    _assert_ok(res, ["single"])


def test_split_sizes_proportional():
    from hetero.config import ConfigError
    from hetero.runtime.tp import split_sizes

    assert split_sizes(8, [0.75, 0.25], 2, what="heads") == [6, 2]
    assert split_sizes(96, [0.5, 0.25, 0.25], 3, what="cols") == [48, 24, 24]
    assert split_sizes(4, [0.97, 0.01, 0.01, 0.01], 4, what="heads") == [1, 1, 1, 1]
    assert sum(split_sizes(10, [0.34, 0.33, 0.33], 3, what="x")) == 10
    with pytest.raises(ConfigError, match="cannot split 2 heads over 3"):
        split_sizes(2, None, 3, what="heads")
