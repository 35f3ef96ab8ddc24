"""Profiling-guided placement of the RL roles: which ranks run env / rollout / actor, in which mode, with which k.

Inputs (a YAML, see ``examples/rl/system_*.yaml``): the device pools (type, count), the workload (env batch, chunk
steps per iteration, transfer cost per message) and a profile per device type: the cost of one env chunk-step of
``n`` env slots, of one policy ``sample`` of ``n`` observations (each ``fixed_s + per_item_s * n``), of the
update (``fixed_s`` per optimizer step + ``per_item_s`` per sample), of a context switch and of a weight sync.
Profiles are measured on this machine by :func:`measure_profile` (``tools/bench_rl_system.py`` does that) or
written by hand / synthesised for tests.

Cost model (:func:`predict`) of one iteration = rollout phase + actor update + weight sync + context switches:

- rollout phase: the exact list schedule of the system's role loops: for every chunk step t and micro-batch j,
  inference R(j, t) on its rollout rank after the observation arrives, then env step E(j, t) on its env rank after
  the actions arrive; a rank runs its tasks in program order. On an accelerator rank the simulators (host CPU) and
  the inference are separate resources, each running one micro-batch at a time, so with more micro-batches than
  ranks inference on one overlaps the simulation of another; on a CPU rank both compete for the same cores and
  add up (collocated = sum of role times). On separate ranks it is a pipeline: warm-up + bottleneck stage x
  micro-batches;
- update: the slowest actor rank on its equal share of the samples (data parallel), plus, with several actor
  ranks, one gradient all-reduce per optimizer step: measured for that many ranks where the workload has it
  (``step_sync_s``: lockstep ranks also wait there for the slowest one), else priced over ``link``
  (:func:`hetero.predictor.comm.allreduce_time`);
- shared host (``host_cores`` > 0, CPU ranks emulating devices on one machine): each phase lasts at least its
  total CPU work divided by the effective cores;
- switch: ranks that hold both the rollout and the actor model offload one and reload the other twice per
  iteration; sync: one actor -> rollout broadcast per iteration (flattening the weights, from the profile, plus
  the broadcast of ``weight_bytes`` over ``link``).

Search (:func:`search`): every rank takes a non-empty subset of {env, rollout, actor}; ranks of one type are
interchangeable, so the search enumerates per type how many ranks take each role subset (multisets, not rank
subsets), classifies the placement as collocated / disaggregated / hybrid (or invalid), and tries every k.
:func:`exhaustive` enumerates every rank-to-role-subset map instead (7^N); the tests check both agree.

    hetero-plan --rl examples/rl/system_cpu3.yaml [-o plan.yaml]      # or: python -m hetero.rl.scheduler --rl ...

Tests: ``python -m pytest -q tests/test_rlsys_scheduler.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hetero.autoparallel.roles import Mode, RoleAssignment, RolePlan, RolePrediction
from hetero.cluster.spec import Link
from hetero.config import ConfigError, build, check, load_yaml, under_file
from hetero.predictor.comm import allreduce_time, broadcast_time

MODES: tuple[Mode, ...] = ("collocated", "disaggregated", "hybrid")
# the 7 non-empty role subsets a rank can take, as (env, rollout, actor) flags
ROLE_SETS = [s for s in itertools.product((0, 1), repeat=3) if any(s)]


@dataclass(kw_only=True)
class LinearCost:
    """Seconds of one call on ``n`` items: ``fixed_s + per_item_s * n``."""

    fixed_s: float = 0.0
    """Per-call overhead in seconds."""
    per_item_s: float
    """Seconds per item (env slot, observation or sample)."""

    def __post_init__(self):
        check(self.fixed_s >= 0, "fixed_s", "must be >= 0")
        check(self.per_item_s >= 0, "per_item_s", "must be >= 0")

    def __call__(self, n: float) -> float:
        return self.fixed_s + self.per_item_s * n


@dataclass(kw_only=True)
class DeviceProfile:
    """Costs of the RL roles on one device type."""

    env: LinearCost | None = None
    """One chunk-step of n env slots; null: this type does not run envs (e.g. a GPU)."""
    env_microbatch: dict[int, list[float]] = field(default_factory=dict)
    """Measured seconds of one chunk-step of each micro-batch of n env slots (micro-batch j = slots j*n..(j+1)*n-1,
    as the system splits them; tasks differ in cost), by n; where given, micro-batch j costs its own figure, not
    ``env(n)`` (ranks stepping micro-batches side by side wait for the slowest)."""
    rollout: LinearCost
    """One policy sample (denoising chain + value) of n observations."""
    actor: LinearCost
    """The update: ``fixed_s`` per optimizer step (``workload.update_steps`` of them, on every actor rank) plus
    ``per_item_s`` per sample of the rank's share."""
    switch_s: float = 0.0
    """One context switch pair (offload one model, reload the other) on this type."""
    sync_s: float = 0.0
    """One actor -> rollout weight sync touching this type."""

    def __post_init__(self):
        check(self.switch_s >= 0, "switch_s", "must be >= 0")
        check(self.sync_s >= 0, "sync_s", "must be >= 0")
        check(all(n >= 1 and all(t >= 0 for t in ts) for n, ts in self.env_microbatch.items()), "env_microbatch",
              "keys must be micro-batch sizes >= 1 and values lists of seconds >= 0")

    def env_s(self, n: int, j: int) -> float:
        """Seconds of one chunk-step of micro-batch ``j`` of ``n`` env slots."""
        per = self.env_microbatch.get(n)
        return per[j] if per is not None and j < len(per) else self.env(n)


