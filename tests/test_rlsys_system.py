"""End-to-end runs of the RL system (hetero-run, 3 CPU ranks, hetero communicator) in each placement mode, against
the single-process trainer on the same seed: python -m pytest -q tests/test_rlsys_system.py

disaggregated (env | rollout | actor on three ranks, k=1) must reproduce the trainer's metrics exactly; collocated
(all roles on all three ranks, actor data-parallel over 3, context switching) and hybrid (env | rollout, actor on
the rollout rank and a third rank, data-parallel over 2) run the same algorithm with the gradient summed across
ranks, so their metrics agree to float rounding. A pipelined run (two env ranks, k=2, world size 4) completes
with the same amount of data. GRPO, disaggregated, reproduces the trainer's GRPO metrics exactly, and a run
stopped and started again resumes from its checkpoint as the trainer does.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys

import pytest
import torch

from hetero.autoparallel.roles import RolePlan
from hetero.rl.scheduler import to_plan
from hetero.rl.system import launch, read_metrics

CONFIG = "examples/rl/system_tiny.yaml"
KEYS = ["success_rate", "return", "episodes", "per_task", "env_steps", "samples", "kl", "clip_fraction", "pg_loss", "v_loss",
        "entropy"]


GRPO = ["algo.name=grpo", "env.group_size=2", "algo.group_size=2", "algo.filter_low=null", "algo.filter_high=null"]
"""GRPO on the tiny config: groups of 2 (reach, button), no reward filter (an untrained policy never succeeds)."""


def _ref_train(ckpt, out, sets=()):
    from hetero.rl.config import load_config
    from hetero.rl.trainer import train

    torch.set_num_threads(1)
    train(load_config(CONFIG, [f"train.init_checkpoint={ckpt}", f"train.out_dir={out}", *sets]), progress=False,
          log=lambda s: None)


def _ref_metrics(ckpt, out, sets=()) -> list[dict]:
    p = mp.get_context("spawn").Process(target=_ref_train, args=(str(ckpt), str(out), list(sets)))
    p.start()
    p.join(180)
    assert p.exitcode == 0, "reference trainer failed"
    ref = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(ref) == 2
    return ref


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("rlsys")
    ckpt = d / "init.pt"
    code = ("import sys, torch\nfrom hetero.rl.config import load_config\nfrom hetero.models.vla import VLAPolicy\n"
            "from hetero.rl.policy import save_checkpoint\ncfg = load_config(sys.argv[1])\ntorch.manual_seed(0)\n"
            "m = VLAPolicy(cfg.policy.vla_config(state_dim=39, action_dim=4, num_cameras=0, image_size=64))\n"
            "save_checkpoint(sys.argv[2], model=m)\n")
    subprocess.run([sys.executable, "-c", code, CONFIG, str(ckpt)], check=True, timeout=120)
    return ckpt, _ref_metrics(ckpt, d / "ref"), d


def _run(reference, name, roles, sets=(), samples=16):
    ckpt, ref, d = reference
    rp = RolePlan.from_dict(roles)
    plan = d / f"{name}.yaml"
    to_plan(rp, samples=samples).to_file(plan)
    out = d / name
    res = launch(["--config", CONFIG, "--plan", str(plan), "--iterations", "2", "--out", str(out), "--set",
                  f"train.init_checkpoint={ckpt}", *sum([["--set", s] for s in sets], [])],
                 world_size=rp.world_size, timeout_s=240, capture=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = read_metrics(str(out))
    assert [r["iteration"] for r in got] == [1, 2] and [r["version"] for r in got] == [1, 2]
    assert (out / "checkpoint.pt").is_file()
    return got, ref, res.stdout


def test_disaggregated_matches_single_process_trainer_exactly(reference):
    got, ref, _ = _run(reference, "dis", {"mode": "disaggregated", "num_envs": 4, "k": 1, "env": {"ranks": [0]},
                                          "rollout": {"ranks": [1]}, "actor": {"ranks": [2]}})
    for g, r in zip(got, ref):
        assert {k: g[k] for k in KEYS} == {k: r[k] for k in KEYS}
    assert got[0]["switch_bytes"] == 0 and got[0]["sync_bytes"] > 0


def test_grpo_disaggregated_matches_single_process_trainer_exactly(reference):
    """GRPO on the RL system: every env restarts from its group's shared state each iteration and runs one episode
    (3 chunk-steps here); group-normalised episode scores as advantages, as in the trainer."""
    ckpt, _, d = reference
    ref = _ref_metrics(ckpt, d / "ref_grpo", GRPO)
    got, _, _ = _run(reference, "grpo", {"mode": "disaggregated", "num_envs": 4, "k": 1, "env": {"ranks": [0]},
                                         "rollout": {"ranks": [1]}, "actor": {"ranks": [2]}}, GRPO, samples=12)
    for g, r in zip(got, ref):
        assert {k: g[k] for k in KEYS} == {k: r[k] for k in KEYS}
    assert got[0]["samples"] == 12 and got[0]["episodes"] == 4 and got[0]["v_loss"] == 0.0 and got[1]["kl"] > 0


def _close(got, ref):
    for g, r in zip(got, ref):
        for k in KEYS:
            if isinstance(r[k], float):
                assert g[k] == pytest.approx(r[k], rel=1e-3, abs=1e-5), k
            else:
                assert g[k] == r[k], k


def test_collocated_three_ranks_with_context_switching_matches_trainer(reference):
    got, ref, out = _run(reference, "col", {"mode": "collocated", "num_envs": 4, "k": 1, "env": {"ranks": [0, 1, 2]},
                                            "rollout": {"ranks": [0, 1, 2]}, "actor": {"ranks": [0, 1, 2]}})
    _close(got, ref)
    n_params = 1157449
    assert got[1]["switch_bytes"] >= 2 * 4 * n_params  # actor (params + grads/moments) and rollout moved both ways
    assert "switch=" in out


def test_hybrid_matches_trainer(reference):
    got, ref, _ = _run(reference, "hyb", {"mode": "hybrid", "num_envs": 4, "k": 1, "env": {"ranks": [0]},
                                         "rollout": {"ranks": [1]}, "actor": {"ranks": [1, 2]}})
    _close(got, ref)
    assert got[1]["switch_bytes"] > 0


def test_pipelined_two_env_ranks_k2_runs_on_four_ranks(reference):
    # micro-batches sample with another noise stream than the trainer's one batch, so only the structure matches
    got, ref, _ = _run(reference, "pipe", {"mode": "disaggregated", "num_envs": 4, "k": 2, "env": {"ranks": [0, 1]},
                                           "rollout": {"ranks": [2]}, "actor": {"ranks": [3]}})
    for g, r in zip(got, ref):
        assert g["samples"] == r["samples"] == 16 and g["env_steps"] > 0 and g["v_loss"] > 0
    assert got[0]["kl"] == 0.0  # critic warm-up iteration, as in the trainer
    assert got[0]["pg_loss"] != ref[0]["pg_loss"]


def test_one_rank_overlapping_two_microbatches_matches_the_disaggregated_pipeline(reference):
    # one rank runs every role with k=2: it samples for one micro-batch while the other simulates; the same
    # rollout stream and env slots as env | rollout | actor on three ranks, so the same metrics exactly
    roles = {"num_envs": 4, "k": 2}
    one, _, _ = _run(reference, "one_k2", {**roles, "mode": "collocated", "env": {"ranks": [0]},
                                           "rollout": {"ranks": [0]}, "actor": {"ranks": [0]}})
    dis, _, _ = _run(reference, "dis_k2", {**roles, "mode": "disaggregated", "env": {"ranks": [0]},
                                           "rollout": {"ranks": [1]}, "actor": {"ranks": [2]}})
    for g, r in zip(one, dis):
        assert {k: g[k] for k in KEYS} == {k: r[k] for k in KEYS}
    # crossed roles: rank 0 simulates micro-batch 0 and samples for 1, rank 1 the other way round; each must send
    # the observations it holds before waiting for actions, or both wait for each other
    crossed, _, _ = _run(reference, "crossed", {**roles, "mode": "collocated", "env": {"ranks": [0, 1]},
                                                "rollout": {"ranks": [1, 0]}, "actor": {"ranks": [0, 1]}})
    assert [r["samples"] for r in crossed] == [16, 16]


def test_resumes_from_its_checkpoint_as_the_trainer_does(reference):
    """Stopped after iteration 1 and started again with the same out dir, the system resumes from its checkpoint
    (weights, optimizer, version, seeds moved on by the iteration) and matches the trainer resumed the same way."""
    ckpt, _, d = reference
    for its in (1, 2):  # the trainer, stopped after 1 and resumed to 2
        p = mp.get_context("spawn").Process(target=_ref_train, args=(str(ckpt), str(d / "ref_resume"),
                                                                     [f"train.iterations={its}"]))
        p.start()
        p.join(180)
        assert p.exitcode == 0, "reference trainer failed"
    ref = [json.loads(x) for x in (d / "ref_resume" / "metrics.jsonl").read_text().splitlines()]
    assert ref[1]["pg_loss"] != reference[1][1]["pg_loss"]  # resuming (env reset, new seeds) is not a rerun
    rp = RolePlan.from_dict({"mode": "disaggregated", "num_envs": 4, "k": 1, "env": {"ranks": [0]},
                             "rollout": {"ranks": [1]}, "actor": {"ranks": [2]}})
    plan, out = d / "resume.yaml", d / "resume"
    to_plan(rp, samples=16).to_file(plan)
    for its in (1, 2):
        res = launch(["--config", CONFIG, "--plan", str(plan), "--iterations", str(its), "--out", str(out),
                      "--set", f"train.init_checkpoint={ckpt}", "--set", "train.keep_every=1"],
                     world_size=3, timeout_s=240, capture=True)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resumed from" in res.stdout and "at iteration 1" in res.stdout
    got = read_metrics(str(out))
    assert [r["iteration"] for r in got] == [1, 2] and [r["version"] for r in got] == [1, 2]
    for g, r in zip(got, ref):
        assert {k: g[k] for k in KEYS} == {k: r[k] for k in KEYS}
    assert torch.load(out / "checkpoint.pt", weights_only=False)["iteration"] == 2
    assert torch.load(out / "checkpoint_it1.pt", weights_only=False)["iteration"] == 1


def test_launcher_rejects_bad_input_before_starting_ranks(tmp_path, capsys):
    from hetero.rl.system import main

    rp = RolePlan.from_dict({"mode": "disaggregated", "num_envs": 4, "k": 1, "env": {"ranks": [0]},
                             "rollout": {"ranks": [1]}, "actor": {"ranks": [2]}})
    plan = tmp_path / "p.yaml"
    to_plan(rp, samples=16).to_file(plan)
    assert main(["--config", CONFIG, "--plan", str(plan), "--set", "env.num_envs=8"]) == 2
    assert "roles.num_envs: is 4 but the RL config's env.num_envs is 8" in capsys.readouterr().err
    assert main(["--config", CONFIG, "--plan", str(plan), "--set", "algo.sil_coef=0.3"]) == 2
    assert "algo.sil_coef: self-imitation runs in the single-process trainer" in capsys.readouterr().err
    assert main(["--config", CONFIG, "--plan", str(tmp_path / "missing.yaml")]) == 2
