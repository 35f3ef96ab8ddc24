"""Online RL of a flow-matching VLA from an SFT checkpoint: PPO (Flow-SDE or Flow-Noise) or GRPO, cleanrl style.

    hetero rl train --config examples/rl/metaworld_mt10_flow_sde.yaml [--set train.iterations=20]

One iteration: (1) roll out ``algo.rollout_chunks`` chunk-steps in every env with the stochastic sampler, storing
observations, denoising chains, behaviour log-probs and values; (2) advantages: GAE over chunk-steps with chunk
rewards summed, time-limit ends bootstrapped with V(final obs) only with ``algo.bootstrap_truncated`` (PPO), or
group-relative episode scores with the reward filter (GRPO); (3) ``algo.update_epochs`` passes of shuffled
minibatches: the chain log-prob is replayed under the current weights, clipped PPO surrogate + clipped Huber value
loss (+ entropy bonus for Flow-Noise), AdamW with a separate value-head learning rate, gradient clipping, the
prefix encoder frozen by default
(:mod:`hetero.rl.update`, shared with the RL system's actor ranks). One metrics line per iteration (also to
``out_dir/metrics.jsonl`` and TensorBoard), held-out deterministic evaluation every ``train.eval_every``
iterations, and ``out_dir/checkpoint.pt`` every ``train.checkpoint_every`` iterations: rerunning the same command
resumes from it (``train.keep_every`` also keeps ``out_dir/checkpoint_it<N>.pt`` copies to evaluate later).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from hetero.config import to_dict
from hetero.rl import algos
from hetero.rl.config import RLConfig
from hetero.rl.envs import make_vec_env
from hetero.rl.envs.base import episode_metrics
from hetero.rl.envs.metaworld import hindsight_goals
from hetero.rl.eval import evaluate_config
from hetero.rl.policy import load_checkpoint, obs_to_torch, sample, save_checkpoint
from hetero.rl.selfimitation import SuccessBuffer
from hetero.rl.sft import bc_dataset
from hetero.rl.update import (
    cat_obs,
    index_obs,
    make_optimizer,
    ppo_update,
    reference_policy,
    resume_optimizer,
)


def _tensorboard(out_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.jsonl still has everything
        return None
    return SummaryWriter(str(out_dir / "tb"))


def drop_metrics_after(path: Path, iteration: int) -> int:
    """Remove the records of iterations after ``iteration`` (and a torn last line) from a resumed run's metrics
    file, so that it holds each iteration once, from the run that continued; returns how many were removed."""
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short when the process died
            dropped += bool(line.strip())
            continue
        if rec.get("iteration", 0) <= iteration:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in keep))
        tmp.replace(path)
    return dropped


def save_rl_checkpoint(out: Path, *, model: torch.nn.Module, opt: torch.optim.Optimizer, iteration: int,
                       cfg: RLConfig, history: list | None = None, successes: SuccessBuffer | None = None) -> bool:
    """At the iterations ``train`` asks for (every ``checkpoint_every``, every ``keep_every`` and the last), write
    ``out/checkpoint.pt`` (model, optimizer, iteration, evaluation history, config: what a resumed run and ``hetero
    rl eval`` read; ``successes``: the self-imitation episodes) and at every ``keep_every`` also a
    ``checkpoint_it<N>.pt`` copy; returns whether it wrote."""
    tc = cfg.train
    keep = bool(tc.keep_every) and iteration % tc.keep_every == 0
    if not (keep or iteration % tc.checkpoint_every == 0 or iteration == tc.iterations):
        return False
    path = out / "checkpoint.pt"
    extra = {"optimizer": opt.state_dict(), "iteration": iteration, "history": history or [], "config": to_dict(cfg)}
    if successes is not None:
        extra["successes"] = successes.state_dict()
    save_checkpoint(path, model=model, extra=extra)
    if keep:
        shutil.copyfile(path, out / f"checkpoint_it{iteration}.pt")
    return True


def train(cfg: RLConfig, *, progress: bool = True, log=print) -> dict:
    """Run (or resume) RL; returns a summary with the first and last evaluation."""
    from rich.progress import Progress

    tc, ac, sc = cfg.train, cfg.algo, cfg.sampler
    if tc.threads:
        torch.set_num_threads(tc.threads)
    dev = tc.device
    out = Path(tc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    resumed = ckpt_path.is_file()
    model, ck = load_checkpoint(ckpt_path if resumed else tc.init_checkpoint, policy=cfg.policy)  # RL-time choices
    model.to(dev)
    opt, _, _ = make_optimizer(model, cfg)
    start_iter, history = 0, []
    if resumed:
        changed = resume_optimizer(opt, ck["optimizer"], cfg)
        start_iter, history = ck["iteration"], ck.get("history", [])
        log(f"resumed from {ckpt_path} at iteration {start_iter}" + (f" ({', '.join(changed)})" if changed else ""))
        dropped = drop_metrics_after(out / "metrics.jsonl", start_iter)
        if dropped:
            log(f"dropped {dropped} metrics records past iteration {start_iter} (logged after that checkpoint; redone now)")
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    writer = _tensorboard(out, tc.tensorboard)
    metrics_file = open(out / "metrics.jsonl", "a")
    gen = torch.Generator(device=dev).manual_seed(tc.seed * 1000 + start_iter)
    bc_data = bc_dataset(cfg)  # few-shot demos for the algo.bc_coef anchor (None when off)
    ref = reference_policy(cfg, dev)  # the SFT policy for the algo.ref_kl_coef penalty (None when off)
    n_env = cfg.env.num_envs
    successes = (SuccessBuffer(num_envs=n_env, per_task=ac.sil_episodes,  # self-imitation
                               hindsight=hindsight_goals(ac.sil_hindsight, cfg.env.task_list())
                               if ac.sil_hindsight else None)
                 if ac.sil_coef else None)
    if successes is not None and resumed and "successes" in ck:
        successes.load_state_dict(ck["successes"])
    env = make_vec_env(cfg.env)

    def run_eval(it: int) -> dict:
        ev = evaluate_config(model, cfg.env, sc, episodes=tc.eval_episodes, seed=tc.eval_seed,
                             variation_seed=tc.eval_variation_seed, device=dev)
        rec = {"iteration": it, "eval_success_rate": ev["success_rate"], "eval_return": ev["return"],
               "eval_episodes": ev["episodes"], "eval_per_task": ev["per_task"]}
        log(f"eval it={it} success={ev['success_rate']:.3f} return={ev['return']:.3f} episodes={ev['episodes']} "
            f"per_task={json.dumps({k: round(v, 2) for k, v in ev['per_task'].items()})}")
        metrics_file.write(json.dumps(rec) + "\n")
        metrics_file.flush()
        if writer:
            writer.add_scalar("eval/success_rate", ev["success_rate"], it)
            writer.add_scalar("eval/return", ev["return"], it)
        history.append(rec)
        return rec

    if tc.eval_every and not resumed:
        run_eval(0)
    obs = env.reset(seed=tc.seed * 7919 + start_iter) if ac.name == "ppo" else None  # GRPO resets every iteration
    t_start = time.time()
    total_env_steps = 0
    with Progress(disable=not progress, transient=True) as bar:
        ptask = bar.add_task("RL", total=tc.iterations, completed=start_iter)
        for it in range(start_iter + 1, tc.iterations + 1):
            t_iter = time.time()
            # ---- 1. rollout ----------------------------------------------------------------------------------
            T = cfg.chunk_steps()
            if ac.name == "grpo":  # every group starts from one shared reset state; one episode per env
                obs = env.reset(seed=tc.seed * 7919 + it)
                if successes is not None:
                    successes.drop_running()
            model.eval()
            buf_obs, chains, inds, logps, values = [], [], [], [], []
            rewards = torch.zeros(T, n_env)
            dones = torch.zeros(T, n_env)
            discarded = torch.zeros(T, n_env, dtype=torch.bool)
            episodes: list[dict] = []
            env_steps, t_policy = 0, 0.0
            for t in range(T):
                o = obs_to_torch(obs, dev)
                tp = time.time()
                s = sample(model, o, sc, generator=gen)
                t_policy += time.time() - tp
                res = env.chunk_step(np.clip(s.actions.cpu().numpy(), -1.0, 1.0))
                env_steps += res.env_steps
                r = torch.as_tensor(res.reward)
                if ac.name == "ppo" and ac.bootstrap_truncated and res.truncated.any():  # r += gamma V(final obs)
                    idx = torch.as_tensor(np.nonzero(res.truncated)[0])
                    with torch.no_grad():
                        fv = model.value(model.encode(index_obs(obs_to_torch(res.final_obs, dev), idx))).cpu()
                    r[idx] += ac.gamma * fv
                rewards[t] = r
                dones[t] = torch.as_tensor(res.done, dtype=torch.float32)
                buf_obs.append({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in o.items()})
                chains.append(s.chain.cpu())
                inds.append(s.denoise_ind.cpu())
                logps.append(s.logp.cpu())
                values.append(s.value.cpu())
                episodes += res.episodes  # a crashed worker's episodes never arrive here
                discarded[t] = torch.as_tensor(res.discarded)
                if successes is not None:
                    successes.add(o, s.actions.clamp(-1.0, 1.0), done=res.done, success=res.success,
                                  discarded=res.discarded,
                                  final_state=res.final_obs["state"] if res.final_obs is not None else None)
                obs = res.obs
            values_t = torch.stack(values)
            # ---- 2. advantages ------------------------------------------------------------------------------
            mask = torch.ones(T, n_env, dtype=torch.bool)
            for t, i in discarded.nonzero().tolist():  # a crashed worker's episode never enters the loss
                j = t
                while j >= 0 and (j == t or not dones[j, i]):
                    mask[j, i] = False
                    j -= 1
            if ac.name == "ppo":
                with torch.no_grad():
                    next_v = model.value(model.encode(obs_to_torch(obs, dev))).cpu()
                adv, ret = algos.gae(rewards, values_t, dones, next_v, gamma=ac.gamma, lam=ac.lam)
            else:
                adv, keep = algos.grpo_rollout(rewards, dones, ac.group_size, filter_bounds=ac.filter_bounds())
                mask, ret = mask & keep, torch.zeros(T, n_env)
            # ---- 3. update ----------------------------------------------------------------------------------
            batch = {"obs": cat_obs(buf_obs), "chain": torch.cat(chains), "denoise_ind": torch.cat(inds),
                     "logp": torch.cat(logps), "value": values_t.reshape(-1), "adv": adv.reshape(-1),
                     "ret": ret.reshape(-1), "mask": mask.reshape(-1)}
            st = ppo_update(model, opt, batch, cfg, iteration=it, device=dev, bc_data=bc_data, ref=ref,
                            sil_data=successes.dataset() if successes is not None else None)
            # ---- 4. metrics, eval, checkpoint ---------------------------------------------------------------
            wall = time.time() - t_iter
            total_env_steps += env_steps
            rec = {"iteration": it, **episode_metrics(episodes), "env_steps": env_steps,
                   "env_steps_per_s": env_steps / wall, "policy_steps_per_s": T * n_env / max(t_policy, 1e-9),
                   "kl": st["kl"], "clip_fraction": st["clip_fraction"], "pg_loss": st["pg_loss"],
                   "v_loss": st["v_loss"], "entropy": st["entropy"], "bc_loss": st["bc_loss"], "ref_kl": st["ref_kl"],
                   "sil_loss": st["sil_loss"], "sil_episodes": sum(successes.counts().values()) if successes else 0,
                   "sil_relabelled": successes.relabelled if successes else 0,
                   "samples": st["samples"],
                   "warmup": st["warmup"], "iter_s": wall,
                   "restarts": env.restarts}
            sr = "-" if rec["success_rate"] is None else f"{rec['success_rate']:.3f}"
            rt = "-" if rec["return"] is None else f"{rec['return']:.3f}"
            anchors = (f" bc_loss={rec['bc_loss']:.4f}" if ac.bc_coef else "") + (
                f" ref_kl={rec['ref_kl']:.3f}" if ac.ref_kl_coef else "") + (
                f" sil_loss={rec['sil_loss']:.4f} sil_eps={rec['sil_episodes']}" if ac.sil_coef else "") + (
                f" relabelled={rec['sil_relabelled']}" if ac.sil_hindsight else "")
            log(f"it={it} success={sr} return={rt} eps={len(episodes)} env_sps={rec['env_steps_per_s']:.0f} "
                f"policy_sps={rec['policy_steps_per_s']:.0f} kl={rec['kl']:.4f} clipfrac={rec['clip_fraction']:.3f} "
                f"v_loss={rec['v_loss']:.4f}{anchors} samples={rec['samples']} t={wall:.1f}s")
            metrics_file.write(json.dumps(rec) + "\n")
            metrics_file.flush()
            if writer:
                for k, v in rec.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                        writer.add_scalar(f"train/{k}", v, it)
            if tc.eval_every and (it % tc.eval_every == 0 or it == tc.iterations):
                run_eval(it)
            save_rl_checkpoint(out, model=model, opt=opt, iteration=it, cfg=cfg, history=history, successes=successes)
            bar.update(ptask, advance=1)
    env.close()
    metrics_file.close()
    if writer:
        writer.close()
    evals = [h for h in history if "eval_success_rate" in h]
    return {"first_eval": evals[0] if evals else None, "last_eval": evals[-1] if evals else None,
            "iterations": tc.iterations, "wall_s": time.time() - t_start, "env_steps": total_env_steps,
            "checkpoint": str(ckpt_path), "config": dataclasses.asdict(cfg.sampler)}