@dataclass(kw_only=True)
class DevicePool:
    """Devices of one type; ranks are numbered pool after pool in the order given."""

    type: str
    """Device type id (a key of ``profiles``)."""
    count: int
    """Number of devices (ranks)."""
    device: str = "cpu"
    """torch device string of these ranks: ``cpu``, or ``cuda`` (rank i of the pool gets ``cuda:i``)."""

    def __post_init__(self):
        check(self.count >= 1, "count", "must be >= 1")
        check(self.device in ("cpu", "cuda"), "device", f"must be cpu or cuda, got {self.device!r}")


@dataclass(kw_only=True)
class Workload:
    """What one RL iteration does."""

    num_envs: int
    """Env slots (the env batch)."""
    rollout_chunks: int
    """Chunk-steps per env per iteration (T)."""
    transfer: LinearCost = field(default_factory=lambda: LinearCost(per_item_s=0.0))
    """One message between two ranks carrying n samples (obs, actions or trajectories)."""
    update_steps: int = 1
    """Optimizer steps per iteration (update epochs x minibatches); each all-reduces the gradients over the actor
    ranks when there are several."""
    grad_bytes: float = 0.0
    """Bytes of gradients all-reduced per optimizer step (the trainable parameters)."""
    weight_bytes: float = 0.0
    """Bytes of the policy's weights broadcast actor -> rollout after each update."""
    step_sync_s: dict[int, float] = field(default_factory=dict)
    """Measured seconds per optimizer step that n lockstep actor ranks spend in the gradient all-reduce, waiting
    for the slowest rank included, by actor count n; counts not listed are priced over ``link``."""

    def __post_init__(self):
        check(all(n >= 2 and v >= 0 for n, v in self.step_sync_s.items()), "step_sync_s",
              "keys must be actor counts >= 2 and values seconds >= 0")
        check(self.num_envs >= 1, "num_envs", "must be >= 1")
        check(self.rollout_chunks >= 1, "rollout_chunks", "must be >= 1")
        check(self.update_steps >= 1, "update_steps", "must be >= 1")
        check(self.grad_bytes >= 0, "grad_bytes", "must be >= 0")
        check(self.weight_bytes >= 0, "weight_bytes", "must be >= 0")


