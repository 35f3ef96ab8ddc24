"""DCP checkpoints: resume gives the uninterrupted loss sequence, re-sharding to other plans continues training,
and damaged or foreign checkpoints raise CheckpointError (on every rank, no hang).

    python -m pytest -q tests/test_runtime_checkpoint.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hetero.runtime.testing import spawn

TOL = 1e-5


def _plan(stages, *, num_layers=6, global_batch=8, microbatches=2):
    from hetero.autoparallel.plan import Plan

    return Plan.from_dict(dict(model="gpt-tiny", num_layers=num_layers, global_batch=global_batch,
                               num_microbatches=microbatches, seq_len=16, dtype="fp32", stages=stages))


DP2 = dict(stages=[dict(layers=[0, 6], device_type="cpu", ranks=[0, 1], dp=2, batch_shares=[6, 2])])
PP2 = dict(stages=[dict(layers=[0, 2], device_type="cpu", ranks=[0]),
                      dict(layers=[2, 6], device_type="cpu", ranks=[1])])
TP2 = dict(stages=[dict(layers=[0, 6], device_type="cpu", ranks=[0, 1], tp=2, tp_shares=[0.75, 0.25])])
ONE = dict(stages=[dict(layers=[0, 6], device_type="cpu", ranks=[0])])


def _train(plan_kw, ckpt, steps, *, load=False, save_at=(), num_layers=6):
    """AdamW training of the tiny GPT for ``steps`` under ``plan_kw``; optionally resume from / save to ``ckpt``.
    Joins (or reuses) the default process group; returns {step: global loss}."""
    import torch

    import hetero
    from hetero.data import SyntheticTokens, shard
    from hetero.models.gpt import GPT, GPTConfig, lm_loss
    from hetero.runtime import checkpoint

    plan = _plan(num_layers=num_layers, **plan_kw)
    rt = hetero.init(plan, timeout_s=30, backend="gloo")
    cfg = GPTConfig(vocab=64, hidden=32, heads=4, num_layers=num_layers - 2, seq_len=16, ffn=96)
    pm = hetero.parallelize(GPT(cfg, seed=1), rt, loss_fn=lm_loss)
    opt = torch.optim.AdamW(pm.parameters(), lr=3e-3)
    data = SyntheticTokens(vocab=cfg.vocab, seq_len=cfg.seq_len, seed=5)
    start = checkpoint.load(pm, opt, ckpt)["step"] + 1 if load else 0
    losses = {}
    for step in range(start, steps):
        x, y = shard(data.batch(step, plan.global_batch), plan, rt.dp_index)
        losses[step] = pm.train_step(x, y)
        opt.step()
        opt.zero_grad()
        if step in save_at:
            checkpoint.save(pm, opt, ckpt, step=step, extra={"note": "test"})
    return losses


def _error(fn) -> str:
    """The CheckpointError message ``fn`` raises (every rank must raise; none may hang)."""
    from hetero.runtime.checkpoint import CheckpointError

    try:
        fn()
    except CheckpointError as e:
        return str(e)
    return "no error"


def _world2(rank, root):
    """All world-size-2 phases in one process group (process start-up dominates the cost on 2 cores)."""
    import torch.distributed as dist

    out = {}
    ckpt = f"{root}/dp"
    out["full"] = _train(DP2, ckpt, 5, save_at=(1, 2))  # uninterrupted; checkpoints after steps 1 and 2
    out["same"] = _train(DP2, ckpt, 5, load=True)       # resume under the same plan
    out["pp"] = _train(PP2, ckpt, 5, load=True)         # re-shard: uneven pipeline
    out["tp"] = _train(TP2, ckpt, 5, load=True)         # re-shard: speed-proportional TP
    out["tp_full"] = _train(TP2, f"{root}/tp", 3, save_at=(0,))  # TP shards are gathered on save ...
    out["tp_to_dp"] = _train(DP2, f"{root}/tp", 3, load=True)    # ... so a TP checkpoint loads under DP
    out["corrupt"] = _error(lambda: _train(DP2, f"{root}/bad", 2, load=True))
    dist.barrier()
    dist.destroy_process_group()
    return out


def _world1(rank, root):
    import torch.distributed as dist

    out = {"one": _train(ONE, f"{root}/dp", 5, load=True),  # re-shard: a single rank
           "none": _error(lambda: _train(ONE, f"{root}/partial", 2, load=True)),
           "other_model": _error(lambda: _train(dict(stages=[dict(layers=[0, 8], device_type="cpu", ranks=[0])]),
                                                f"{root}/dp", 2, load=True, num_layers=8))}
    dist.destroy_process_group()
    return out


def _corrupt_copy(src: Path, dst: Path) -> Path:
    """Copy checkpoint folder ``src`` to ``dst`` with one byte flipped in a data file; returns that file."""
    from hetero.runtime.checkpoint import latest

    shutil.copytree(src, dst)
    data = next(p for p in latest(dst).iterdir() if p.suffix == ".distcp")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    return data


def test_resume_reshard_and_damaged_checkpoints(tmp_path):
    from hetero.runtime.checkpoint import CheckpointError, latest, verify

    # the corrupt copy must exist before the world-2 run reaches that phase: make it from a 1-step run first
    spawn(_world1_seed, 1, args=(str(tmp_path),), timeout_s=60)
    bad = _corrupt_copy(tmp_path / "seed", tmp_path / "bad")
    with pytest.raises(CheckpointError, match=f"corrupt: {bad.name} does not match its SHA-256"):
        verify(latest(tmp_path / "bad"))
    (tmp_path / "partial" / ".tmp-step_00000003").mkdir(parents=True)  # an interrupted save
    assert latest(tmp_path / "partial") is None

    r = spawn(_world2, 2, args=(str(tmp_path),), timeout_s=240)
    ckpt = tmp_path / "dp"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_00000001", "step_00000002"]
    assert (ckpt / "latest").read_text().strip() == "step_00000002" and verify(latest(ckpt))["step"] == 2
    for res in r:
        full = res["full"]
        for phase in ("same", "pp", "tp"):  # resumed steps 3, 4 equal the uninterrupted run's
            assert sorted(res[phase]) == [3, 4], phase
            for s, v in res[phase].items():
                assert abs(v - full[s]) < TOL, (phase, s, v, full[s])
        assert sorted(res["tp_to_dp"]) == [1, 2]
        assert all(abs(v - res["tp_full"][s]) < TOL for s, v in res["tp_to_dp"].items())
        assert "corrupt" in res["corrupt"] and bad.name in res["corrupt"]  # on both ranks, no hang

    one = spawn(_world1, 1, args=(str(tmp_path),), timeout_s=60)[0]
    assert sorted(one["one"]) == [3, 4]
    assert all(abs(v - r[0]["full"][s]) < TOL for s, v in one["one"].items())
    assert "no complete checkpoint" in one["none"]
    assert "6 layers" in one["other_model"] and "has 8" in one["other_model"]
    (latest(ckpt) / "hetero.json").unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        verify(ckpt / "step_00000002")


def _world1_seed(rank, root):
    import torch.distributed as dist

    _train(ONE, f"{root}/seed", 1, save_at=(0,))
    dist.destroy_process_group()
