"""The PPO update step shared by the single-process trainer and the RL system's actor ranks.

``make_optimizer`` builds AdamW with a policy group and a value-head group (RLinf's ``lr`` / ``value_lr``);
with ``algo.train_expert_only`` (piRL's default) the prefix encoder (state/text/image encoders and backbone) is
frozen and RL moves only the action expert, its noise head and the value head. ``ppo_update`` runs the update
epochs over a flat batch of rollout samples: chain log-prob replayed under the current weights, clipped surrogate
(+ entropy bonus), clipped Huber value loss, critic warm-up, gradient clipping, optional early stop on KL, and,
on several actor ranks, minibatches split over the ranks with gradients all-reduced weighted by shard size.

Tests: ``python -m pytest -q tests/test_rl_e2e.py tests/test_rlsys_system.py``.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
import torch.distributed as dist

from hetero.models.vla import VLAPolicy
from hetero.rl import algos
from hetero.rl.config import RLConfig
from hetero.rl.envs.metaworld import anchor_distractors
from hetero.rl.policy import load_checkpoint, replay
from hetero.rl.selfimitation import Distractor, redraw_distractors
from hetero.rl.sft import demo_batch


def index_obs(obs: dict, idx) -> dict:
    """Rows ``idx`` (a 1-D index tensor) of an observation dict (state/images tensors, instruction list)."""
    out = {"state": obs["state"][idx], "instruction": [obs["instruction"][i] for i in idx.tolist()]}
    if "images" in obs:
        out["images"] = obs["images"][idx]
    return out


def cat_obs(obs_list: list[dict]) -> dict:
    """Concatenate observation dicts along the batch dimension."""
    out = {"state": torch.cat([o["state"] for o in obs_list]),
           "instruction": [s for o in obs_list for s in o["instruction"]]}
    if "images" in obs_list[0]:
        out["images"] = torch.cat([o["images"] for o in obs_list])
    return out


def task_ids(obs: dict) -> torch.Tensor:
    """An int id per sample ``[N]``, equal where the instructions are equal (the task, in the multi-task suites)."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(s, len(ids)) for s in obs["instruction"]], dtype=torch.long)


def make_optimizer(model: torch.nn.Module, cfg: RLConfig) -> tuple[torch.optim.Optimizer, list, list]:
    """AdamW with a policy group (``algo.lr``) and a value-head group (``algo.value_lr``): (optimizer, policy
    params, value params). With ``algo.train_expert_only`` the prefix encoder's parameters stop requiring grad."""
    ac = cfg.algo
    if ac.train_expert_only:
        for n, p in model.named_parameters():
            if not n.startswith("value_head") and not model.is_expert_param(n):
                p.requires_grad_(False)
    value_params = [p for n, p in model.named_parameters() if n.startswith("value_head")]
    policy_params = [p for n, p in model.named_parameters() if not n.startswith("value_head") and p.requires_grad]
    opt = torch.optim.AdamW([{"params": policy_params, "lr": ac.lr}, {"params": value_params, "lr": ac.value_lr}],
                            betas=(0.9, 0.95), eps=1e-8, weight_decay=ac.weight_decay)
    return opt, policy_params, value_params


def resume_optimizer(opt: torch.optim.Optimizer, state: dict, cfg: RLConfig) -> list[str]:
    """Load a checkpoint's optimizer state (Adam moments, step counts) into ``make_optimizer``'s ``opt`` but keep this
    run's ``algo.lr`` / ``algo.value_lr`` / ``algo.weight_decay``, which ``load_state_dict`` would otherwise silently
    replace by the checkpoint's; returns the settings that changed (``"algo.lr 3e-05 -> 1e-05"``)."""
    opt.load_state_dict(state)
    ac, changed = cfg.algo, []
    for group, lr_name, lr in zip(opt.param_groups, ("algo.lr", "algo.value_lr"), (ac.lr, ac.value_lr), strict=True):
        for name, key, value in ((lr_name, "lr", lr), ("algo.weight_decay", "weight_decay", ac.weight_decay)):
            if group[key] != value:
                changed.append(f"{name} {group[key]:g} -> {value:g}")
                group[key] = value
    return sorted(set(changed))