@dataclass(kw_only=True)
class SchedulerConfig:
    """Input of the RL scheduler (``hetero-plan --rl CONFIG``)."""

    devices: list[DevicePool]
    """Device pools; ranks 0.. in this order."""
    workload: Workload
    """The iteration to place."""
    profiles: dict[str, DeviceProfile]
    """Role costs per device type id."""
    modes: list[Mode] = field(default_factory=lambda: list(MODES))
    """Placement modes to consider."""
    k_choices: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """Micro-batch counts to consider (those not dividing num_envs are skipped)."""
    rl_config: str = ""
    """RL run config (``examples/rl/*.yaml``) the system runs with this placement (optional)."""
    link: Link | None = None
    """Link between the ranks (bandwidth bytes/s, latency s) for the gradient all-reduce and the weight broadcast;
    null: those collectives cost nothing beyond the profile's flatten time."""
    host_cores: float = 0.0
    """Effective CPU cores shared by all CPU ranks and env simulation (e.g. several CPU "devices" emulated on one
    host); a phase then lasts at least its total CPU work / host_cores. 0: every rank is its own device."""

    def __post_init__(self):
        check(len(self.devices) > 0, "devices", "must list at least one pool")
        for i, p in enumerate(self.devices):
            check(p.type in self.profiles, f"devices[{i}].type",
                  f"{p.type!r} has no profile (profiles: {', '.join(self.profiles) or 'none'})")
        check(len(self.modes) > 0, "modes", "must list at least one mode")
        check(len(self.k_choices) > 0 and all(k >= 1 for k in self.k_choices), "k_choices", "must be >= 1")
        check(any(self.workload.num_envs % k == 0 for k in self.k_choices), "k_choices",
              f"no k divides num_envs {self.workload.num_envs}")
        check(any(self.profiles[p.type].env is not None for p in self.devices), "profiles",
              "no device type can run envs (every profile has env: null)")
        check(self.host_cores >= 0, "host_cores", "must be >= 0")

    @property
    def rank_types(self) -> list[str]:
        """Device type of each rank."""
        return [p.type for p in self.devices for _ in range(p.count)]

    @property
    def rank_devices(self) -> list[str]:
        """torch device of each rank."""
        return [f"cuda:{i}" if p.device == "cuda" else "cpu" for p in self.devices for i in range(p.count)]


def load_config(path: str) -> SchedulerConfig:
    """Read a scheduler YAML; ConfigError names the file and key path."""
    try:
        return build(SchedulerConfig, load_yaml(path))
    except ConfigError as e:
        if e.path.startswith(str(path)):
            raise
        raise under_file(path, e) from None


# -- cost model -------------------------------------------------------------------------------------------------
def priced_step_sync_s(grad_bytes: float, n: int, link: Link) -> float:
    """Seconds of one optimizer step's all-reduces over ``n`` actor ranks priced over ``link``: the gradients, then
    the 5 loss statistics."""
    return allreduce_time(grad_bytes, n, link) + allreduce_time(40, n, link)


def classify(env: list[int], rollout: list[int], actor: list[int]) -> Mode | None:
    """The placement mode of these rank sets, or None when it is none of the three."""
    e, r, a = set(env), set(rollout), set(actor)
    if e == r == a:
        return "collocated"
    if not (e & r) and not (e & a) and not (r & a):
        return "disaggregated"
    if not (e & r) and (a & (e | r)):
        return "hybrid"
    return None


def _key(rank: int, overlapping: set[int], role: str) -> object:
    """The resource a role's task occupies on ``rank``: its own (``(role, rank)``) where simulation and inference
    overlap on that rank, else the rank (one resource for both)."""
    return (role, rank) if rank in overlapping else rank


