"""Calibration quality: how well a profile's regressors predict measurements they were not fitted on.

For a ``DeviceProfile`` (``hetero profile -o profile.json``): GEMM efficiency with every second GEMM shape held
out, against the best single efficiency; transformer-block and LM-head times leave-one-out, against the
analytic roofline with calibrated GEMMs only and against the catalog prior without any profile.

    python tools/bench_calibration.py profile.json        # last line JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from hetero.cluster.catalog import resolve
    from hetero.models.spec import ModelSpec
    from hetero.predictor.calibrate import GemmEfficiency, LayerEfficiency, mape
    from hetero.predictor.compute import layer_times
    from hetero.predictor.profile import DeviceProfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile", help="profile JSON")
    args = ap.parse_args(argv)
    p = DeviceProfile.from_json(args.profile)
    out: dict = {}
    for dt in sorted({r.dtype for r in p.gemms}):
        rs = [r for r in p.gemms if r.dtype == dt]
        tr, te = rs[0::2], rs[1::2]
        eff = GemmEfficiency.fit(tr, p.peak_flops).efficiency(dt, [r.m for r in te], [r.n for r in te], [r.k for r in te])
        pred = [2 * r.m * r.n * r.k / (e * p.peak_flops[dt]) for r, e in zip(te, eff)]
        const = float(np.median([2 * r.m * r.n * r.k / r.seconds / p.peak_flops[dt] for r in tr]))
        prior = [2 * r.m * r.n * r.k / (const * p.peak_flops[dt]) for r in te]
        truth = [r.seconds for r in te]
        out[f"gemm_{dt}"] = {"held_out": len(te), "regressor_mape": round(mape(pred, truth), 2),
                             "best_constant_mape": round(mape(prior, truth), 2)}
        print(f"GEMM {dt}: {len(te)} held-out shapes: regressor {mape(pred, truth):.1f}% vs best constant "
              f"efficiency {const:.2f}: {mape(prior, truth):.1f}%")
    no_layers = dataclasses.replace(p, layers=[])
    cpu_prior = resolve("cpu")
    for kind, idx in (("transformer", 1), ("head", -1)):
        rs = [r for r in p.layers if r.kind == kind and r.dtype == "fp32"]
        if len(rs) < 3:
            continue
        res = {k: [] for k in ("loo_f", "loo_b", "ana_f", "ana_b", "pri_f", "pri_b", "f", "b")}
        for i, t in enumerate(rs):
            m = LayerEfficiency.fit(rs[:i] + rs[i + 1:], p.peak_flops)
            ef = m.efficiency(kind, "fwd", "fp32", [t.features()])[0]
            eb = m.efficiency(kind, "bwd", "fp32", [t.features()])[0]
            res["loo_f"].append(t.flops_fwd / (ef * p.peak_flops["fp32"]))
            res["loo_b"].append(2 * t.flops_fwd / (eb * p.peak_flops["fp32"]))
            heads = t.heads if kind == "transformer" else max(t.hidden // 64, 2)
            spec = ModelSpec.transformer(name="x", num_layers=1, hidden=t.hidden, heads=heads, ffn=t.ffn or 4 * t.hidden,
                                         vocab=t.vocab or 256, seq_len=t.seq, dtype="fp32")
            a = layer_times(spec, cpu_prior, mbs=t.mbs, profile=no_layers)[idx]
            q = layer_times(spec, cpu_prior, mbs=t.mbs)[idx]
            res["ana_f"].append(a[0])
            res["ana_b"].append(a[1])
            res["pri_f"].append(q[0])
            res["pri_b"].append(q[1])
            res["f"].append(t.fwd_s)
            res["b"].append(t.bwd_s)
        row = {"n": len(rs)}
        for name, key in (("layer_regressor_loo", "loo"), ("analytic_calibrated_gemms", "ana"), ("catalog_prior", "pri")):
            row[name] = {"fwd": round(mape(res[key + "_f"], res["f"]), 2), "bwd": round(mape(res[key + "_b"], res["b"]), 2)}
        out[kind] = row
        print(f"{kind} (n={len(rs)}): " + "; ".join(f"{k} fwd {v['fwd']}% bwd {v['bwd']}%" for k, v in row.items() if k != "n"))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
