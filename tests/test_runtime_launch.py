"""hetero-run: per-rank device assignment, torchrun flag spellings, failure reports, restart from checkpoint,
Slurm/MPI defaults, and the negative cases (plan vs world size, plan vs model, a missing peer at start-up).

    python -m pytest -q tests/test_runtime_launch.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hetero.runtime.testing import WorkerError, spawn

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 120


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


CLUSTER = """
device_types:
  - {id: cpu-fast, like: cpu, scale: 1.0}
  - {id: cpu-slow, like: cpu, scale: 0.5}
nodes:
  - {name: fast, devices: {type: cpu-fast, count: 1}}
  - {name: slow, devices: {type: cpu-slow, count: 1}}
network: {bandwidth_gbps: 10, latency_us: 20}
"""

PLAN = """
model: gpt-tiny
num_layers: 6
global_batch: 8
num_microbatches: 2
seq_len: 16
dtype: fp32
stages:
  - {layers: [0, 4], device_type: cpu-fast, ranks: [0]}
  - {layers: [4, 6], device_type: cpu-slow, ranks: [1]}
"""


def _run(args: list[str], *, timeout: float = LAUNCH_TIMEOUT, env: dict | None = None):
    e = {**os.environ, "HETERO_BACKEND": "gloo", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "hetero.runtime.launch", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=ROOT)


def test_assignment_env_and_flag_spellings(tmp_path):
    cluster = _write(tmp_path / "cluster.yaml", CLUSTER)
    plan = _write(tmp_path / "plan.yaml", PLAN)
    script = _write(tmp_path / "dump.py", """
        import json, os, sys
        keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "HETERO_DEVICE", "HETERO_DEVICE_TYPE", "HETERO_STAGE", "HETERO_DP_INDEX", "HETERO_TP_INDEX",
                "HETERO_PLAN", "HETERO_CLUSTER", "HETERO_NODE", "HETERO_SLOWDOWN"]
        out = os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json")
        json.dump({k: os.environ.get(k) for k in keys} | {"argv": sys.argv[1:]}, open(out, "w"))
    """)
    r = _run(["--plan", str(plan), "--cluster", str(cluster), "--emulate", "--max_restarts", "0",
              "--monitor_interval", "0.1", str(script), str(tmp_path), "--extra"])
    assert r.returncode == 0, r.stderr[-3000:]
    got = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [g["RANK"] for g in got] == ["0", "1"] and {g["WORLD_SIZE"] for g in got} == {"2"}
    assert [g["HETERO_DEVICE_TYPE"] for g in got] == ["cpu-fast", "cpu-slow"]
    assert [g["HETERO_STAGE"] for g in got] == ["0", "1"]
    assert [g["HETERO_DP_INDEX"] for g in got] == ["0", "0"] and [g["HETERO_TP_INDEX"] for g in got] == ["0", "0"]
    assert [g["HETERO_DEVICE"] for g in got] == ["cpu", "cpu"]
    assert [g["HETERO_NODE"] for g in got] == ["fast", "slow"]
    assert [float(g["HETERO_SLOWDOWN"]) for g in got] == [1.0, 2.0]  # --emulate: speed ratio from the cluster
    assert got[0]["HETERO_PLAN"] == str(plan.resolve()) and got[0]["argv"] == [str(tmp_path), "--extra"]


def test_assignment_gpu_numbering():
    """cuda ranks are numbered among this host's cuda ranks; cpu ranks get 'cpu' (no GPU needed)."""
    from hetero.runtime.worker import assignment

    cluster = ROOT / "examples/clusters/gpu_cpu.yaml"
    env = {"RANK": "9", "LOCAL_RANK": "9", "LOCAL_WORLD_SIZE": "12", "HETERO_CLUSTER": str(cluster)}
    a = assignment(env)
    assert a["HETERO_DEVICE"] == "cpu" and a["HETERO_DEVICE_TYPE"] == "cpu" and a["HETERO_NODE"] == "cpu-0"
    a = assignment({**env, "RANK": "5", "LOCAL_RANK": "5"})
    assert a["HETERO_DEVICE"] == "cuda:5" and a["HETERO_NODE"] == "gpu"


def test_failure_report_names_rank_host_code_and_traceback(tmp_path):
    plan = _write(tmp_path / "plan.yaml", PLAN.replace("cpu-fast", "cpu").replace("cpu-slow", "cpu"))
    script = _write(tmp_path / "fail.py", """
        import os, time
        if os.environ["RANK"] == "1":
            raise ValueError("boom from the test")
        time.sleep(0.5)
    """)
    r = _run(["--plan", str(plan), str(script)])
    assert r.returncode == 1, r.stderr[-2000:]
    err = r.stderr
    assert "hetero-run: training failed" in err
    assert "rank 1 (local rank 1" in err and f"on host {socket.gethostname()}" in err and "exit code 1" in err
    assert "stage 1 dp 0 tp 0 (cpu)" in err
    assert "ValueError: boom from the test" in err and "Traceback" in err