def predict(rp: RolePlan, cfg: SchedulerConfig) -> RolePrediction:
    """Predicted seconds of one iteration of ``rp`` (see the module docstring)."""
    types = cfg.rank_types
    prof = cfg.profiles
    wl = cfg.workload
    m, k, T = rp.micro_batch, rp.k, wl.rollout_chunks
    for r in set(rp.env.ranks) | set(rp.rollout.ranks) | set(rp.actor.ranks):
        check(r < len(types), "roles", f"rank {r} is outside the {len(types)} devices")
    for r in rp.env.ranks:
        check(prof[types[r]].env is not None, "roles.env", f"rank {r} is a {types[r]} that cannot run envs")
    on_host = [d == "cpu" for d in cfg.rank_devices]
    # a rank's simulators (host CPU) and its inference are two resources when the inference runs on an
    # accelerator: a rank holding both roles then samples for one micro-batch while another simulates (one at a
    # time), in program order: it starts simulating j only once the micro-batch before is simulated, and samples
    # for the next after that. On a CPU rank both compete for the same cores: one resource, as if sequential
    both = {r for r in set(rp.env.ranks) & set(rp.rollout.ranks) if not on_host[r]}
    free: dict[object, float] = {}  # resource -> when it is next free
    ready = [0.0] * k  # when the observation of micro-batch j is available on its env rank
    host_work = 0.0    # CPU seconds of the rollout phase (env simulation + inference on CPU ranks)
    for _t in range(T):
        for j in range(k):
            er, rr = rp.env_rank(j), rp.rollout_rank(j)
            x = wl.transfer(m) if er != rr else 0.0
            ri, es = _key(rr, both, "inf"), _key(er, both, "sim")
            start = max(free.get(ri, 0.0), ready[j] + x)
            free[ri] = start + prof[types[rr]].rollout(m)
            start = max(free.get(es, 0.0), free[ri] + x)
            if er in both:  # program order: the rank samples again only after starting this simulation
                ei = _key(er, both, "inf")
                free[ei] = max(free.get(ei, 0.0), start)
            e = prof[types[er]].env_s(m, j)
            free[es] = ready[j] = start + e
            host_work += e + (prof[types[rr]].rollout(m) if on_host[rr] else 0.0)
    # the rollout rank receives the last step, bootstraps, and ships T*m samples per micro-batch to the actor
    done = 0.0
    for j in range(k):
        er, rr = rp.env_rank(j), rp.rollout_rank(j)
        x = wl.transfer(m) if er != rr else 0.0
        ri = _key(rr, both, "inf")
        t_j = max(free.get(ri, 0.0), ready[j] + x) + prof[types[rr]].rollout(m)
        free[ri] = t_j
        if any(a != rr for a in rp.actor.ranks):
            t_j += wl.transfer(T * m)
        done = max(done, t_j)
    samples = wl.num_envs * T
    n_a = len(rp.actor.ranks)
    def update(a: int) -> float:  # every actor rank takes every optimizer step, on its share of the samples
        c = prof[types[a]].actor
        return wl.update_steps * c.fixed_s + c.per_item_s * samples / n_a

    train = max(update(a) for a in rp.actor.ranks)
    if n_a in wl.step_sync_s:  # measured for this many lockstep ranks (the all-reduces and the ranks' skew)
        train += wl.update_steps * wl.step_sync_s[n_a]
    elif cfg.link is not None and n_a > 1:
        train += wl.update_steps * priced_step_sync_s(wl.grad_bytes, n_a, cfg.link)
    if cfg.host_cores > 0:  # shared host: a phase cannot beat its CPU work spread over the cores
        done = max(done, host_work / cfg.host_cores)
        cpu_train = sum(update(a) for a in rp.actor.ranks if on_host[a])
        train = max(train, cpu_train / cfg.host_cores)
    shared = set(rp.actor.ranks) & set(rp.rollout.ranks)
    switch = max((prof[types[r]].switch_s for r in shared), default=0.0)
    model_ranks = set(rp.rollout.ranks) | set(rp.actor.ranks)  # every rank holding a copy of the policy
    sync = 0.0
    if len(model_ranks) > 1:
        sync = max(prof[types[r]].sync_s for r in model_ranks)
        if cfg.link is not None:
            sync += broadcast_time(wl.weight_bytes, len(rp.sync_ranks), cfg.link)
    return RolePrediction(iteration_s=done + train + switch + sync, rollout_s=done, train_s=train,
                          switch_s=switch, sync_s=sync)