def ppo_update(model, opt, batch: dict, cfg: RLConfig, *, iteration: int, device: str = "cpu",
               shard: tuple[int, int, dist.ProcessGroup | None] | None = None, emulator=None,
               bc_data: dict | None = None, sil_data: dict | None = None, ref: VLAPolicy | None = None) -> dict:
    """PPO epochs over a flat batch of N samples (the trainer's update step): ``batch`` holds ``obs`` (state
    ``[N, S]``, instruction list, images), ``chain [N, K+1, H, A]``, ``denoise_ind [N]``, ``logp [N]``, ``value [N]``,
    ``adv [N]``, ``ret [N]`` and optionally ``mask [N]`` (bool). ``shard = (index, count, group)`` splits every
    minibatch over ``count`` actor ranks and all-reduces the gradients weighted by shard size (None: one rank).
    ``emulator`` (a :class:`hetero.runtime.emulate.Emulator`; CPU benchmarks only) pads each minibatch's forward +
    backward and optimizer step, not the all-reduce. Returns mean pg_loss, v_loss, kl, clip_fraction, entropy, the
    sample count, the optimizer steps taken and the seconds spent in compute (forward + backward + optimizer step,
    padded where emulated) and in the gradient all-reduce. ``bc_data`` (:func:`hetero.rl.sft.bc_dataset`) adds
    ``algo.bc_coef`` x the flow-matching loss of ``algo.bc_batch_size`` demo chunks to every minibatch (after the
    critic warm-up; on several actor ranks each adds it, weighted like its PPO shard, so the sum is one term);
    ``sil_data`` (:meth:`hetero.rl.selfimitation.SuccessBuffer.dataset`) likewise adds ``algo.sil_coef`` x that loss
    on successful rollout chunks, logged as ``sil_loss``. With ``algo.anchor_distractors`` both losses see those
    tasks' distractor redrawn in their rows (:func:`hetero.rl.selfimitation.redraw_distractors`).
    ``ref`` (:func:`reference_policy`) adds ``algo.ref_kl_coef`` x the mean KL of the minibatch's transitions from
    ``ref``'s (after the warm-up too), logged as ``ref_kl``."""
    ac, sc, tc = cfg.algo, cfg.sampler, cfg.train
    n = batch["logp"].shape[0]
    mask_f = batch.get("mask", torch.ones(n, dtype=torch.bool))
    adv_f, ret_f, logp_f, val_f = batch["adv"], batch["ret"], batch["logp"], batch["value"]
    chain_f, ind_f, flat_obs = batch["chain"], batch["denoise_ind"], batch["obs"]
    sel_all = torch.nonzero(mask_f).squeeze(1)
    if ac.name == "ppo" and len(sel_all):
        adv_f = algos.normalize(adv_f, mask_f, groups=task_ids(flat_obs) if ac.adv_norm == "task" else None)
    warmup = ac.name == "ppo" and iteration <= ac.critic_warmup_iters
    policy_ids = {id(p) for p in opt.param_groups[0]["params"]}  # make_optimizer's policy group
    params = [p for g in opt.param_groups for p in g["params"]]
    model.train()
    stats = {"pg_loss": [], "v_loss": [], "kl": [], "clipfrac": [], "entropy": [], "bc_loss": [], "sil_loss": [],
             "ref_kl": []}
    use_bc = bc_data is not None and ac.bc_coef > 0 and not warmup
    use_sil = sil_data is not None and ac.sil_coef > 0 and not warmup
    distractors = anchor_distractors(ac.anchor_distractors, cfg.env.task_list()) if ac.anchor_distractors else None
    use_ref = ref is not None and ac.ref_kl_coef > 0 and not warmup
    perm_gen = torch.Generator().manual_seed(tc.seed * 31 + iteration)
    stop = False
    t_compute = t_comm = 0.0
    steps = 0

    def compute(kind: str):
        return emulator.compute(kind=kind) if emulator is not None else contextlib.nullcontext()

    for _epoch in range(ac.update_epochs):
        if stop or not len(sel_all):
            break
        perm = sel_all[torch.randperm(len(sel_all), generator=perm_gen)]
        for mb_full in perm.split(ac.minibatch_size):
            mb, w = mb_full, 1.0
            if shard is not None:
                mb = mb_full.tensor_split(shard[1])[shard[0]]
                w = len(mb) / len(mb_full)
            opt.zero_grad(set_to_none=True)
            vals = [0.0, 0.0, 0.0, 0.0, 0.0]
            if len(mb):
                mo = index_obs(flat_obs, mb)
                mo = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in mo.items()}
                t0 = time.perf_counter()
                with compute(f"fwd-bwd{len(mb)}"):
                    new_logp, ent, new_v, ref_kl = replay(model, mo, chain_f[mb].to(device), ind_f[mb].to(device),
                                                          sc, ref=ref if use_ref else None)
                    pg, st = algos.ppo_actor_loss(new_logp, logp_f[mb].to(device), adv_f[mb].to(device), clip=ac.clip)
                    loss = torch.zeros((), device=device)
                    if not warmup:
                        loss = loss + pg - ac.entropy_bonus * ent.mean()
                    vl = None
                    if ac.name == "ppo":
                        vl = algos.value_loss(new_v, val_f[mb].to(device), ret_f[mb].to(device), clip=ac.value_clip,
                                              huber_delta=ac.huber_delta)
                        loss = loss + ac.value_coef * vl
                    if use_bc:
                        bc = _bc_loss(model, bc_data, ac.bc_batch_size, perm_gen, device, distractors)
                        loss = loss + ac.bc_coef * bc
                        stats["bc_loss"].append(bc.item())
                    if use_sil:
                        sil = _bc_loss(model, sil_data, ac.bc_batch_size, perm_gen, device, distractors)
                        loss = loss + ac.sil_coef * sil
                        stats["sil_loss"].append(sil.item())
                    if use_ref:
                        loss = loss + ac.ref_kl_coef * ref_kl.mean()
                        stats["ref_kl"].append(ref_kl.mean().item())
                    if w != 1.0:
                        loss = loss * w
                    loss.backward()
                    vals = [pg.item(), vl.item() if vl is not None else 0.0, st.approx_kl, st.clip_fraction,
                            ent.mean().item()]
                t_compute += time.perf_counter() - t0
            if warmup:  # critic warm-up: only the value head moves
                for p in params:
                    if id(p) in policy_ids:
                        p.grad = None
            if shard is not None and shard[1] > 1:
                t0 = time.perf_counter()
                vals = _allreduce_grads(params, vals, w, shard[2], device)
                t_comm += time.perf_counter() - t0
            t0 = time.perf_counter()
            with compute("optimizer-step"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), ac.max_grad_norm)
                opt.step()
            t_compute += time.perf_counter() - t0
            steps += 1
            stats["pg_loss"].append(vals[0])
            if ac.name == "ppo":
                stats["v_loss"].append(vals[1])
            stats["kl"].append(vals[2])
            stats["clipfrac"].append(vals[3])
            stats["entropy"].append(vals[4])
        if ac.target_kl is not None and np.mean(stats["kl"] or [0.0]) > ac.target_kl:
            stop = True

    def mean(k):
        return float(np.mean(stats[k])) if stats[k] else 0.0

    return {"pg_loss": mean("pg_loss"), "v_loss": mean("v_loss"), "kl": mean("kl"),
            "clip_fraction": mean("clipfrac"), "entropy": mean("entropy"), "bc_loss": mean("bc_loss"),
            "sil_loss": mean("sil_loss"), "ref_kl": mean("ref_kl"),
            "samples": int(len(sel_all)),
            "warmup": warmup, "update_steps": steps, "update_compute_s": t_compute, "update_comm_s": t_comm}


