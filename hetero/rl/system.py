"""The RL system: env / rollout / actor roles as ranks of one ``hetero-run`` job, placed by a Plan's ``roles``.

    # place the roles (writes a Plan with roles), then run them; world size = ranks used by the roles
    hetero-plan --rl examples/rl/system_cpu3.yaml -o runs/rl_plan.yaml
    python -m hetero.rl.system --config examples/rl/metaworld_mt10_flow_sde.yaml --plan runs/rl_plan.yaml \
        --iterations 10 --out runs/rl_system [--set algo.rollout_chunks=8]

Without RANK in the environment this starts ``hetero-run --standalone --nproc-per-node W -m hetero.rl.system``
with the same arguments (W from the plan); each worker initialises the ``hetero`` communicator (``--backend gloo``
for plain gloo), builds its role loops (:class:`hetero.rl.workers.RankRunner`) and runs them. The first actor rank
prints one metrics line per iteration and writes ``OUT/metrics.jsonl`` and ``OUT/checkpoint.pt`` (every
``train.checkpoint_every`` iterations, with ``checkpoint_it<N>.pt`` copies every ``train.keep_every``); started
again with the same OUT, every rank resumes from that checkpoint.

Tests: ``python -m pytest -q tests/test_rlsys_system.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from hetero.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hetero.rl.system", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="RL run YAML (examples/rl/*.yaml)")
    p.add_argument("--plan", required=True, help="Plan with roles (hetero-plan --rl ... -o PLAN)")
    p.add_argument("--iterations", type=int, default=None, help="RL iterations (default: train.iterations)")
    p.add_argument("--out", default=None, help="metrics.jsonl and checkpoint.pt go here (default: train.out_dir); a checkpoint there is resumed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--backend", choices=["hetero", "gloo"], default="hetero", help="process group backend")
    p.add_argument("--capacity", type=int, default=4, help="channel capacity (messages in flight per channel)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole launch (launcher only)")
    return p


def load(args) -> tuple:
    """(RLConfig, RolePlan) from the arguments; ConfigError on bad input."""
    from hetero.autoparallel.plan import Plan
    from hetero.rl.config import load_config

    sets = list(args.set)
    if args.iterations is not None:
        sets.append(f"train.iterations={args.iterations}")
    if args.out is not None:
        sets.append(f"train.out_dir={args.out}")
    cfg = load_config(args.config, sets)
    if cfg.algo.sil_coef:
        raise ConfigError("algo.sil_coef", "self-imitation runs in the single-process trainer (hetero rl train) "
                          "only; set it to 0 for the RL system")
    plan = Plan.from_file(args.plan)
    if plan.roles is None:
        raise ConfigError(f"{args.plan}: roles", "the plan has no roles (make one with hetero-plan --rl)")
    if cfg.env.num_envs != plan.roles.num_envs:
        raise ConfigError(f"{args.plan}: roles.num_envs", f"is {plan.roles.num_envs} but the RL config's "
                          f"env.num_envs is {cfg.env.num_envs}")
    return cfg, plan.roles


def worker(args) -> int:
    """One rank: init the process group, run the role loops, shut down cleanly."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    cfg, roles = load(args)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    roles.validate(world_size=world)
    dev = roles.device_of(rank)
    dtype = roles.env.type_of(rank) if rank in roles.env.ranks else (
        roles.rollout.type_of(rank) if rank in roles.rollout.ranks else roles.actor.type_of(rank))
    timeout = timedelta(seconds=300)
    if args.backend == "hetero":
        import hetero.communicator as hc

        hc.init_process_group(timeout=timeout, device_type=dtype, device=dev)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    from hetero.rl.workers import RankRunner

    runner = RankRunner(rank=rank, roles=roles, cfg=cfg, capacity=args.capacity,
                        log=lambda s: print(s, flush=True))
    if rank == 0:
        print(f"RL system: {roles.describe()} world={world} backend={args.backend}", flush=True)
    runner.run()
    runner.close()
    dist.barrier()
    dist.destroy_process_group()
    return 0


def launch(argv: list[str], *, world_size: int, timeout_s: float = 600.0, capture: bool = False,
           env: dict[str, str] | None = None):
    """Start ``hetero-run --standalone --nproc-per-node world_size -m hetero.rl.system argv`` and wait (bounded);
    returns the CompletedProcess. ``env``: extra environment variables of the job (for example
    ``HETERO_SLOWDOWN_BY_RANK`` in benchmarks). Raises TimeoutError when it runs past ``timeout_s`` (the job is
    killed)."""
    cmd = [sys.executable, "-m", "hetero.runtime.launch", "--standalone", "--nproc-per-node", str(world_size),
           "-m", "hetero.rl.system", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    out = subprocess.PIPE if capture else None
    proc = subprocess.Popen(cmd, env=env, text=True, stdout=out, stderr=out, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher, its workers and their env processes
        proc.communicate()
        raise TimeoutError(f"RL system launch ran past {timeout_s:g} s: {' '.join(cmd)}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def read_metrics(out_dir: str) -> list[dict]:
    """The per-iteration records the first actor rank wrote."""
    p = Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def main(argv: list[str] | None = None) -> int:
    """Launcher without RANK in the environment, worker with it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            return worker(args)
        _, roles = load(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return launch(argv, world_size=roles.world_size, timeout_s=args.timeout).returncode
    except TimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 124


if __name__ == "__main__":
    sys.exit(main())
