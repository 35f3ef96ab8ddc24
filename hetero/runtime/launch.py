"""``hetero-run``: torchrun for mixed clusters, on torch's elastic agent.

It takes every torchrun flag (same parser: ``--nnodes``, ``--nproc-per-node``, ``--node-rank``, ``--rdzv-backend``,
``--rdzv-endpoint``, ``--rdzv-id``, ``--standalone``, ``--max-restarts``, ``--master-addr``, ``--master-port``, ...,
dash or underscore spelling) plus:

  --plan plan.yaml        the Plan; every worker gets its stage / dp / tp index and device from it
  --cluster cluster.yaml  the Cluster; gives each node its own process count and device type
  --node-name NAME        which cluster node this launcher runs (default: the node at --node-rank)
  --emulate               CPU ranks of slower types pad their compute and are pinned to cores so that their duty
                          cycles fit (tests and benchmarks only)

Unlike torchrun the process count may differ per node: without ``--nproc-per-node`` it is the cluster node's
device count (or, on a single node, the whole plan/cluster: emulated mixed devices on one machine). Each worker
gets torchrun's variables plus HETERO_DEVICE, HETERO_DEVICE_TYPE, HETERO_STAGE, HETERO_DP_INDEX, HETERO_TP_INDEX,
HETERO_PLAN, HETERO_CLUSTER (see ``hetero.runtime.worker``). Started by ``srun`` or ``mpirun`` (one launcher per
node) it takes --nnodes / --node-rank / --rdzv-id defaults from SLURM_* or OMPI_COMM_WORLD_* / PMI_* variables.
A failed worker is reported with rank, host, exit code and traceback; ``--max-restarts N`` restarts the workers
(a script resumes from its last checkpoint).

    hetero-run --plan plan.yaml --cluster examples/clusters/cpu_mix.yaml examples/train_gpt.py --steps 20
"""

from __future__ import annotations

import os
import re
import socket
import sys
import uuid
from pathlib import Path

from hetero.config import ConfigError


def build_parser():
    """torchrun's argument parser with hetero's options added."""
    from torch.distributed.run import get_args_parser

    p = get_args_parser()
    p.prog = "hetero-run"
    p.description = (__doc__ or "").split("\n")[0]
    p.add_argument("--plan", default=None, help="plan file (YAML/JSON) the workers execute")
    p.add_argument("--cluster", default=None, help="cluster file: per-node process counts and device types")
    p.add_argument("--node-name", "--node_name", dest="node_name", default=None,
                   help="cluster node this launcher runs (default: node at --node-rank)")
    p.add_argument("--emulate", action="store_true",
                   help="pad compute of CPU ranks of slower device types and pin ranks to cores by duty cycle "
                        "(tests/benchmarks only)")
    p.set_defaults(nproc_per_node=None, nnodes=None, node_rank=None, rdzv_id=None)
    return p


