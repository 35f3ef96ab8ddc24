"""tools/bench_comm.py's summary (no processes): python -m pytest -q tests/test_bench_comm_summary.py"""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_comm", Path(__file__).parents[1] / "tools" / "bench_comm.py")
bench_comm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_comm)


def _row(impl: str, mb, time_ms: float, vs_gloo: float) -> dict:
    return {"part": "local", "impl": impl, "op": "all_reduce", "world": 2, "mb": mb, "time_ms": time_ms,
            "vs_gloo": vs_gloo}


def test_sub_megabyte_cells_give_the_per_call_cost_and_stay_out_of_the_1_to_64_mb_ratios():
    rows = [_row("gloo", 0.001, 0.200, 1.0), _row("hetero", 0.001, 0.230, 0.87), _row("gloo-control", 0.001, 0.210, 0.95),
            _row("gloo", 1, 1.000, 1.0), _row("hetero", 1, 1.020, 0.98), _row("gloo-control", 1, 0.990, 1.01)]
    s = bench_comm.summarize(rows)
    assert s["hetero_vs_native_min"] == pytest.approx(0.98)  # the 1 MB cell only
    assert s["hetero_vs_native_under_1mb_geomean"] == pytest.approx(0.87)
    assert s["hetero_extra_us_under_1mb_median"] == pytest.approx(30.0)
    assert s["control_extra_us_under_1mb_median"] == pytest.approx(10.0)
    assert bench_comm._sizes("0.001,1,4") == [0.001, 1, 4] and isinstance(bench_comm._sizes("1")[0], int)
    assert bench_comm._iters(0.001) == 512 and bench_comm._iters(1) == 64 and bench_comm._iters(64) == 4


def test_bad_sizes_are_refused():
    with pytest.raises(SystemExit):
        bench_comm.main(["--sizes-mb", "0,1"])
    with pytest.raises(SystemExit):
        bench_comm.main(["--netns-sizes-mb", "0.5"])
