"""``hetero.init(plan)``: the process group, this rank's place in the plan, and its groups and DeviceMesh.

Every rank calls ``init`` with the same plan. It joins the default process group (the ``hetero`` communicator
backend when ``hetero.communicator.init_process_group`` is available, else gloo), checks the plan against the world
(and the cluster's device types when given), and creates, on all ranks in one fixed order, the explicit groups a
plan needs: per stage a TP group for each replica and a DP group for each TP index, and a pipeline group for each
(replica, TP index). The rank's own stage gets a 2-D DeviceMesh ``(dp, tp)`` built from those groups.

    rt = hetero.init(Plan.from_file(os.environ["HETERO_PLAN"]))
    print(rt.stage_index, rt.dp_index, rt.tp_index, rt.mesh)

Environment (set by ``hetero-run`` or torchrun): RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, HETERO_DEVICE.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from hetero.autoparallel.plan import Plan, Stage
from hetero.config import ConfigError
from hetero.runtime.testing import free_port


@dataclass(kw_only=True)
class Runtime:
    """This rank's view of a running plan (returned by :func:`init`)."""

    plan: Plan
    """The plan being executed."""
    rank: int
    """Global rank."""
    world_size: int
    """Number of ranks."""
    stage_index: int
    """Pipeline stage this rank runs."""
    dp_index: int
    """DP replica (pipeline) this rank belongs to."""
    tp_index: int
    """Index inside the stage's TP group."""
    device: torch.device
    """Device this rank computes on."""
    tp_group: Any = None
    """Process group of this rank's TP peers (same stage and replica); None when tp == 1."""
    dp_group: Any = None
    """Process group of the ranks holding the same shard in the other replicas; None when dp == 1."""
    pp_group: Any = None
    """Process group of this rank's pipeline (one rank per stage); None when pp == 1."""
    mesh: Any = None
    """DeviceMesh ``(dp, tp)`` over this rank's stage."""
    cluster: Any = None
    """The Cluster, when one was given (for device types, MFU and emulation)."""
    owns_process_group: bool = False
    """Whether init created the default process group (and ``shutdown`` should destroy it)."""
    backend: str = "gloo"
    """Backend of the default process group."""
    extra: dict = field(default_factory=dict)
    """Free-form per-run state (e.g. the pipeline ranks)."""

    @property
    def stage(self) -> Stage:
        """This rank's stage of the plan."""
        return self.plan.stages[self.stage_index]

    @property
    def is_first_stage(self) -> bool:
        """Whether this rank runs the first pipeline stage."""
        return self.stage_index == 0

    @property
    def is_last_stage(self) -> bool:
        """Whether this rank runs the last pipeline stage."""
        return self.stage_index == self.plan.pp - 1

    @property
    def dp_weight(self) -> float:
        """n_d / N: this replica's share of the global batch (its gradient weight)."""
        return self.stage.batch_shares[self.dp_index] / self.plan.global_batch

    def shutdown(self) -> None:
        """Barrier, then destroy the default process group if ``init`` created it."""
        if self.owns_process_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def _store(timeout: datetime.timedelta):
    """(store, rank, world) for env:// rendezvous, the keys prefixed by the elastic restart attempt: after a restart
    the agent's store still holds the dead workers' addresses, which a fresh worker could otherwise read."""
    env = os.environ
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    agent_store = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world,
                          is_master=(rank == 0 and not agent_store), timeout=timeout,
                          wait_for_workers=False, multi_tenant=not agent_store)
    return dist.PrefixStore(f"hetero/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store), rank, world


def _join(plan: Plan, timeout_s: float, device_type: str | None, backend: str) -> tuple[bool, str]:
    """Join (or create) the default process group; returns (created, backend)."""
    if dist.is_initialized():
        return False, dist.get_backend()
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        if plan.world_size != 1:
            raise ConfigError("plan", f"the plan needs {plan.world_size} ranks but this process was not started by "
                                      "hetero-run/torchrun (RANK and WORLD_SIZE are unset); run it with hetero-run")
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        hetero_init = None
        if backend in ("auto", "hetero"):
            try:
                from hetero.communicator import init_process_group as hetero_init  # the cross-type backend
            except ImportError:
                if backend == "hetero":
                    raise
        elif backend != "gloo":
            raise ConfigError("backend", f"must be auto, hetero or gloo, got {backend!r}")
        store, rank, world = _store(timeout)
        if hetero_init is not None:
            hetero_init(device_type=device_type, timeout=timeout, store=store, rank=rank, world_size=world)
        else:
            dist.init_process_group("gloo", timeout=timeout, store=store, rank=rank, world_size=world)
    except (RuntimeError, dist.DistError) as e:  # DistStoreError / DistNetworkError on a missing peer
        ws = env.get("WORLD_SIZE")
        raise RuntimeError(
            f"rank {env.get('RANK')}: could not form the process group of {ws} ranks at "
            f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')} within {timeout_s:g} s (is a peer missing or "
            f"crashed at start-up?): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return True, dist.get_backend()


def _pipeline_tp(plan: Plan) -> int:
    tps = {s.tp for s in plan.stages}
    if plan.pp > 1 and len(tps) > 1:
        raise ConfigError("stages", f"stages use different TP degrees {sorted(tps)}; the runtime pairs TP rank t of "
                                    "each stage into pipeline t, so with pp > 1 every stage needs the same tp")
    return plan.stages[0].tp


def _stage_mesh(rt: Runtime):
    """DeviceMesh ``(dp, tp)`` (or 1-D) over this rank's stage, from the groups already made; None when the stage
    has one rank, or when the backend's groups cannot back a DeviceMesh (reason kept in ``rt.extra``)."""
    from torch.distributed.device_mesh import DeviceMesh

    st = rt.stage
    if st.dp == 1 and st.tp == 1:
        return None
    try:
        if st.dp > 1 and st.tp > 1:
            return DeviceMesh.from_group([rt.dp_group, rt.tp_group], rt.device.type,
                                         mesh=torch.tensor(st.ranks).view(st.dp, st.tp), mesh_dim_names=("dp", "tp"))
        g, name = (rt.dp_group, "dp") if st.dp > 1 else (rt.tp_group, "tp")
        return DeviceMesh.from_group(g, rt.device.type, mesh=torch.tensor(st.ranks), mesh_dim_names=(name,))
    except RuntimeError as e:  # e.g. a custom backend whose groups carry no name
        rt.extra["mesh_error"] = f"{type(e).__name__}: {e}"
        return None


def init(plan: Plan, *, cluster=None, timeout_s: float | None = None, device: str | None = None,
         backend: str | None = None) -> Runtime:
    """Join the process group and build this rank's groups and DeviceMesh for ``plan`` (collective).

    ``backend``: "hetero" (the communicator), "gloo", or "auto" (default, ``HETERO_BACKEND``): the communicator
    when it is installed. ``cluster`` (optional) is checked against the plan's device types. ``timeout_s`` bounds start-up and every
    collective (default ``HETERO_TIMEOUT_S`` or 300). ``device`` overrides ``HETERO_DEVICE`` (default cpu)."""
    if not isinstance(plan, Plan):
        raise TypeError(f"hetero.init expects a Plan, got {type(plan).__name__} (use Plan.from_file)")
    timeout_s = float(timeout_s if timeout_s is not None else os.environ.get("HETERO_TIMEOUT_S", 300))
    dev = torch.device(device or os.environ.get("HETERO_DEVICE", "cpu"))
    backend = backend or os.environ.get("HETERO_BACKEND", "auto")
    created, backend = _join(plan, timeout_s, os.environ.get("HETERO_DEVICE_TYPE"), backend)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        plan.validate(world_size=world)
        if cluster is not None:
            if cluster.world_size == world:
                plan.validate(rank_types=cluster.rank_types())
            missing = {t for s in plan.stages for t in s.types} - set(cluster.device_types())
            if missing:
                raise ConfigError("stages", f"device types {sorted(missing)} are not in the cluster "
                                            f"(it has {sorted(cluster.device_types())})")
        tp = _pipeline_tp(plan)
        si, di, ti = plan.rank_map()[rank]
        rt = Runtime(plan=plan, rank=rank, world_size=world, stage_index=si, dp_index=di, tp_index=ti, device=dev,
                     cluster=cluster, owns_process_group=created, backend=backend)
        # Groups: created by every rank in the same order (new_group is collective over the world).
        for s_i, st in enumerate(plan.stages):
            for d in range(st.dp):
                ranks = [st.rank(d, t) for t in range(st.tp)]
                g = dist.new_group(ranks) if st.tp > 1 else None
                if s_i == si and d == di:
                    rt.tp_group = g
            for t in range(st.tp):
                ranks = [st.rank(d, t) for d in range(st.dp)]
                g = dist.new_group(ranks) if st.dp > 1 else None
                if s_i == si and t == ti:
                    rt.dp_group = g
        if plan.pp > 1:
            for d in range(plan.dp):
                for t in range(tp):
                    ranks = [st.rank(d, t) for st in plan.stages]
                    g = dist.new_group(ranks)
                    if d == di and t == ti:
                        rt.pp_group = g
                        rt.extra["pp_ranks"] = ranks
        rt.mesh = _stage_mesh(rt)
        return rt
    except BaseException:
        if created and dist.is_initialized():
            dist.destroy_process_group()
        raise