def _first_host(nodelist: str) -> str:
    """First host of a Slurm node list: ``gpu[03-05,07],cpu1`` -> ``gpu03``."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def scheduler_defaults(env: dict[str, str]) -> dict[str, object]:
    """nnodes / node_rank / rdzv_id / master_addr from a Slurm (srun) or MPI (mpirun) launch of one hetero-run
    per node; empty when neither is present."""
    if "SLURM_PROCID" in env and "SLURM_NNODES" in env:
        out: dict[str, object] = {"nnodes": env["SLURM_NNODES"], "node_rank": int(env.get("SLURM_NODEID", env["SLURM_PROCID"])),
                                  "rdzv_id": env.get("SLURM_JOB_ID", "none")}
        if env.get("SLURM_JOB_NODELIST"):
            out["master_addr"] = _first_host(env["SLURM_JOB_NODELIST"])
        return out
    for size, rank in (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"), ("PMI_SIZE", "PMI_RANK"),
                       ("PMIX_SIZE", "PMIX_RANK")):
        if size in env and rank in env:
            return {"nnodes": env[size], "node_rank": int(env[rank])}
    return {}


def _nnodes_max(nnodes: str) -> int:
    return int(str(nnodes).split(":")[-1])


def resolve_counts(args, plan, cluster) -> tuple[int, str | None]:
    """(processes on this node, cluster node name or None); raises ConfigError when plan, cluster and flags
    disagree."""
    nnodes = _nnodes_max(args.nnodes)
    node = None
    if cluster is not None:
        if plan is not None and plan.world_size != cluster.world_size:
            raise ConfigError("plan", f"the plan uses {plan.world_size} ranks but the cluster has "
                                      f"{cluster.world_size} devices")
        if args.node_name:
            names = [n.name for n in cluster.nodes]
            if args.node_name not in names:
                raise ConfigError("--node-name", f"no node {args.node_name!r} in the cluster (nodes: {', '.join(names)})")
            node = cluster.node(args.node_name)
        elif nnodes > 1:
            if nnodes != len(cluster.nodes):
                raise ConfigError("--nnodes", f"{nnodes} launcher nodes but the cluster has {len(cluster.nodes)} nodes "
                                              "(one hetero-run per cluster node, or --nnodes 1 to run all ranks here)")
            node = cluster.nodes[args.node_rank]
    if args.nproc_per_node is not None:
        n = int(args.nproc_per_node) if str(args.nproc_per_node).isdigit() else None
        if n is None:
            from torch.distributed.run import determine_local_world_size

            n = determine_local_world_size(args.nproc_per_node)
        if nnodes == 1:
            total = cluster.world_size if cluster is not None else (plan.world_size if plan is not None else n)
            if n != total:
                raise ConfigError("--nproc-per-node", f"{n} processes on one node, but the "
                                  f"{'cluster' if cluster is not None else 'plan'} has {total} ranks")
        elif node is not None and n != node.count:
            raise ConfigError("--nproc-per-node", f"{n} processes, but cluster node {node.name} has {node.count} devices")
        return n, node.name if node else None
    if node is not None:
        return node.count, node.name
    if cluster is not None:
        return cluster.world_size, None
    if plan is not None:
        if nnodes > 1:
            raise ConfigError("--cluster", "with several nodes and no --nproc-per-node, give --cluster so each node "
                                           "knows its process count")
        return plan.world_size, None
    return 1, None


def _failure_report(err, *, host: str, plan) -> str:
    """Text naming each failed rank: host, exit code, plan position and the traceback its error file holds."""
    rmap = plan.rank_map() if plan is not None else {}
    lines = ["hetero-run: training failed"]
    for rank, f in sorted(err.failures.items()):
        where = ""
        if rank in rmap:
            s, d, t = rmap[rank]
            where = f", stage {s} dp {d} tp {t} ({plan.stages[s].device_type})"
        sig = f" ({f.signal_name()})" if f.exitcode is not None and f.exitcode < 0 else ""
        lines.append(f"  rank {rank} (local rank {f.local_rank}, pid {f.pid}) on host {host}: exit code "
                     f"{f.exitcode}{sig}{where}")
        msg = f.message if isinstance(f.message, str) else (f.message or {}).get("message", "")
        if isinstance(f.message, dict):
            extra = f.message.get("extraInfo", {}) or {}
            msg = extra.get("py_callstack") or msg
        if msg and msg != "<N/A>":
            lines.extend("    " + ln for ln in str(msg).rstrip().splitlines())
        else:
            lines.append("    (no traceback recorded: the process died without raising, see its stderr above)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hetero-run``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    for k, v in scheduler_defaults(dict(os.environ)).items():
        if getattr(args, k, None) in (None, "127.0.0.1") and not (k == "master_addr" and "--master-addr" in argv):
            setattr(args, k, v)
    args.nnodes = args.nnodes or "1"
    args.node_rank = int(args.node_rank or 0)
    args.rdzv_id = args.rdzv_id or "none"
    plan = cluster = None
    try:
        if args.plan:
            from hetero.autoparallel.plan import Plan

            plan = Plan.from_file(args.plan)
        if args.cluster:
            from hetero.cluster.spec import Cluster

            cluster = Cluster.from_yaml(args.cluster)
        nproc, node_name = resolve_counts(args, plan, cluster)
        if plan is not None and cluster is not None:
            plan.validate(rank_types=cluster.rank_types())
    except ConfigError as e:
        print(f"hetero-run: error: {e}", file=sys.stderr)
        return 2
    args.nproc_per_node = str(nproc)
    if args.standalone:
        args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    elif args.rdzv_backend == "static" and not args.rdzv_endpoint and args.master_port is None \
            and _nnodes_max(args.nnodes) == 1:
        args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    if args.master_port is None:
        args.master_port = 29500
    env = os.environ
    if plan is not None:
        env["HETERO_PLAN"] = str(Path(args.plan).resolve())
    if cluster is not None:
        env["HETERO_CLUSTER"] = str(Path(args.cluster).resolve())
    if node_name:
        env["HETERO_NODE"] = node_name
    if args.emulate:
        env["HETERO_EMULATE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args

    config, _, _ = config_from_args(args)
    worker = ["-u", "-m", "hetero.runtime.worker", *(["-m"] if args.module else []), args.training_script,
              *args.training_script_args]
    try:
        elastic_launch(config=config, entrypoint=sys.executable)(*worker)
    except ChildFailedError as e:
        print(_failure_report(e, host=socket.gethostname(), plan=plan), file=sys.stderr)
        codes = [f.exitcode for f in e.failures.values() if f.exitcode and f.exitcode > 0]
        return codes[0] if codes else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
