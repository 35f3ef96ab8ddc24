"""End-to-end: few-shot SFT on scripted Meta-World demos, then PPO (Flow-SDE), evaluated before/after on fixed
held-out seeds; the test fails unless RL raises the evaluation success or return. Also GRPO / Flow-Noise smoke runs
and resume. Run: python -m pytest -q tests/test_rl_e2e.py  (a few minutes on 2 cores; needs the rl extra)."""

import json

import pytest
import torch

pytest.importorskip("metaworld", reason="metaworld not installed: pip install -e .[rl]")

from hetero.config import build  # noqa: E402
from hetero.rl.config import RLConfig  # noqa: E402
from hetero.rl.sft import run_sft  # noqa: E402
from hetero.rl.trainer import train  # noqa: E402

# ~3 min on an idle 2-core machine; a machine shared by many jobs can take 2-3x that
pytestmark = pytest.mark.timeout(1200)


def _cfg(tmp, **over) -> RLConfig:
    d = {
        "env": {"tasks": "MT1:button-press-topdown-v3", "num_envs": 16, "num_workers": 2, "max_episode_steps": 120,
                "reward": "dense"},
        "policy": {"size": "cpu", "text": "learned", "horizon": 5},
        "sampler": {"method": "flow_sde", "num_steps": 4, "noise_level": 0.5, "chunk": 5},
        "sft": {"demos_per_task": 3, "steps": 300, "batch_size": 64, "lr": 3e-4, "seed": 0,
                "checkpoint": str(tmp / "sft.pt")},
        "algo": {"name": "ppo", "rollout_chunks": 24, "lr": 3e-5, "value_lr": 1e-3, "update_epochs": 2,
                 "minibatch_size": 128, "critic_warmup_iters": 1},
        "train": {"iterations": 10, "init_checkpoint": str(tmp / "sft.pt"), "out_dir": str(tmp / "ppo"),
                  "eval_every": 10, "eval_episodes": 20, "checkpoint_every": 5, "keep_every": 5, "tensorboard": True,
                  "threads": 1},
    }
    for key, val in over.items():
        sec, k = key.split("__")
        d[sec][k] = val
    return build(RLConfig, d)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl_e2e")
    _, summary = run_sft(_cfg(tmp), progress=False)
    assert summary["demos"] == 3 and summary["final_loss"] < 0.2
    return tmp


@pytest.mark.slow
def test_sft_then_ppo_flow_sde_improves_on_held_out_seeds(sft_dir):
    cfg = _cfg(sft_dir)
    out = train(cfg, progress=False)
    before, after = out["first_eval"], out["last_eval"]
    assert before["iteration"] == 0 and after["iteration"] == 10
    assert before["eval_episodes"] == after["eval_episodes"] == 20
    print(json.dumps({"before": before, "after": after}))
    assert 0.2 <= before["eval_success_rate"] <= 0.9, "SFT should leave room for RL"
    improved = (after["eval_success_rate"] > before["eval_success_rate"]
                or after["eval_return"] > before["eval_return"] + 0.02 * abs(before["eval_return"]))
    assert improved, f"RL did not improve: before {before}, after {after}"
    lines = [json.loads(x) for x in (sft_dir / "ppo" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "env_steps_per_s" in x]
    assert [x["iteration"] for x in train_lines] == list(range(1, 11))
    assert all(x["env_steps_per_s"] > 0 and 0 <= x["clip_fraction"] <= 1 for x in train_lines)
    assert any((sft_dir / "ppo" / "tb").iterdir())
    kept = sorted(p.name for p in (sft_dir / "ppo").glob("checkpoint_it*.pt"))
    assert kept == ["checkpoint_it10.pt", "checkpoint_it5.pt"]
    assert torch.load(sft_dir / "ppo" / "checkpoint_it5.pt", map_location="cpu", weights_only=False)["iteration"] == 5
    # resume: one more iteration continues from checkpoint.pt at iteration 10; what a run killed after that
    # checkpoint logged past it (here iterations 11-12 and a torn line) is dropped, so each iteration is there once
    metrics = sft_dir / "ppo" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write(json.dumps({"iteration": 11, "stale": True}) + "\n" + json.dumps({"iteration": 12}) + '\n{"iter')
    logs = []
    train(_cfg(sft_dir, train__iterations=11, train__eval_every=0), progress=False, log=logs.append)
    assert logs[0].startswith("resumed from") and "iteration 10" in logs[0]
    assert logs[1].startswith("dropped 3 metrics records past iteration 10")
    assert any(s.startswith("it=11 ") for s in logs)
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [x["iteration"] for x in lines if "env_steps_per_s" in x] == list(range(1, 12))
    assert not any(x.get("stale") for x in lines) and lines[-1]["iteration"] == 11


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "flow_noise"])
def test_grpo_and_flow_noise_run(sft_dir, algo, capsys):
    over = {"train__iterations": 2, "train__eval_every": 0, "train__out_dir": str(sft_dir / algo),
            "env__num_envs": 8, "env__max_episode_steps": 40}
    if algo == "grpo":
        over.update(algo__name="grpo", algo__group_size=4, env__group_size=4, algo__filter_low=None,
                    algo__filter_high=None)
    else:
        over.update(sampler__method="flow_noise", algo__entropy_bonus=0.005, algo__critic_warmup_iters=0,
                    algo__sil_coef=0.3, algo__sil_episodes=4)  # and self-imitation on
    logs = []
    train(_cfg(sft_dir, **over), progress=False, log=logs.append)
    its = [s for s in logs if s.startswith("it=")]
    assert len(its) == 2
    # the policy was updated (non-zero KL or clip statistics are printed per iteration)
    assert any("kl=0.0000" not in s for s in its), its
    if algo == "flow_noise":  # self-imitation's buffer is logged and checkpointed
        assert all(" sil_loss=" in s and " sil_eps=" in s for s in its), its
        ck = torch.load(sft_dir / algo / "checkpoint.pt", map_location="cpu", weights_only=False)
        assert ck["successes"]["per_task"] == 4
        kept = [json.loads(x)["sil_episodes"] for x in (sft_dir / algo / "metrics.jsonl").read_text().splitlines()]
        assert sum(len(v) for v in ck["successes"]["episodes"].values()) == kept[-1] <= 4
    if algo == "flow_noise":  # `hetero rl eval --method`: deterministic ODE by default, or the stochastic sampler
        from hetero.cli import main

        ck = str(sft_dir / algo / "checkpoint.pt")
        res = {}
        for method in ["ode", "flow_noise"]:
            capsys.readouterr()
            assert main(["rl", "eval", "--checkpoint", ck, "--episodes", "2", "--method", method, "--json",
                         "--no-progress", "--set", "env.max_episode_steps=40"]) == 0
            res[method] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            assert res[method]["method"] == method and res[method]["episodes"] == 2
            assert res[method]["success_ci95"][0] <= res[method]["success_rate"] <= res[method]["success_ci95"][1]
        assert res["ode"]["return"] != res["flow_noise"]["return"]  # the sampler was switched
        assert main(["rl", "eval", "--checkpoint", ck, "--set", "env.nope=1"]) == 2  # --set reaches its config
        assert "env.nope: unknown key" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main(["rl", "eval", "--checkpoint", ck, "--method", "sde"])