def reference_policy(cfg: RLConfig, device: str = "cpu") -> VLAPolicy | None:
    """The frozen initial policy (``train.init_checkpoint``, the SFT checkpoint) that ``algo.ref_kl_coef`` holds
    the policy near, with the run's RL-time policy choices; None when that is 0. A resumed run keeps the same one."""
    if cfg.algo.ref_kl_coef == 0:
        return None
    ref, _ = load_checkpoint(cfg.train.init_checkpoint, policy=cfg.policy)
    ref.to(device).eval().requires_grad_(False)
    return ref


def _bc_loss(model, data: dict, batch_size: int, gen: torch.Generator, device: str,
             distractors: dict[str, Distractor] | None = None) -> torch.Tensor:
    """Flow-matching loss on ``batch_size`` chunks drawn from the demo dataset ``data`` (state ``[M, S]``, actions
    ``[M, H, A]``, images, instruction), with the ``distractors`` (instruction -> :class:`Distractor`) redrawn."""
    idx = torch.randint(0, data["state"].shape[0], (batch_size,), generator=gen)
    # the flow-matching noise and times from ``gen`` too (on ``device``): the global RNG would make runs with the
    # same seed differ (it was used here until the twenty-second session)
    noise_gen = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
    obs, actions = demo_batch(data, idx, device)
    if distractors:
        obs = redraw_distractors(obs, distractors, gen)
    return model.fm_loss(obs, actions, generator=noise_gen)


def _allreduce_grads(params, vals, w, group, device) -> list[float]:
    """Sum the (already shard-weighted) gradients and stats over the actor ranks in one flat all-reduce; a
    gradient that no rank produced stays None (so AdamW skips that parameter, as in one process)."""
    flat = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device) for p in params]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    st = torch.tensor([v * w for v in vals], dtype=torch.float64, device=device)
    buf = torch.cat(flat + [has])
    dist.all_reduce(buf, group=group)
    dist.all_reduce(st, group=group)
    off = 0
    hasv = buf[-len(params):]
    for i, p in enumerate(params):
        n = p.numel()
        p.grad = buf[off:off + n].view_as(p).clone() if hasv[i] > 0 else None
        off += n
    return st.tolist()
