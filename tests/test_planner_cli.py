"""Smoke tests of ``hetero-plan``: tables, JSON, --top/--explain, -o, --gantt, --check, and clear errors.

    python -m pytest -q tests/test_planner_cli.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hetero.autoparallel.cli import main
from hetero.autoparallel.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = str(ROOT / "examples/clusters/a100_v100.yaml")


def test_table_top_explain_output_and_gantt(tmp_path, capsys):
    out, png = tmp_path / "plan.yaml", tmp_path / "g.png"
    rc = main(["--cluster", CLUSTER, "--model", "gpt2-medium", "--global-batch", "64", "--top", "3", "--explain",
               "-o", str(out), "--gantt", str(png), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0
    for needle in ("best plan", "tokens/s", "bubble", "heterogeneous efficiency", "3 best plans",
                   "Why not the runner-up", "slower"):
        assert needle in text, needle
    plan = Plan.from_file(out)
    assert plan.predicted is not None and plan.predicted.efficiency is not None
    assert png.stat().st_size > 10_000


def test_json_and_check(tmp_path, capsys):
    rc = main(["--cluster", CLUSTER, "--model", str(ROOT / "examples/models/gpt2-xl.yaml"), "--global-batch", "32",
               "--json", "--no-efficiency", "-o", str(tmp_path / "p.json")])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert data["summary"]["step_time_s"] > 0 and data["stages"][0]["layers"][0] == 0
    assert data["plan"]["stages"][-1]["layers"][1] == 50
    rc = main(["--cluster", CLUSTER, "--model", "gpt2-xl", "--check", str(tmp_path / "p.json")])
    assert rc == 0 and "valid" in capsys.readouterr().out


def test_bad_input_clear_errors(tmp_path, capsys):
    assert main(["--cluster", CLUSTER, "--model", "llama-140b", "--global-batch", "64"]) == 2
    assert "model too big for the cluster" in capsys.readouterr().err
    assert main(["--cluster", CLUSTER, "--model", "gpt2-small", "--global-batch", "7",
                 "--micro-batch-sizes", "2"]) == 2
    assert "no candidate structure" in capsys.readouterr().err
    assert main(["--cluster", CLUSTER, "--model", "no-such-model", "--global-batch", "8"]) == 2
    assert "unknown model preset" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodel: x\nnum_layers: 14\nglobal_batch: 8\nstages:\n"
                   "  - {layers: [0, 7], device_type: nvidia_a100_sxm4_80gb, ranks: [0]}\n"
                   "  - {layers: [8, 14], device_type: nvidia_v100_sxm2_32gb, ranks: [1]}\n")
    assert main(["--cluster", CLUSTER, "--model", "gpt2-small", "--check", str(bad)]) == 2
    assert "stages[1].layers: starts at layer 8" in capsys.readouterr().err


def test_console_script_and_subcommand():
    exe = shutil.which("hetero-plan")
    cmd = [exe] if exe else [sys.executable, "-m", "hetero.autoparallel.cli"]
    r = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--global-batch" in r.stdout
    from hetero.cli import SUBCOMMANDS

    if "plan" not in SUBCOMMANDS:
        pytest.skip("`hetero plan` not wired in hetero/cli.py yet")
    r = subprocess.run([sys.executable, "-m", "hetero.cli", "plan", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--gantt" in r.stdout


def test_calibration_from_a_run_replans_for_the_devices_as_they_ran(tmp_path, capsys):
    """--calibration: a run's type_calibration (measured / predicted compute per type) slows that type for the
    planner; the predicted step grows and the slow type's work shrinks. Bad files and unknown types are errors."""
    cluster = str(ROOT / "examples/clusters/cpu_mix.yaml")
    args = ["--cluster", cluster, "--model", str(ROOT / "examples/models/gpt_tiny.yaml"), "--global-batch", "24",
            "--dtype", "fp32", "--json", "--no-efficiency", "--quiet"]

    def slow_share(data):
        stages = data["plan"]["stages"]
        if len(stages) == 1:  # DP across types: the slow replica's batch share
            st = stages[0]
            return st["batch_shares"][st["replica_types"].index("cpu-slow")] / sum(st["batch_shares"])
        return sum(s["layers"][1] - s["layers"][0] for s in stages if s["device_type"] == "cpu-slow") / \
            sum(s["layers"][1] - s["layers"][0] for s in stages)

    assert main(args) == 0
    base = json.loads(capsys.readouterr().out)
    run_json = tmp_path / "run.json"
    run_json.write_text("step 1 | ...\n" + json.dumps({"steps": 3, "type_calibration": {"cpu-slow": 3.0}}) + "\n")
    assert main(args + ["--calibration", str(run_json)]) == 0
    cal = json.loads(capsys.readouterr().out)
    assert cal["summary"]["step_time_s"] > base["summary"]["step_time_s"]
    assert slow_share(cal) < slow_share(base)
    (tmp_path / "bad.json").write_text(json.dumps({"gpu-x": 2.0}))
    assert main(args + ["--calibration", str(tmp_path / "bad.json")]) == 2
    assert "no device type 'gpu-x'" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("not json")
    assert main(args + ["--calibration", str(tmp_path / "junk.json")]) == 2
    assert "not a JSON object" in capsys.readouterr().err
