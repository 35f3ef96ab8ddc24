"""The process ``hetero-run`` starts for each rank: add the rank's device assignment to its environment, then run
the user's script (or module) as ``__main__``, recording any failure for the launcher's report.

From torchrun's RANK / LOCAL_RANK / LOCAL_WORLD_SIZE and the plan (HETERO_PLAN) and cluster (HETERO_CLUSTER) it
sets: HETERO_DEVICE_TYPE, HETERO_DEVICE (``cuda:<i>`` numbering only this host's ranks of that device kind,
``cpu``), HETERO_STAGE, HETERO_DP_INDEX, HETERO_TP_INDEX, HETERO_NODE, and with HETERO_EMULATE=1 on CPU ranks
HETERO_SLOWDOWN (the rank type's speed relative to the cluster's fastest type; tests and benchmarks only;
HETERO_SLOWDOWN_BY_RANK="1,2" gives it per rank instead, and pins too), HETERO_EMULATE_PHASE and
HETERO_EMULATE_CPUS (the cores the rank is pinned to, so that emulated ranks' duty cycles fit this host's cores;
set it to override).

    python -m hetero.runtime.worker [-m] script.py args...      # normally started by hetero-run, not by hand
"""

from __future__ import annotations

import os
import runpy
import sys

from hetero.config import ConfigError


def _type_device(type_id: str, cluster) -> str:
    """torch device kind (cuda, cpu, ...) of a device type id."""
    if cluster is not None and type_id in cluster.device_types():
        return cluster.device_types()[type_id].torch_device
    try:
        from hetero.cluster.catalog import resolve

        return resolve(type_id, "device_type").torch_device
    except (ConfigError, KeyError, ImportError):
        return "cpu"


def assignment(env: dict[str, str]) -> dict[str, str]:
    """The HETERO_* variables of the rank described by ``env`` (torchrun variables + HETERO_PLAN/CLUSTER)."""
    rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", 0))
    plan = cluster = None
    if env.get("HETERO_CLUSTER"):
        from hetero.cluster.spec import Cluster

        cluster = Cluster.from_yaml(env["HETERO_CLUSTER"])
    out: dict[str, str] = {}
    rank_type: dict[int, str] = {}
    if env.get("HETERO_PLAN"):
        from hetero.autoparallel.plan import Plan

        plan = Plan.from_file(env["HETERO_PLAN"])
        rmap = plan.rank_map()
        if rank not in rmap:
            raise ConfigError("stages", f"rank {rank} is in no stage of the plan {env['HETERO_PLAN']} "
                                        f"(the plan covers {plan.world_size} ranks)")
        s, d, t = rmap[rank]
        out.update(HETERO_STAGE=str(s), HETERO_DP_INDEX=str(d), HETERO_TP_INDEX=str(t))
        rank_type = {r: plan.stages[si].type_of(di) for r, (si, di, _) in rmap.items()}
    if cluster is not None:
        types = cluster.rank_types()
        if rank >= len(types):
            raise ConfigError("nodes", f"rank {rank} is outside the cluster ({len(types)} devices)")
        rank_type = dict(enumerate(types))
        out["HETERO_NODE"] = cluster.devices()[rank][1].name
    first, n_local = rank - local_rank, int(env.get("LOCAL_WORLD_SIZE", "1"))
    local: list[float] | None = None  # slowdown of each of this host's ranks, when emulating (pins them)
    by_rank = env.get("HETERO_SLOWDOWN_BY_RANK")  # emulation knob for tests/benchmarks: "1,2,3" = rank 0, 1, 2
    if by_rank and "HETERO_SLOWDOWN" not in env:
        try:
            vals = [float(v) for v in by_rank.split(",")]
        except ValueError:
            raise ConfigError("HETERO_SLOWDOWN_BY_RANK", f"must be comma-separated numbers, got {by_rank!r}") from None
        if rank >= len(vals):
            raise ConfigError("HETERO_SLOWDOWN_BY_RANK", f"has {len(vals)} entries but this is rank {rank}")
        out["HETERO_SLOWDOWN"] = f"{vals[rank]:g}"
        local = [vals[r] if r < len(vals) else 1.0 for r in range(first, first + n_local)]
    if rank in rank_type:
        my_type = rank_type[rank]
        kind = _type_device(my_type, cluster)
        out["HETERO_DEVICE_TYPE"] = my_type
        if kind == "cpu":
            out["HETERO_DEVICE"] = "cpu"
        else:  # index among this host's ranks of the same device kind (local ranks are contiguous)
            idx = sum(1 for r in range(first, rank) if _type_device(rank_type.get(r, ""), cluster) == kind)
            out["HETERO_DEVICE"] = f"{kind}:{idx}"
        if env.get("HETERO_EMULATE") == "1" and kind == "cpu" and cluster is not None and "HETERO_SLOWDOWN" not in env:
            from hetero.runtime.emulate import Emulator  # tests/benchmarks only

            out["HETERO_SLOWDOWN"] = f"{Emulator.from_cluster(cluster, rank).slowdown:.6g}"
            local = [Emulator.from_cluster(cluster, r).slowdown if _type_device(rank_type.get(r, ""), cluster)
                     == "cpu" else 1.0 for r in range(first, first + n_local)]
    if local is not None:
        from hetero.runtime.emulate import Emulator  # tests/benchmarks only

        # this host's ranks pinned so that their duty cycles fit the cores (a device shares no cores), the ranks
        # sharing a core spreading their compute over the padded window (phases); without pinning, emulated
        # ranks alternate computing first / last in their window
        layout = Emulator.pack_cores(local, sorted(os.sched_getaffinity(0))) \
            if hasattr(os, "sched_getaffinity") and "HETERO_EMULATE_CPUS" not in env else None
        if layout is not None:
            out["HETERO_EMULATE_CPUS"] = ",".join(map(str, layout[local_rank][0]))
        if "HETERO_EMULATE_PHASE" not in env:
            phase = layout[local_rank][1] if layout is not None else \
                Emulator.alternating_phase(local[: local_rank + 1], local_rank)
            out["HETERO_EMULATE_PHASE"] = f"{phase:g}"
    return out


def pin_emulated_cpus(env: dict[str, str]) -> None:
    """Pin this process to ``HETERO_EMULATE_CPUS`` (comma-separated core ids; emulation only) when set."""
    raw = env.get("HETERO_EMULATE_CPUS", "").strip()
    if raw and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(c) for c in raw.split(",")})
        except (ValueError, OSError) as e:
            raise ConfigError("HETERO_EMULATE_CPUS", f"cannot pin to {raw!r}: {e}") from None


def main(argv: list[str] | None = None) -> None:
    """Set the rank's assignment, then run ``argv`` (``[-m] target args...``) as ``__main__``."""
    from torch.distributed.elastic.multiprocessing.errors import record

    argv = list(sys.argv[1:] if argv is None else argv)
    module = bool(argv) and argv[0] == "-m"
    if module:
        argv = argv[1:]
    if not argv:
        raise SystemExit("usage: python -m hetero.runtime.worker [-m] script.py args...")

    @record
    def _run():
        os.environ.update(assignment(dict(os.environ)))
        pin_emulated_cpus(dict(os.environ))
        sys.argv = list(argv)
        if module:
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
            runpy.run_path(argv[0], run_name="__main__")

    _run()


if __name__ == "__main__":
    main()