def test_restart_resumes_from_checkpoint(tmp_path):
    """A rank dies at step 3; --max-restarts 1 restarts both, they resume from the step-1 checkpoint, and the loss
    sequence equals the uninterrupted run's."""
    plan = _write(tmp_path / "plan.yaml", PLAN.replace("cpu-fast", "cpu").replace("cpu-slow", "cpu"))
    common = ["examples/train_gpt.py", "--steps", "5", "--ckpt-every", "2", "--hidden", "32", "--vocab", "64",
              "--quiet"]
    ok = _run(["--plan", str(plan), *common, "--ckpt", str(tmp_path / "a")])
    assert ok.returncode == 0, ok.stderr[-3000:]
    full = json.loads(ok.stdout.strip().splitlines()[-1])["losses"]
    r = _run(["--plan", str(plan), "--max-restarts", "1", *common, "--ckpt", str(tmp_path / "b"),
              "--kill-at-step", "3"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "injected failure at step 3" in r.stderr
    assert "resumed from" in r.stdout and "step_00000001" in r.stdout
    resumed = json.loads(r.stdout.strip().splitlines()[-1])
    assert resumed["start"] == 2 and sorted(resumed["losses"]) == ["2", "3", "4"]
    for s, v in resumed["losses"].items():
        assert abs(v - full[s]) < 1e-5, (s, v, full[s])


def test_plan_world_size_mismatch_is_refused(tmp_path):
    plan = _write(tmp_path / "plan.yaml", PLAN.replace("cpu-fast", "cpu").replace("cpu-slow", "cpu"))
    r = _run(["--plan", str(plan), "--nproc-per-node", "3", "examples/train_gpt.py"], timeout=30)
    assert r.returncode == 2 and "3 processes on one node, but the plan has 2 ranks" in r.stderr
    cluster = _write(tmp_path / "cluster.yaml", CLUSTER.replace("count: 1}}\n  - {name: slow", "count: 2}}\n  - {name: slow"))
    r = _run(["--plan", str(_write(tmp_path / "p2.yaml", PLAN)), "--cluster", str(cluster), "x.py"], timeout=30)
    assert r.returncode == 2 and "the plan uses 2 ranks but the cluster has 3 devices" in r.stderr


def _init_only(rank, plan_dict, timeout_s):
    import hetero
    from hetero.autoparallel.plan import Plan

    rt = hetero.init(Plan.from_dict(plan_dict), timeout_s=timeout_s, backend=os.environ.get("T_BACKEND", "gloo"))
    rt.shutdown()
    return rt.stage_index


FOUR = dict(model="gpt-tiny", num_layers=6, global_batch=8, stages=[
    dict(layers=[0, 3], device_type="cpu", ranks=[0, 1], dp=2), dict(layers=[3, 6], device_type="cpu", ranks=[2, 3], dp=2)])


def test_plan_for_other_world_size_fails_in_init():
    with pytest.raises(WorkerError, match=r"plan covers ranks 0-3 but the world has 2 ranks"):
        spawn(_init_only, 2, args=(FOUR, 20), timeout_s=60)


@pytest.mark.parametrize("backend", ["gloo", "hetero"])
def test_missing_peer_at_startup_is_a_clear_error(backend):
    two = dict(FOUR, stages=[dict(layers=[0, 6], device_type="cpu", ranks=[0, 1], dp=2)])
    with pytest.raises(WorkerError, match=r"rank 0 failed: .*(peer|arrive|join|timed out|Timeout)"):
        spawn(_init_only, 2, args=(two, 3), timeout_s=40, ranks=[0], env={0: {"T_BACKEND": backend}})


def test_plan_for_other_model_is_refused():
    from hetero.autoparallel.plan import Plan
    from hetero.config import ConfigError
    from hetero.models.gpt import GPT, GPTConfig
    from hetero.runtime.parallelize import check_model

    cfg = GPTConfig(num_layers=4)
    plan8 = Plan.from_dict(dict(model="gpt-big", num_layers=8, global_batch=4,
                                stages=[dict(layers=[0, 8], device_type="cpu", ranks=[0])]))
    with pytest.raises(ConfigError, match="made for 'gpt-big' with 8 layers, but this model has 6 layers"):
        check_model(GPT(cfg), plan8)
    other = GPTConfig(num_layers=4, hidden=128).spec(dtype="fp32").fingerprint()
    plan6 = Plan.from_dict(dict(model="gpt-tiny", num_layers=6, global_batch=4, dtype="fp32", model_hash=other,
                                stages=[dict(layers=[0, 6], device_type="cpu", ranks=[0])]))
    with pytest.raises(ConfigError, match="model_hash: the plan was made for model 'gpt-tiny' .*fingerprint"):
        check_model(GPT(cfg), plan6)
    check_model(GPT(cfg), Plan.from_dict({**plan6.to_dict(), "model_hash": cfg.spec(dtype="fp32").fingerprint()}))


def test_scheduler_defaults():
    from hetero.runtime.launch import _first_host, scheduler_defaults

    assert _first_host("gpu[03-05,07],cpu1") == "gpu03" and _first_host("node7") == "node7"
    s = scheduler_defaults({"SLURM_PROCID": "1", "SLURM_NNODES": "3", "SLURM_NODEID": "1", "SLURM_JOB_ID": "42",
                            "SLURM_JOB_NODELIST": "a100-[0-1],mi250-0"})
    assert s == {"nnodes": "3", "node_rank": 1, "rdzv_id": "42", "master_addr": "a100-0"}
    assert scheduler_defaults({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}) == {"nnodes": "2", "node_rank": 1}
    assert scheduler_defaults({"PMI_SIZE": "4", "PMI_RANK": "3"}) == {"nnodes": "4", "node_rank": 3}
    assert scheduler_defaults({}) == {}


def test_per_node_counts_from_cluster(tmp_path):
    from hetero.cluster.spec import Cluster
    from hetero.config import ConfigError
    from hetero.runtime.launch import build_parser, resolve_counts

    cluster = Cluster.from_yaml(ROOT / "examples/clusters/gpu_cpu.yaml")  # gpu: 8, cpu-0: 2, cpu-1: 2
    p = build_parser()

    def counts(*argv):
        a = p.parse_args([*argv, "x.py"])
        a.nnodes, a.node_rank = a.nnodes or "1", int(a.node_rank or 0)
        return resolve_counts(a, None, cluster)

    assert counts("--nnodes", "3", "--node_rank", "0") == (8, "gpu")
    assert counts("--nnodes", "3", "--node-rank", "2") == (2, "cpu-1")
    assert counts("--node-name", "cpu-0", "--nnodes", "3") == (2, "cpu-0")
    assert counts() == (12, None)  # one node: every rank of the cluster here (emulation)
    with pytest.raises(ConfigError, match="2 launcher nodes but the cluster has 3 nodes"):
        counts("--nnodes", "2")
    with pytest.raises(ConfigError, match="4 processes, but cluster node gpu has 8 devices"):
        counts("--nnodes", "3", "--nproc_per_node", "4")


def test_type_calibration_is_measured_over_predicted_per_type():
    """hooks.type_calibration: each rank's measured busy time over its replica's predicted one, averaged per type."""
    from hetero.autoparallel.plan import Plan
    from hetero.cluster.spec import Cluster
    from hetero.models.gpt import GPTConfig
    from hetero.predictor import predict_detailed
    from hetero.runtime.hooks import type_calibration

    cluster = Cluster.from_dict({"name": "c", "device_types": [{"id": "fast", "like": "cpu"},
                                                               {"id": "half", "like": "cpu", "scale": 0.5}],
                                 "nodes": [{"name": "a", "devices": {"type": "fast", "count": 1}},
                                           {"name": "b", "devices": {"type": "half", "count": 1}}],
                                 "network": {"bandwidth_gbps": 10}})
    spec = GPTConfig(vocab=64, hidden=32, heads=4, num_layers=2, seq_len=16).spec(dtype="fp32")
    plan = Plan.from_dict({"model": spec.name, "num_layers": 4, "global_batch": 12, "num_microbatches": 1,
                           "seq_len": 16, "dtype": "fp32",
                           "stages": [{"layers": [0, 4], "device_type": "fast", "ranks": [0, 1], "dp": 2,
                                       "batch_shares": [8, 4], "replica_types": ["fast", "half"]}]})
    pred = [s.busy[0] for s in predict_detailed(cluster, spec, plan).simulations]
    got = type_calibration(cluster, spec, plan, [pred[0] * 0.9, pred[1] * 1.3])
    assert got == pytest.approx({"fast": 0.9, "half": 1.3})
    assert type_calibration(cluster, spec, plan, [pred[0]]) == pytest.approx({"fast": 1.0})  # a rank not measured
