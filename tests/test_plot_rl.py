"""tools/plot_rl.py draws the curves and prints the per-window tables: python -m pytest -q tests/test_plot_rl.py"""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
_spec = importlib.util.spec_from_file_location("plot_rl", Path(__file__).parents[1] / "tools" / "plot_rl.py")
plot_rl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_rl)


def test_window_means_weight_episodes_and_average_tasks(tmp_path, capsys):
    recs = [{"iteration": 0, "eval_success_rate": 0.5, "eval_return": 1.0, "eval_per_task": {"b": 0.25, "a": 0.75}},
            {"iteration": 1, "success_rate": 1.0, "episodes": 3, "per_task": {"a": 1.0, "b": 1.0}},
            {"iteration": 2, "success_rate": 0.0, "episodes": 1, "per_task": {"a": 0.0}},
            {"iteration": 3, "success_rate": 0.5, "episodes": 2, "per_task": {"a": 0.5, "b": None}}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    wins = plot_rl.window_means(recs[1:], 2)
    assert [w["iterations"] for w in wins] == [(1, 2), (3, 3)]
    assert wins[0]["success"] == pytest.approx(0.75) and wins[0]["per_task"] == {"a": 0.5, "b": 1.0}
    assert wins[1]["per_task"] == {"a": 0.5}
    png = tmp_path / "c.png"
    assert plot_rl.main([str(tmp_path), "--window", "2", "-o", str(png), "--label", "run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert png.stat().st_size > 0
    assert "  it     0  0.500 | 0.75 0.25" in out and "  it     1-2     0.750 | 0.50 1.00" in out
    assert json.loads(out[-1])["runs"]["run"] == {"first_eval": 0.5, "last_eval": 0.5, "last_iteration": 3}
    with pytest.raises(SystemExit):
        plot_rl.main([str(tmp_path), "--window", "-1"])
