"""The ``roles`` part of a Plan: which ranks run the RL roles env / rollout / actor, and how they are placed.

An RL iteration has three roles: **env** workers (simulation, CPU), **rollout** workers (policy inference) and
**actor** workers (training). A :class:`RolePlan` maps each role to global ranks (hence device types), splits the
env batch into ``k`` micro-batches and names the placement mode:

- ``collocated``: every role on the same ranks, taking turns (context switching frees the device in between);
- ``disaggregated``: each role on its own ranks, env and rollout overlapping in a pipeline of k micro-batches;
- ``hybrid``: env and rollout on separate ranks (pipelined), the actor on ranks shared with them (e.g. all).

Micro-batch ``j`` (``num_envs // k`` env slots, slots ``[j*m, (j+1)*m)``) is simulated by
``env.ranks[j % len(env.ranks)]`` and inferred by ``rollout.ranks[j % len(rollout.ranks)]``; the actor ranks train
data-parallel (each minibatch split evenly). With more env (rollout) ranks than micro-batches the extra ones idle
in that role. The mode is data, not code: the scheduler (``hetero.rl.scheduler``) writes it and
the RL system (``hetero.rl.system``) executes it.

    rp = RolePlan.from_dict({"mode": "disaggregated", "num_envs": 8, "k": 2, "env": {"ranks": [0]},
                             "rollout": {"ranks": [1]}, "actor": {"ranks": [2]}})
    rp.roles_of(1)   # ['rollout']

Tests: ``python -m pytest -q tests/test_rlsys_scheduler.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hetero.config import ConfigError, build, check, to_dict

Mode = Literal["collocated", "disaggregated", "hybrid"]
ROLE_NAMES = ("env", "rollout", "actor")


@dataclass(kw_only=True)
class RoleAssignment:
    """The ranks of one role."""

    ranks: list[int]
    """Global ranks running this role (no duplicates)."""
    device_types: list[str] = field(default_factory=list)
    """Device type id of each rank (same length as ranks); empty means ``cpu`` for all."""
    devices: list[str] = field(default_factory=list)
    """torch device string of each rank (``cpu``, ``cuda:0``); empty means ``cpu`` for all."""

    def __post_init__(self):
        check(len(self.ranks) > 0, "ranks", "must list at least one rank")
        check(len(set(self.ranks)) == len(self.ranks), "ranks", "lists a rank twice")
        check(all(r >= 0 for r in self.ranks), "ranks", "must be >= 0")
        if not self.device_types:
            self.device_types = ["cpu"] * len(self.ranks)
        if not self.devices:
            self.devices = ["cpu"] * len(self.ranks)
        check(len(self.device_types) == len(self.ranks), "device_types",
              f"has {len(self.device_types)} entries but there are {len(self.ranks)} ranks")
        check(len(self.devices) == len(self.ranks), "devices",
              f"has {len(self.devices)} entries but there are {len(self.ranks)} ranks")

    def device_of(self, rank: int) -> str:
        """torch device string of ``rank`` in this role."""
        return self.devices[self.ranks.index(rank)]

    def type_of(self, rank: int) -> str:
        """Device type id of ``rank`` in this role."""
        return self.device_types[self.ranks.index(rank)]


@dataclass(kw_only=True)
class RolePrediction:
    """The scheduler's figures for a role plan."""

    iteration_s: float
    """Predicted seconds per RL iteration."""
    rollout_s: float = 0.0
    """Of which the env + rollout phase (pipelined or sequential)."""
    train_s: float = 0.0
    """Of which the actor update."""
    switch_s: float = 0.0
    """Of which context switches (offload / reload)."""
    sync_s: float = 0.0
    """Of which the actor -> rollout weight sync."""
    runner_up: dict[str, Any] = field(default_factory=dict)
    """Second-best candidate: mode, k, ranks per role and its predicted iteration_s."""