def _make(cfg: SchedulerConfig, mode: Mode, k: int, sets: list[tuple[int, int, int]]) -> RolePlan:
    types, devs = cfg.rank_types, cfg.rank_devices

    def role(i):
        ranks = [r for r, s in enumerate(sets) if s[i]]
        return RoleAssignment(ranks=ranks, device_types=[types[r] for r in ranks], devices=[devs[r] for r in ranks])

    return RolePlan(mode=mode, num_envs=cfg.workload.num_envs, k=k, env=role(0), rollout=role(1), actor=role(2))


@dataclass
class Candidate:
    """One scored placement."""

    plan: RolePlan
    """The role plan (with ``predicted`` filled in)."""

    @property
    def time_s(self) -> float:
        """Predicted iteration seconds."""
        return self.plan.predicted.iteration_s


def _score(cfg: SchedulerConfig, sets: list[tuple[int, int, int]], ks: list[int]) -> list[Candidate]:
    env = [r for r, s in enumerate(sets) if s[0]]
    rollout = [r for r, s in enumerate(sets) if s[1]]
    actor = [r for r, s in enumerate(sets) if s[2]]
    if not env or not rollout or not actor:
        return []
    mode = classify(env, rollout, actor)
    if mode is None or mode not in cfg.modes:
        return []
    types = cfg.rank_types
    if any(cfg.profiles[types[r]].env is None for r in env):
        return []
    out = []
    for k in ks:
        if k < max(len(env), len(rollout)):  # a rank without a micro-batch would idle: another k covers it
            continue
        rp = _make(cfg, mode, k, sets)
        rp.predicted = predict(rp, cfg)
        out.append(Candidate(rp))
    return out


def _valid_ks(cfg: SchedulerConfig) -> list[int]:
    return sorted({k for k in cfg.k_choices if cfg.workload.num_envs % k == 0})


def search(cfg: SchedulerConfig, *, top: int = 2) -> list[Candidate]:
    """The ``top`` best placements (fastest first), enumerating role-subset counts per device type."""
    ks = _valid_ks(cfg)
    per_pool = []  # for each pool: every way to give its ranks role subsets (a multiset, in canonical order)
    for p in cfg.devices:
        per_pool.append(list(itertools.combinations_with_replacement(range(len(ROLE_SETS)), p.count)))
    found: list[Candidate] = []
    for combo in itertools.product(*per_pool):
        sets = [ROLE_SETS[i] for pool in combo for i in pool]
        found += _score(cfg, sets, ks)
    check(bool(found), "modes", "no valid placement for these devices, modes and k choices")
    found.sort(key=lambda c: (c.time_s, c.plan.describe()))
    return found[:top]


def exhaustive(cfg: SchedulerConfig) -> Candidate:
    """The best placement by trying every rank -> role subset map and every k (7^N x k; small N only)."""
    ks = _valid_ks(cfg)
    n = len(cfg.rank_types)
    check(n <= 7, "devices", f"exhaustive search is for <= 7 ranks, got {n}")
    best = None
    for sets in itertools.product(ROLE_SETS, repeat=n):
        for c in _score(cfg, list(sets), ks):
            if best is None or c.time_s < best.time_s:
                best = c
    check(best is not None, "modes", "no valid placement")
    return best


def schedule(cfg: SchedulerConfig) -> tuple[RolePlan, RolePlan | None]:
    """(best role plan with its prediction and runner-up recorded, runner-up role plan or None)."""
    cands = search(cfg, top=2)
    best = cands[0].plan
    runner = cands[1].plan if len(cands) > 1 else None
    if runner is not None:
        best.predicted.runner_up = {"placement": runner.describe(), "iteration_s": runner.predicted.iteration_s}
    return best, runner


