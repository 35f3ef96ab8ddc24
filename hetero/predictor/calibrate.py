"""Calibration: scikit-learn regressors that learn a device's efficiency from its profile's measurements.

Two models, both fitted on shape features (log2 of sizes) with a target of log(efficiency), where
efficiency = FLOPs / (seconds x peak FLOP/s):

* :class:`GemmEfficiency` learns from the profile's GEMM records ``(m, n, k, dtype, seconds)`` with features
  ``log2 m, log2 n, log2 k, log2 min(m, n, k), log2 FLOPs``, one regressor per dtype;
* :class:`LayerEfficiency` learns from whole-layer records (a transformer block, the LM head; forward and
  backward separately) with features ``log2 tokens, log2 hidden, log2 ffn/tp, log2 seq, log2 heads,
  log2 vocab/tp, log2 FLOPs/tp``, one regressor per (layer kind, direction, dtype).

The regressor is a gradient-boosted tree ensemble (``GradientBoostingRegressor``, ``random_state=0``): it never
extrapolates beyond the efficiencies it saw (trees saturate), so a shape outside the profiled grid gets the
efficiency of the nearest profiled shapes. Fitting is deterministic, so a profile stores only its records and
refits on load (a few tens of milliseconds).

    python -c "from hetero.predictor.profile import DeviceProfile; \
from hetero.predictor.calibrate import GemmEfficiency; \
p = DeviceProfile.from_json('profile.json'); print(GemmEfficiency.fit(p.gemms, p.peak_flops).score())"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MIN_EFF, MAX_EFF = 1e-4, 1.5


def _log2(x: np.ndarray | float) -> np.ndarray:
    return np.log2(np.maximum(np.asarray(x, dtype=float), 1.0))


def gemm_features(m, n, k) -> np.ndarray:
    """Feature matrix, shape (N, 5), for GEMMs (m x k) @ (k x n); arguments are scalars or arrays of length N."""
    m, n, k = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (m, n, k))
    return np.stack([_log2(m), _log2(n), _log2(k), _log2(np.minimum(np.minimum(m, n), k)),
                     _log2(2 * m * n * k)], axis=1)


LAYER_FEATURES = ("tokens", "hidden", "ffn", "seq", "heads", "vocab", "flops")


def layer_features(rows: Sequence[dict]) -> np.ndarray:
    """Feature matrix, shape (N, 7), from dicts with tokens (mbs x seq), hidden, ffn, seq, heads, vocab and flops
    (all per TP shard where they are split)."""
    return np.array([[math.log2(max(float(r.get(k, 1) or 1), 1.0)) for k in LAYER_FEATURES] for r in rows])


def _regressor():
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=150, max_depth=3, learning_rate=0.08, subsample=1.0,
                                     min_samples_leaf=2, random_state=0)


@dataclass
class _Fit:
    """One fitted regressor and its training data."""

    model: object
    x: np.ndarray
    y: np.ndarray

    def predict_eff(self, x: np.ndarray) -> np.ndarray:
        if len(self.y) == 1:  # a single measurement: its efficiency everywhere
            return np.full(len(x), float(np.exp(self.y[0])))
        return np.clip(np.exp(self.model.predict(x)), MIN_EFF, MAX_EFF)


def _fit(x: np.ndarray, y: np.ndarray) -> _Fit:
    if len(y) < 2:
        return _Fit(model=None, x=x, y=y)
    model = _regressor()
    model.fit(x, y)
    return _Fit(model=model, x=x, y=y)


@dataclass
class GemmEfficiency:
    """Fraction of peak a GEMM reaches, by dtype, learned from ``GemmRecord``s."""

    fits: dict[str, _Fit] = field(default_factory=dict)
    """dtype -> fitted regressor."""

    @classmethod
    def fit(cls, records: Sequence, peak_flops: dict[str, float]) -> GemmEfficiency:
        """Fit one regressor per dtype on records with fields m, n, k, dtype, seconds."""
        out = cls()
        for dtype in sorted({r.dtype for r in records}):
            rs = [r for r in records if r.dtype == dtype and r.seconds > 0]
            if not rs or dtype not in peak_flops:
                continue
            x = gemm_features([r.m for r in rs], [r.n for r in rs], [r.k for r in rs])
            eff = np.array([2 * r.m * r.n * r.k / r.seconds / peak_flops[dtype] for r in rs])
            out.fits[dtype] = _fit(x, np.log(np.clip(eff, MIN_EFF, MAX_EFF)))
        return out

    def has(self, dtype: str) -> bool:
        """Whether a regressor exists for ``dtype``."""
        return dtype in self.fits

    def efficiency(self, dtype: str, m, n, k) -> np.ndarray:
        """Predicted efficiency, shape (N,), for GEMMs of the given sizes (arrays or scalars)."""
        return self.fits[dtype].predict_eff(gemm_features(m, n, k))


@dataclass
class LayerEfficiency:
    """Fraction of peak a whole layer reaches (forward or backward), learned from ``LayerRecord``s."""

    fits: dict[tuple[str, str, str], _Fit] = field(default_factory=dict)
    """(kind, 'fwd' or 'bwd', dtype) -> fitted regressor."""

    @classmethod
    def fit(cls, records: Sequence, peak_flops: dict[str, float]) -> LayerEfficiency:
        """Fit on records with fields kind, dtype, flops_fwd, fwd_s, bwd_s and the shape features."""
        out = cls()
        groups: dict[tuple[str, str], list] = {}
        for r in records:
            if r.flops_fwd > 0 and r.dtype in peak_flops:
                groups.setdefault((r.kind, r.dtype), []).append(r)
        for (kind, dtype), rs in sorted(groups.items()):
            x = layer_features([r.features() for r in rs])
            peak = peak_flops[dtype]
            for direction, mult in (("fwd", 1.0), ("bwd", 2.0)):
                secs = np.array([r.fwd_s if direction == "fwd" else r.bwd_s for r in rs])
                ok = secs > 0
                if not ok.any():
                    continue
                eff = np.array([mult * r.flops_fwd for r in rs])[ok] / secs[ok] / peak
                out.fits[(kind, direction, dtype)] = _fit(x[ok], np.log(np.clip(eff, MIN_EFF, MAX_EFF)))
        return out

    def has(self, kind: str, dtype: str) -> bool:
        """Whether both directions are fitted for ``kind`` in ``dtype``."""
        return (kind, "fwd", dtype) in self.fits and (kind, "bwd", dtype) in self.fits

    def efficiency(self, kind: str, direction: str, dtype: str, rows: Sequence[dict]) -> np.ndarray:
        """Predicted efficiency, shape (N,), for layers described by feature dicts ``rows``."""
        return self.fits[(kind, direction, dtype)].predict_eff(layer_features(rows))


def mape(pred: Sequence[float], true: Sequence[float]) -> float:
    """Mean absolute percentage error of ``pred`` against ``true``, in percent."""
    p, t = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    return float(np.mean(np.abs(p - t) / np.abs(t)) * 100.0)
