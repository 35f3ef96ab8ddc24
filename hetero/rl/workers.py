"""The RL role loops (env, rollout, actor) of one rank of the RL system, and the data-parallel PPO / GRPO update.

Every rank runs :func:`run_rank` with the same :class:`~hetero.autoparallel.roles.RolePlan`; what it does depends
on the roles the plan gives it. One iteration, in program order (deadlock-free for every placement):

1. env ranks send the current observation of each of their micro-batches (slots ``roles.slots(j)``; with GRPO
   after resetting every env from its group's shared state, one episode per env per iteration);
2. for each chunk step t and micro-batch j: the rollout rank of j receives the observation (and the previous step's
   rewards / dones / episodes), samples with the policy (:func:`hetero.rl.policy.sample`), bootstraps time-limit
   ends with V(final obs) if ``algo.bootstrap_truncated`` and sends the actions; the env rank of j steps its envs
   by the chunk and sends the result back (a rank that also runs inference starts its simulators and samples for
   its next micro-batch meanwhile, collecting the result when it next needs the simulators or the observation;
   one micro-batch simulates at a time per rank). Simulation of one micro-batch overlaps inference on another, on
   different ranks and within a rank that holds both roles: the elastic pipeline;
3. the rollout rank computes V(last obs) and ships the micro-batch's trajectory, tagged with the weights' version,
   to every actor rank;
4. actor ranks assemble the ``[T, num_envs]`` batch, compute advantages (PPO: :func:`hetero.rl.algos.gae`; GRPO:
   :func:`hetero.rl.algos.grpo_rollout`) and run :func:`ppo_update` (minibatches split over the actor ranks,
   gradients all-reduced with weights n_r / n);
5. the first actor rank broadcasts the new weights with version = iteration (:mod:`hetero.rl.weightsync`).

Ranks holding both the actor and the rollout model switch context (:mod:`hetero.rl.offload`): the actor waits in
the host store while rollouts run, the rollout model while the actor trains. The single-process trainer
(:mod:`hetero.rl.trainer`) is the reference: the same seeds, env slots, sampling generator and minibatch order make
a placement with one rollout rank, k = 1 and one actor rank reproduce its metrics exactly (PPO and GRPO).

Run through ``hetero.rl.system``. Tests: ``python -m pytest -q tests/test_rlsys_system.py``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from hetero.autoparallel.roles import RolePlan
from hetero.config import ConfigError
from hetero.rl import algos
from hetero.rl.channel import Channels
from hetero.rl.config import EnvConfig, RLConfig
from hetero.rl.envs import slice_class
from hetero.rl.envs.base import ChunkVecEnv, SliceFactory, episode_metrics
from hetero.rl.offload import HostStore
from hetero.rl.policy import load_checkpoint, obs_to_torch, sample
from hetero.rl.sft import bc_dataset
from hetero.rl.trainer import drop_metrics_after, save_rl_checkpoint
from hetero.rl.update import (
    cat_obs,
    index_obs,
    make_optimizer,
    ppo_update,
    reference_policy,
    resume_optimizer,
)
from hetero.rl.weightsync import WeightSync, flatten, unflatten_into
from hetero.runtime.emulate import Emulator

TAG_OBS, TAG_ACT, TAG_TRAJ = 1, 2, 3


def make_microbatch_env(cfg: EnvConfig, slots: range, *, slowdown: float = 1.0) -> ChunkVecEnv:
    """A vector env over the global env ``slots`` of one micro-batch (``slowdown`` > 1: its simulator processes
    emulate a slower host, CPU benchmarks only)."""
    cfg.task_list()
    return ChunkVecEnv(SliceFactory(slice_class(cfg), cfg, slots.start), num_envs=len(slots),
                       num_workers=min(cfg.num_workers, len(slots)), slowdown=slowdown)


class RankRunner:
    """The loops of one rank (see the module docstring); build on every rank, then call :meth:`run`."""

    def __init__(self, *, rank: int, roles: RolePlan, cfg: RLConfig, capacity: int = 4, log=print):
        if cfg.env.num_envs != roles.num_envs:
            raise ConfigError("roles.num_envs", f"is {roles.num_envs} but env.num_envs is {cfg.env.num_envs}")
        self.rank, self.roles, self.cfg, self.log = rank, roles, cfg, log
        # CPU benchmarks emulating slower devices (HETERO_SLOWDOWN; else a no-op). Env and rollout blocks: phase 0,
        # all of a block's padding follows it, so a block slowed by a rank sharing its core is absorbed by the
        # padding. The data-parallel update runs in lockstep on every actor rank: there the ranks sharing a core
        # take the phases hetero-run gave them (HETERO_EMULATE_PHASE), so that they compute at different moments
        self.emu_update = Emulator.from_env()
        self.emu = Emulator(slowdown=self.emu_update.slowdown)
        self.my = roles.roles_of(rank)
        self.device = roles.device_of(rank)
        # collective groups: every rank creates every group, in the same order
        self.sync_ranks = roles.sync_ranks
        self.sync_group = dist.new_group(self.sync_ranks)
        self.actor_group = dist.new_group(sorted(roles.actor.ranks))
        self.chans = Channels(rank=rank, capacity=max(capacity, roles.k + 1))
        self.store = HostStore()
        self.switch_log: list[dict] = []
        tc = cfg.train
        self.envs: dict[int, ChunkVecEnv] = {}
        self._pending: int | None = None  # the micro-batch this rank is simulating (one at a time)
        self.obs: dict[int, dict] = {}
        self.rollout_model = self.actor_model = self.opt = None
        # resume: every rank starts from out_dir/checkpoint.pt when it is there (as the trainer does), else from
        # the init checkpoint; the env reset and sampling seeds move on by the iteration, as in the trainer
        self.out = Path(tc.out_dir)
        resume = self.out / "checkpoint.pt"
        resumed = resume.is_file()
        start_ckpt = resume if resumed else tc.init_checkpoint
        ck = None
        if "rollout" in self.my:
            self.rollout_model, ck = load_checkpoint(start_ckpt, policy=cfg.policy)
        if "actor" in self.my:
            self.actor_model, ck = load_checkpoint(start_ckpt, policy=cfg.policy)
        if resumed and ck is None:  # an env-only rank needs only the iteration
            ck = torch.load(resume, map_location="cpu", weights_only=False)
        self.start_iter = ck["iteration"] if resumed else 0
        if "rollout" in self.my:
            self.rollout_model.to(self.device)
            ri = roles.rollout.ranks.index(rank)
            self.gen = torch.Generator(device=self.device).manual_seed(tc.seed * 1000 + ri * 7919 + self.start_iter)
        if "actor" in self.my:
            self.actor_model.to(self.device)
            self.opt, _, _ = make_optimizer(self.actor_model, cfg)
            if resumed:
                changed = resume_optimizer(self.opt, ck["optimizer"], cfg)
                if rank == roles.actor.ranks[0]:
                    log(f"resumed from {resume} at iteration {self.start_iter}"
                        + (f" ({', '.join(changed)})" if changed else ""))
            self.actor_index = roles.actor.ranks.index(rank)
            self.bc_data = bc_dataset(cfg)  # few-shot demos for the algo.bc_coef anchor (None when off)
            self.ref = reference_policy(cfg, self.device)  # the SFT policy for algo.ref_kl_coef (None when off)
        self.ws = WeightSync(src=roles.actor.ranks[0], ranks=self.sync_ranks, group=self.sync_group)
        self.ws.version = self.start_iter  # the version of the checkpoint every rank loaded (0: the initial one)
        self.switching = self.actor_model is not None and self.rollout_model is not None
        if self.switching:  # collocated actor + rollout: start with the actor in the host store
            self._switch("offload", "actor")

    # -- helpers
    def _switch(self, direction: str, name: str) -> None:
        model, opt = (self.actor_model, self.opt) if name == "actor" else (self.rollout_model, None)
        fn = self.store.offload if direction == "offload" else self.store.reload
        st = fn(name, model, opt, log=None)
        self.switch_log.append(dataclasses.asdict(st))

    def _mbs(self, role: str) -> list[int]:
        own = self.roles.env_rank if role == "env" else self.roles.rollout_rank
        return [j for j in range(self.roles.k) if own(j) == self.rank]

    def _ch(self, name: str, j: int, actor: int | None = None):
        r = self.roles
        if name == "obs":
            return self.chans.get("obs", r.env_rank(j), r.rollout_rank(j), tag=TAG_OBS)
        if name == "act":
            return self.chans.get("act", r.rollout_rank(j), r.env_rank(j), tag=TAG_ACT)
        return self.chans.get("traj", r.rollout_rank(j), actor, tag=TAG_TRAJ)

    # -- env role
    def _env_start(self, j: int, it: int) -> None:
        tc = self.cfg.train
        first = j not in self.envs
        if first:
            self.envs[j] = make_microbatch_env(self.cfg.env, self.roles.slots(j), slowdown=self.emu.slowdown)
        if self.cfg.algo.name == "grpo":  # every group restarts from one shared reset state, as in the trainer
            self.obs[j] = self.envs[j].reset(seed=tc.seed * 7919 + it)
        elif first:
            self.obs[j] = self.envs[j].reset(seed=tc.seed * 7919 + self.start_iter)
        self._ch("obs", j).send(j, {"obs": obs_to_torch(self.obs[j])})

    def _env_dispatch(self, j: int) -> None:
        """Receive micro-batch j's actions and start simulating them. On a rank that also runs inference it returns
        while the simulators run, so that inference on another micro-batch overlaps them; one micro-batch
        simulates at a time per rank (its host's share of the simulation): the one in flight is finished first."""
        self._env_finish()  # first: its observations may be what the rank sending j's actions waits for
        a = self._ch("act", j).recv(j)["actions"]
        self.envs[j].chunk_step_async(np.clip(a.numpy(), -1.0, 1.0))
        self._pending = j
        if "rollout" not in self.my:  # nothing to overlap here: send the result as soon as it is there
            self._env_finish()

    def _env_finish(self) -> None:
        """Collect the micro-batch in flight (if any) and send its observations on."""
        if self._pending is None:
            return
        j, self._pending = self._pending, None
        res = self.envs[j].chunk_step_wait()
        self.obs[j] = res.obs
        self._ch("obs", j).send(j, {"obs": obs_to_torch(res.obs), "final_obs": obs_to_torch(res.final_obs),
                                    "reward": torch.as_tensor(res.reward), "done": torch.as_tensor(res.done),
                                    "truncated": torch.as_tensor(res.truncated),
                                    "discarded": torch.as_tensor(res.discarded), "episodes": res.episodes,
                                    "env_steps": res.env_steps, "restarts": self.envs[j].restarts})

    # -- rollout role
    def _rollout_recv(self, j: int, buf: dict, t: int) -> dict:
        """Receive micro-batch j's message for step t (t > 0: the result of step t - 1) and record it."""
        msg = self._ch("obs", j).recv(j)
        if t > 0:
            ac, m = self.cfg.algo, self.rollout_model
            r = msg["reward"].clone()
            tr = msg["truncated"]
            if ac.name == "ppo" and ac.bootstrap_truncated and tr.any():  # r += gamma V(final obs) at time limits
                idx = torch.nonzero(tr).squeeze(1)
                with torch.no_grad(), self.emu.compute(kind=f"value{len(idx)}"):
                    fo = obs_to_torch(msg["final_obs"], self.device)
                    fv = m.value(m.encode(index_obs(fo, idx))).cpu()
                r[idx] += ac.gamma * fv
            buf["rewards"].append(r)
            buf["dones"].append(msg["done"].float())
            buf["discarded"].append(msg["discarded"])
            buf["episodes"] += msg["episodes"]
            buf["env_steps"] += msg["env_steps"]
            buf["restarts"] = msg["restarts"]
        return msg["obs"]

    def _rollout_act(self, j: int, obs: dict, buf: dict) -> None:
        o = obs_to_torch(obs, self.device)
        t0 = time.perf_counter()
        with self.emu.compute(kind=f"sample{len(o['state'])}"):
            s = sample(self.rollout_model, o, self.cfg.sampler, generator=self.gen)
        buf["t_policy"] += time.perf_counter() - t0
        self._ch("act", j).send(j, {"actions": s.actions.cpu()})
        buf["obs"].append({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in o.items()})
        buf["chains"].append(s.chain.cpu())
        buf["inds"].append(s.denoise_ind.cpu())
        buf["logps"].append(s.logp.cpu())
        buf["values"].append(s.value.cpu())

    def _rollout_finish(self, j: int, obs: dict, buf: dict) -> None:
        m = self.rollout_model
        with torch.no_grad(), self.emu.compute(kind=f"value{len(obs['state'])}"):
            next_v = m.value(m.encode(obs_to_torch(obs, self.device))).cpu()
        T = len(buf["chains"])
        traj = {"state": torch.stack([o["state"] for o in buf["obs"]]),
                "instruction": [s for o in buf["obs"] for s in o["instruction"]],
                "chain": torch.stack(buf["chains"]), "ind": torch.stack(buf["inds"]),
                "logp": torch.stack(buf["logps"]), "value": torch.stack(buf["values"]),
                "reward": torch.stack(buf["rewards"]), "done": torch.stack(buf["dones"]),
                "discarded": torch.stack(buf["discarded"]), "next_v": next_v, "episodes": buf["episodes"],
                "env_steps": buf["env_steps"], "t_policy": buf["t_policy"], "version": self.ws.version,
                "restarts": buf["restarts"], "T": T}
        if "images" in buf["obs"][0]:
            traj["images"] = torch.stack([o["images"] for o in buf["obs"]])
        for a in self.roles.actor.ranks:
            self._ch("traj", j, a).send(j, traj)

    # -- actor role
    def _assemble(self) -> dict:
        """Receive every micro-batch's trajectory and lay it out as the trainer's ``[T, num_envs]`` batch."""
        parts = [self._ch("traj", j, self.rank).recv(j) for j in range(self.roles.k)]
        for p in parts:
            if p["version"] != self.ws.version:
                raise RuntimeError(f"synchronous PPO got samples of policy version {p['version']} but the actor is "
                                   f"at version {self.ws.version}")
        T = parts[0]["T"]
        cat = {k: torch.cat([p[k] for p in parts], dim=1) for k in ("state", "chain", "ind", "logp", "value",
                                                                     "reward", "done", "discarded")}
        if "images" in parts[0]:
            cat["images"] = torch.cat([p["images"] for p in parts], dim=1)
        m = self.roles.micro_batch
        instr = [[p["instruction"][t * m:(t + 1) * m] for p in parts] for t in range(T)]
        buf_obs = []
        for t in range(T):
            o = {"state": cat["state"][t], "instruction": [s for part in instr[t] for s in part]}
            if "images" in cat:
                o["images"] = cat["images"][t]
            buf_obs.append(o)
        return {"T": T, "buf_obs": buf_obs, **cat, "next_v": torch.cat([p["next_v"] for p in parts]),
                "episodes": [e for p in parts for e in p["episodes"]],
                "env_steps": sum(p["env_steps"] for p in parts), "t_policy": max(p["t_policy"] for p in parts),
                "restarts": sum(p["restarts"] for p in parts)}

    def _train(self, it: int) -> dict:
        ac = self.cfg.algo
        t0 = time.perf_counter()
        b = self._assemble()
        t_assemble = time.perf_counter() - t0  # waiting for and receiving every micro-batch's trajectory
        T, n_env = b["T"], self.roles.num_envs
        rewards, dones, values_t = b["reward"], b["done"], b["value"]
        mask = torch.ones(T, n_env, dtype=torch.bool)
        for t, i in b["discarded"].nonzero().tolist():  # a crashed worker's episode never enters the loss
            j = t
            while j >= 0 and (j == t or not dones[j, i]):
                mask[j, i] = False
                j -= 1
        if ac.name == "ppo":
            adv, ret = algos.gae(rewards, values_t, dones, b["next_v"], gamma=ac.gamma, lam=ac.lam)
        else:  # GRPO: one episode per env from its group's shared reset
            adv, keep = algos.grpo_rollout(rewards, dones, ac.group_size, filter_bounds=ac.filter_bounds())
            mask, ret = mask & keep, torch.zeros(T, n_env)
        flat = {"obs": cat_obs(b["buf_obs"]), "chain": torch.cat(list(b["chain"])),
                "denoise_ind": torch.cat(list(b["ind"])), "logp": torch.cat(list(b["logp"])),
                "value": values_t.reshape(-1), "adv": adv.reshape(-1), "ret": ret.reshape(-1),
                "mask": mask.reshape(-1)}
        n_a = len(self.roles.actor.ranks)
        shard = (self.actor_index, n_a, self.actor_group) if n_a > 1 else None
        st = ppo_update(self.actor_model, self.opt, flat, self.cfg, iteration=it, device=self.device, shard=shard,
                        emulator=self.emu_update, bc_data=self.bc_data, ref=self.ref)
        return {**episode_metrics(b["episodes"]), "env_steps": b["env_steps"],
                "policy_steps_per_s": T * n_env / max(b["t_policy"], 1e-9), **st, "restarts": b["restarts"],
                "assemble_s": t_assemble}

    # -- the iteration
    def run(self) -> list[dict]:
        """Run RL iterations ``start_iter + 1 .. train.iterations``; the first actor rank returns (and writes to
        ``train.out_dir``) one record per iteration and checkpoints."""
        T, records = self.cfg.chunk_steps(), []
        env_mbs, roll_mbs = self._mbs("env"), self._mbs("rollout")
        metrics = None
        lead = self.rank == self.roles.actor.ranks[0]
        if lead:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.start_iter:
                dropped = drop_metrics_after(self.out / "metrics.jsonl", self.start_iter)
                if dropped:
                    self.log(f"dropped {dropped} metrics records past iteration {self.start_iter} (redone now)")
            metrics = open(self.out / "metrics.jsonl", "a" if self.start_iter else "w")
        t_prev = time.perf_counter()
        for it in range(self.start_iter + 1, self.cfg.train.iterations + 1):
            bufs = {j: {"obs": [], "chains": [], "inds": [], "logps": [], "values": [], "rewards": [], "dones": [],
                        "discarded": [], "episodes": [], "env_steps": 0, "t_policy": 0.0, "restarts": 0}
                    for j in roll_mbs}
            if "rollout" in self.my:
                self.rollout_model.eval()
            for j in env_mbs:
                self._env_start(j, it)
            t_roll = time.perf_counter()
            for t in range(T + 1):
                for j in range(self.roles.k):
                    if j in roll_mbs:
                        if self._pending == j:  # this rank simulates j too: its observations first
                            self._env_finish()
                        obs = self._rollout_recv(j, bufs[j], t)
                        if t < T:
                            self._rollout_act(j, obs, bufs[j])
                        else:
                            self._rollout_finish(j, obs, bufs[j])
                    if j in env_mbs:
                        if t < T:
                            self._env_dispatch(j)
                        elif self._pending == j:
                            self._env_finish()
            t_roll = time.perf_counter() - t_roll
            rec = None
            if "actor" in self.my:
                if self.switching:
                    self._switch("offload", "rollout")
                    self._switch("reload", "actor")
                t_train = time.perf_counter()
                rec = self._train(it)
                t_train = time.perf_counter() - t_train
                if lead:
                    save_rl_checkpoint(self.out, model=self.actor_model, opt=self.opt, iteration=it, cfg=self.cfg)
            # weight sync: version = iteration
            flat_w = None
            if self.rank == self.ws.src:
                flat_w = flatten(self.actor_model)
                self.ws.push(self.actor_model, version=it)
            if self.switching:
                self._switch("offload", "actor")
                self._switch("reload", "rollout")
            if "rollout" in self.my:
                if self.rank == self.ws.src:
                    unflatten_into(self.rollout_model, flat_w)
                else:
                    self.ws.pull(self.rollout_model)
            elif rec is not None and self.rank not in self.sync_ranks:
                self.ws.version = it  # an actor rank outside the sync group updated to the same weights
            now = time.perf_counter()
            if rec is not None and lead:
                wall = now - t_prev
                rec = {"iteration": it, **rec, "env_steps_per_s": rec["env_steps"] / wall,
                       "samples_per_s": T * self.roles.num_envs / wall, "iter_s": wall, "rollout_s": t_roll,
                       "train_s": t_train, "version": self.ws.version, "sync_bytes": self.ws.bytes,
                       "switch_bytes": sum(s["bytes"] for s in self.switch_log[-4:]) if self.switching else 0,
                       "switch_s": sum(s["seconds"] for s in self.switch_log[-4:]) if self.switching else 0.0,
                       **{f"channel_{k}": v for k, v in self.chans.stats().items()}}
                sr = "-" if rec["success_rate"] is None else f"{rec['success_rate']:.3f}"
                self.log(f"it={it} success={sr} eps={rec['episodes']} env_sps={rec['env_steps_per_s']:.0f} "
                         f"samples/s={rec['samples_per_s']:.1f} kl={rec['kl']:.4f} v_loss={rec['v_loss']:.4f} "
                         f"t={wall:.2f}s (rollout {t_roll:.2f} train {t_train:.2f}) version={self.ws.version}"
                         + (f" switch={rec['switch_bytes'] / 2**20:.1f}MiB/{rec['switch_s'] * 1e3:.0f}ms"
                            if self.switching else ""))
                records.append(rec)
                if metrics:
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
            t_prev = now
        if metrics:
            metrics.close()
        return records

    def close(self) -> None:
        """Close channels and env workers."""
        self.chans.close()
        for e in self.envs.values():
            e.close()