def to_plan(rp: RolePlan, *, samples: int, model: str = "vla-policy") -> object:
    """A Plan carrying ``rp`` as its roles: one stage (the policy on the actor ranks, data-parallel)."""
    from hetero.autoparallel.plan import Plan, Prediction, Stage

    n_a = len(rp.actor.ranks)
    shares = [samples // n_a + (1 if i < samples % n_a else 0) for i in range(n_a)]
    stage = Stage(layers=(0, 1), device_type=rp.actor.device_types[0], ranks=list(rp.actor.ranks), dp=n_a,
                  batch_shares=shares)
    pred = Prediction(step_time_s=rp.predicted.iteration_s) if rp.predicted else None
    return Plan(model=model, num_layers=1, global_batch=samples, stages=[stage], predicted=pred, roles=rp,
                meta={"kind": "rl", "placement": rp.describe()})


# -- measured profiles ------------------------------------------------------------------------------------------
def fit_linear(xs: list[float], ys: list[float]) -> LinearCost:
    """Least-squares ``fixed + per_item * n`` (clamped to >= 0)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else 0.0
    b = max(b, 0.0)
    a = max(my - b * mx, 0.0)
    return LinearCost(fixed_s=a, per_item_s=b)


def measure_profile(rl_cfg, *, sizes: list[int], sample_sizes: list[int], device: str = "cpu", repeats: int = 5,
                    slowdown: float = 1.0, with_env: bool = True, log=print) -> DeviceProfile:
    """Measure the role costs of the RL run ``rl_cfg`` on ``device``: env chunk-steps (if ``with_env``; the mean
    over a whole episode, resets included, of every micro-batch of that size) and policy samples (the median of
    ``repeats``) for each micro-batch size in ``sizes``, the PPO update (all epochs) for each sample count in
    ``sample_sizes`` (fitted to a cost per optimizer step + a cost per sample; the others to ``fixed + per_item *
    n``); offload + reload and flatten costs of the policy.
    ``slowdown`` > 1 profiles a device emulated that many times slower (CPU benchmarks): the simulators and the
    policy / update compute are padded as the RL system's ranks pad them (:mod:`hetero.runtime.emulate`), so the
    profile is measured on the emulated device, not scaled."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(rl_cfg.train.threads or threads)  # as the role loops run: one thread per rank
    try:
        return _measure(rl_cfg, sizes=sizes, sample_sizes=sample_sizes, device=device, repeats=repeats,
                        slowdown=slowdown, with_env=with_env, log=log)
    finally:
        torch.set_num_threads(threads)


def update_batch(obs: dict, s, n: int, rl_cfg, *, generator) -> dict:
    """A PPO update batch of ``n`` samples for timing the update (``hetero.rl.update.ppo_update``'s keys): the
    observations ``obs`` and policy sample ``s`` (a :class:`hetero.rl.policy.Sample` of them) repeated to ``n``,
    random advantages and returns. With Flow-SDE every sample gets its own stochastic denoising step, as a
    rollout's samples carry one per chunk-step and micro-batch and an update's minibatches mix them (replay runs
    one forward per distinct step); a single ``sample`` call has one step for all."""
    import torch

    from hetero.rl.update import index_obs

    idx = torch.arange(n) % s.chain.shape[0]
    ind = s.denoise_ind.cpu()[idx]
    if rl_cfg.sampler.method == "flow_sde":
        ind = torch.randint(0, rl_cfg.sampler.num_steps, (n,), generator=generator)
    return {"obs": index_obs(obs, idx), "chain": s.chain.cpu()[idx], "denoise_ind": ind,
            "logp": s.logp.cpu()[idx], "value": s.value.cpu()[idx], "adv": torch.randn(n, generator=generator),
            "ret": torch.randn(n, generator=generator)}


def _measure(rl_cfg, *, sizes, sample_sizes, device, repeats, slowdown, with_env, log) -> DeviceProfile:
    import dataclasses

    import numpy as np
    import torch

    from hetero.rl.offload import HostStore
    from hetero.rl.policy import load_checkpoint, obs_to_torch, sample
    from hetero.rl.update import make_optimizer, ppo_update
    from hetero.rl.workers import make_microbatch_env
    from hetero.runtime.emulate import Emulator

    emu = Emulator(slowdown=slowdown)

    model, _ = load_checkpoint(rl_cfg.train.init_checkpoint, policy=rl_cfg.policy)
    model.to(device)
    opt, _, _ = make_optimizer(model, rl_cfg)
    gen = torch.Generator(device=device).manual_seed(0)
    env_t, roll_t = [], []
    per_group: dict[int, list[float]] = {}  # n -> chunk-step seconds of each micro-batch of n slots
    last = None
    # env chunk-steps: the mean over a whole episode (one more chunk-step than it lasts), so that the resets a run
    # pays (an env auto-resets when its episode ends) are in the per-step cost, and over every micro-batch of
    # that size (env slots g*n..(g+1)*n - 1, as the system splits them: tasks differ in cost across slots)
    episode = -(-rl_cfg.env.max_episode_steps // rl_cfg.sampler.chunk) + 1
    for n in sizes:
        groups = max(1, rl_cfg.env.num_envs // n) if with_env else 1
        te = []
        for g in range(groups):
            env = make_microbatch_env(dataclasses.replace(rl_cfg.env, num_workers=1), range(g * n, (g + 1) * n),
                                      slowdown=slowdown) if with_env else None
            try:
                if env is not None:
                    obs = env.reset(seed=0)
                else:
                    obs = {"state": np.zeros((n, model.cfg.state_dim), np.float32), "instruction": ["reach"] * n}
                tr, tg = [], []
                for i in range(max(repeats if g == 0 else 0, episode if env is not None else 0) + 1):
                    if g == 0 and i <= repeats:  # sampling: the median of ``repeats`` (after one warm-up)
                        t0 = time.perf_counter()
                        with emu.compute(kind=f"sample{n}"):
                            s = sample(model, obs_to_torch(obs, device), rl_cfg.sampler, generator=gen)
                            if device.startswith("cuda"):
                                torch.cuda.synchronize()
                        tr.append(time.perf_counter() - t0)
                    elif i == 0:
                        s = sample(model, obs_to_torch(obs, device), rl_cfg.sampler, generator=gen)
                    if env is not None:
                        t0 = time.perf_counter()
                        obs = env.chunk_step(np.clip(s.actions.cpu().numpy(), -1, 1)).obs
                        tg.append(time.perf_counter() - t0)
                if tr:
                    roll_t.append(float(np.median(tr[1:])))
                te += tg[1:]
                if tg[1:]:
                    per_group.setdefault(n, []).append(float(np.mean(tg[1:])))
                last = (obs_to_torch(obs, "cpu"), s)
            finally:
                if env is not None:
                    env.close()
        if te:
            env_t.append(float(np.mean(te)))
    o, s = last
    act_t = []
    for n in sample_sizes:
        batch = update_batch(o, s, n, rl_cfg, generator=torch.Generator().manual_seed(n))
        ts = []
        for _ in range(2):
            t0 = time.perf_counter()
            ppo_update(model, opt, batch, rl_cfg, iteration=rl_cfg.algo.critic_warmup_iters + 1, device=device,
                       emulator=emu if emu.enabled else None)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        act_t.append(min(ts))
    store = HostStore()
    t0 = time.perf_counter()
    store.offload("actor", model, opt, log=None)
    store.reload("actor", model, opt, log=None)
    switch = 2 * (time.perf_counter() - t0)  # actor and rollout model, each out and back
    from hetero.rl.weightsync import flatten

    t0 = time.perf_counter()
    flatten(model).clone()
    sync = time.perf_counter() - t0
    ac = rl_cfg.algo  # the update: fixed per optimizer step + per sample, least squares (clamped to >= 0)
    steps = [float(ac.update_epochs * -(-n // ac.minibatch_size)) for n in sample_sizes]
    sol = np.linalg.lstsq(np.array([steps, [float(n) for n in sample_sizes]]).T, np.array(act_t), rcond=None)[0]
    act = LinearCost(fixed_s=max(float(sol[0]), 0.0), per_item_s=max(float(sol[1]), 0.0))
    roll = fit_linear([float(n) for n in sizes], roll_t)
    env_c = fit_linear([float(n) for n in sizes], env_t) if with_env else None
    prof = DeviceProfile(env=env_c, env_microbatch=per_group, rollout=roll, actor=act, switch_s=switch, sync_s=sync)
    if log:
        log(f"profile on {device} (slowdown {slowdown}): env {prof.env} rollout {prof.rollout} actor {prof.actor} "
            f"switch {switch * 1e3:.2f} ms sync {sync * 1e3:.2f} ms")
    return prof


# -- CLI --------------------------------------------------------------------------------------------------------
def report(cfg: SchedulerConfig, best: RolePlan, runner: RolePlan | None) -> dict:
    """JSON-able summary of the choice."""
    def one(rp):
        p = rp.predicted
        return {"placement": rp.describe(), "mode": rp.mode, "k": rp.k, "iteration_s": p.iteration_s,
                "rollout_s": p.rollout_s, "train_s": p.train_s, "switch_s": p.switch_s, "sync_s": p.sync_s}

    return {"best": one(best), "runner_up": one(runner) if runner else None,
            "samples_per_iteration": cfg.workload.num_envs * cfg.workload.rollout_chunks}


def run_cli(config: str, *, output: str | None = None, as_json: bool = False, out=None) -> int:
    """``hetero-plan --rl CONFIG``: print the chosen placement, its predicted iteration time and the runner-up;
    write the Plan (with roles) to ``output``. Returns an exit code; bad input prints the ConfigError."""
    out = out or sys.stdout
    try:
        cfg = load_config(config)
        t0 = time.perf_counter()
        best, runner = schedule(cfg)
        dt = time.perf_counter() - t0
        if output:
            to_plan(best, samples=cfg.workload.num_envs * cfg.workload.rollout_chunks).to_file(output)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep = report(cfg, best, runner)
    rep["search_s"] = dt
    if as_json:
        print(json.dumps(rep), file=out)
        return 0
    b = rep["best"]
    print(f"RL placement for {len(cfg.rank_types)} devices ({', '.join(f'{p.count}x{p.type}' for p in cfg.devices)}),"
          f" {cfg.workload.num_envs} envs x {cfg.workload.rollout_chunks} chunk-steps; searched in {dt:.2f} s", file=out)
    print(f"  chosen:    {b['placement']}", file=out)
    print(f"             predicted iteration {b['iteration_s']:.4f} s = rollout {b['rollout_s']:.4f} + train "
          f"{b['train_s']:.4f} + switch {b['switch_s']:.4f} + sync {b['sync_s']:.4f}", file=out)
    if rep["runner_up"]:
        r = rep["runner_up"]
        print(f"  runner-up: {r['placement']}", file=out)
        print(f"             predicted iteration {r['iteration_s']:.4f} s ({r['iteration_s'] / b['iteration_s'] - 1:+.1%})",
              file=out)
    if output:
        print(f"  plan written to {output}", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hetero.rl.scheduler --rl CONFIG [-o plan.yaml] [--json]``."""
    p = argparse.ArgumentParser(prog="python -m hetero.rl.scheduler", description=__doc__.splitlines()[0])
    p.add_argument("--rl", required=True, help="RL scheduler YAML (examples/rl/system_*.yaml)")
    p.add_argument("-o", "--output", default=None, help="write the plan with roles here (.yaml/.json)")
    p.add_argument("--json", action="store_true", help="print JSON")
    a = p.parse_args(argv)
    if not Path(a.rl).exists():
        print(f"error: {a.rl}: file not found", file=sys.stderr)
        return 2
    return run_cli(a.rl, output=a.output, as_json=a.json)


if __name__ == "__main__":
    sys.exit(main())