@dataclass(kw_only=True)
class RolePlan:
    """Placement of the RL roles (see the module docstring)."""

    mode: Mode
    """collocated, disaggregated or hybrid."""
    num_envs: int
    """Env slots per iteration (the env batch)."""
    k: int = 1
    """Micro-batches the env batch is split into (num_envs divisible by k)."""
    env: RoleAssignment
    """Env (simulation) workers."""
    rollout: RoleAssignment
    """Rollout (policy inference) workers."""
    actor: RoleAssignment
    """Actor (training) workers, data-parallel."""
    predicted: RolePrediction | None = None
    """The scheduler's prediction (absent on hand-written role plans)."""

    def __post_init__(self):
        check(self.num_envs >= 1, "num_envs", "must be >= 1")
        check(self.k >= 1, "k", "must be >= 1")
        check(self.num_envs % self.k == 0, "k", f"num_envs {self.num_envs} is not divisible by k {self.k}")
        e, r, a = set(self.env.ranks), set(self.rollout.ranks), set(self.actor.ranks)
        if self.mode == "collocated":
            check(e == r == a, "mode", "collocated needs env, rollout and actor on the same ranks, got "
                  f"env {sorted(e)}, rollout {sorted(r)}, actor {sorted(a)}")
        elif self.mode == "disaggregated":
            check(not (e & r) and not (e & a) and not (r & a), "mode",
                  f"disaggregated needs disjoint ranks per role, got env {sorted(e)}, rollout {sorted(r)}, "
                  f"actor {sorted(a)}")
        else:
            check(not (e & r), "mode", f"hybrid needs env and rollout on separate ranks, got env {sorted(e)}, "
                  f"rollout {sorted(r)}")
            check(bool(a & (e | r)), "actor.ranks",
                  f"hybrid puts the actor on (some of) the env/rollout ranks {sorted(e | r)}, got {sorted(a)}")
        for name in ROLE_NAMES:  # one rank = one device: the same rank must name the same device in every role
            ra = getattr(self, name)
            for other in ROLE_NAMES:
                ro = getattr(self, other)
                for rank in set(ra.ranks) & set(ro.ranks):
                    check(ra.device_of(rank) == ro.device_of(rank) and ra.type_of(rank) == ro.type_of(rank),
                          f"{name}.devices", f"rank {rank} has device {ra.device_of(rank)!r}/{ra.type_of(rank)!r} "
                          f"here but {ro.device_of(rank)!r}/{ro.type_of(rank)!r} in {other}")

    # -- queries
    @property
    def micro_batch(self) -> int:
        """Env slots per micro-batch."""
        return self.num_envs // self.k

    @property
    def world_size(self) -> int:
        """Ranks used by any role (must be 0..world_size-1)."""
        return len(set(self.env.ranks) | set(self.rollout.ranks) | set(self.actor.ranks))

    @property
    def sync_ranks(self) -> list[int]:
        """Ranks of the actor -> rollout weight broadcast: the first actor rank (the source) and every rollout
        rank, sorted."""
        return sorted({self.actor.ranks[0]} | set(self.rollout.ranks))

    def roles_of(self, rank: int) -> list[str]:
        """Roles that ``rank`` runs, in env, rollout, actor order."""
        return [n for n in ROLE_NAMES if rank in getattr(self, n).ranks]

    def env_rank(self, j: int) -> int:
        """Rank simulating micro-batch ``j``."""
        return self.env.ranks[j % len(self.env.ranks)]

    def rollout_rank(self, j: int) -> int:
        """Rank running inference on micro-batch ``j``."""
        return self.rollout.ranks[j % len(self.rollout.ranks)]

    def slots(self, j: int) -> range:
        """Env slot indices of micro-batch ``j``."""
        return range(j * self.micro_batch, (j + 1) * self.micro_batch)

    def device_of(self, rank: int) -> str:
        """torch device of ``rank`` (from whichever role it runs)."""
        for n in ROLE_NAMES:
            ra = getattr(self, n)
            if rank in ra.ranks:
                return ra.device_of(rank)
        raise ConfigError("roles", f"rank {rank} runs no role")

    def validate(self, *, world_size: int | None = None) -> RolePlan:
        """Check that the roles cover ranks 0..world_size-1 exactly. Returns self."""
        used = set(self.env.ranks) | set(self.rollout.ranks) | set(self.actor.ranks)
        if world_size is not None:
            check(used == set(range(world_size)), "roles",
                  f"roles use ranks {sorted(used)} but the world has {world_size} ranks (0..{world_size - 1})")
        return self

    def describe(self) -> str:
        """One line: mode, k and ranks per role."""
        def part(n):
            ra = getattr(self, n)
            types = sorted(set(ra.device_types))
            return f"{n}={ra.ranks}({'/'.join(types)})"
        return f"{self.mode} k={self.k} " + " ".join(part(n) for n in ROLE_NAMES)

    # -- serialisation
    def to_dict(self) -> dict:
        """Plain-data form (YAML/JSON)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, path: str = "roles") -> RolePlan:
        """Validate a parsed ``roles`` mapping; errors name the key path under ``path``."""
        return build(cls, data, path)
