"""Compute time per layer (forward, backward) and of the optimizer step on one device type.

For one micro-batch of ``mbs`` samples at TP degree ``tp`` each layer costs, in this order of preference:

1. **measured**: the profile timed a layer of exactly this kind, shape, mbs, tp and dtype (``LayerRecord``):
   its times, scaled by the ratio of FLOPs if the layer's FLOP count differs slightly;
2. **layer regressor**: the profile has layer records of this kind and dtype: ``t = F / (peak x eff(shape))``
   with F = forward FLOPs / tp (2F for the backward) and eff from ``calibrate.LayerEfficiency``;
3. **analytic roofline**: the layer's GEMMs (a transformer block: QKV, attention scores, attention x V,
   projection, two MLP GEMMs; a head: one (tokens x vocab/tp x hidden) GEMM; anything else: a cube GEMM of the
   same FLOPs), each ``max(flops / (peak x eff), bytes / bandwidth)``, rescaled to the layer's FLOP count, plus
   the non-GEMM bytes ``bytes_fwd x mbs / tp`` over the memory bandwidth. The backward runs dX and dW GEMMs (2x
   FLOPs), moves twice the forward's non-GEMM bytes and reads+writes the weight gradients (8 B/param). GEMM
   efficiency comes from ``calibrate.GemmEfficiency`` when the profile has GEMMs of this dtype, else from the
   catalog's prior ``DeviceType.matmul_efficiency``; bandwidth is the profile's measured one, else 80% of the
   catalog's peak.

TP communication is not included (``predict`` adds it from ``LayerSpec.tp_comm_bytes``). Results are memoised per
distinct layer, so a 70-layer model costs three evaluations (embedding, block, head) per (device, mbs, tp, dtype).

    python -c "from hetero.models.spec import ModelSpec; from hetero.cluster.catalog import resolve; \
from hetero.predictor.compute import layer_times; print(layer_times(ModelSpec.preset('gpt2-small'), resolve('A100'), mbs=8)[1])"
"""

from __future__ import annotations

import functools
import math

import numpy as np

from hetero.cluster.spec import DeviceType
from hetero.models.spec import DTYPE_BYTES, LayerSpec, ModelSpec

BANDWIDTH_EFFICIENCY_PRIOR = 0.8
"""Fraction of the catalog's peak memory bandwidth that streaming kernels reach (no profile)."""
ADAM_BYTES_PER_PARAM = 28.0
"""AdamW update traffic per fp32 parameter: read weight, grad, two moments (16 B); write weight, moments (12 B)."""
TP_KINDS = ("transformer", "head", "embedding")
"""Layer kinds whose work TP splits (Megatron column/row-parallel blocks, vocab-parallel head and embedding)."""


def _device_key(device: DeviceType) -> tuple:
    return (device.id, tuple(sorted(device.peak_flops.items())), device.memory_bandwidth, device.matmul_efficiency)


def _layer_key(layer: LayerSpec) -> tuple:
    return (layer.kind, layer.params, layer.flops_fwd, layer.bytes_fwd, tuple(sorted(layer.shape.items())))


@functools.lru_cache(maxsize=256)
def _prior_cache(device_key: tuple) -> dict:
    """Memo of layer times for a device without a profile (keyed by the device's numbers)."""
    return {}


class _Estimator:
    """Layer-time formulas for one device (and optionally its profile)."""

    def __init__(self, device: DeviceType, profile):
        self.device = device
        self.profile = profile
        self.cache: dict = profile.cache.setdefault(_device_key(device), {}) if profile is not None else \
            _prior_cache(_device_key(device))

    # -- device numbers
    def peak(self, dtype: str) -> float:
        p = self.profile.peak(dtype) if self.profile is not None else None
        return p if p else self.device.peak(dtype)

    def bandwidth(self) -> float:
        if self.profile is not None:
            return self.profile.memory_bandwidth
        return self.device.memory_bandwidth * BANDWIDTH_EFFICIENCY_PRIOR

    def gemm_eff(self, dtype: str, m: np.ndarray, n: np.ndarray, k: np.ndarray) -> np.ndarray:
        if self.profile is not None and self.profile.gemm_model.has(dtype):
            return self.profile.gemm_model.efficiency(dtype, m, n, k)
        return np.full(len(m), self.device.matmul_efficiency)

    # -- one layer
    def times(self, layer: LayerSpec, *, mbs: int, tp: int, dtype: str, model_dtype: str) -> tuple[float, float]:
        key = (_layer_key(layer), mbs, tp, dtype, model_dtype)
        hit = self.cache.get(key)
        if hit is None:
            hit = self._times(layer, mbs=mbs, tp=tp, dtype=dtype, model_dtype=model_dtype)
            self.cache[key] = hit
        return hit

    def _times(self, layer: LayerSpec, *, mbs: int, tp: int, dtype: str, model_dtype: str) -> tuple[float, float]:
        split = tp if layer.kind in TP_KINDS else 1
        flops = layer.flops_fwd * mbs / split
        sh = layer.shape
        prof = self.profile
        if prof is not None and sh.get("hidden"):
            rec = prof.layer_table.get((layer.kind, dtype, sh.get("hidden", 0), sh.get("ffn", 0) if layer.kind == "transformer" else 0,
                                        sh.get("heads", 1) if layer.kind == "transformer" else 1, sh.get("seq", 1),
                                        sh.get("vocab", 0) if layer.kind != "transformer" else 0, mbs, tp))
            if rec is not None and (flops == 0 or rec.flops_fwd == 0 or abs(rec.flops_fwd / flops - 1) < 0.25):
                r = flops / rec.flops_fwd if flops > 0 and rec.flops_fwd > 0 else 1.0
                return rec.fwd_s * r, rec.bwd_s * r
            if flops > 0 and prof.layer_model.has(layer.kind, dtype):
                feats = [dict(tokens=mbs * sh.get("seq", 1), hidden=sh["hidden"], ffn=sh.get("ffn", 0) / split,
                              seq=sh.get("seq", 1), heads=sh.get("heads", 1) / split,
                              vocab=(sh.get("vocab", 0) / split) if layer.kind != "transformer" else 0, flops=flops)]
                peak = self.peak(dtype)
                ef = float(prof.layer_model.efficiency(layer.kind, "fwd", dtype, feats)[0])
                eb = float(prof.layer_model.efficiency(layer.kind, "bwd", dtype, feats)[0])
                return flops / (peak * ef), 2 * flops / (peak * eb)
        return self._analytic(layer, mbs=mbs, split=split, dtype=dtype, model_dtype=model_dtype)

    def _gemms(self, layer: LayerSpec, mbs: int, split: int) -> list[tuple[float, float, float, float]]:
        """Forward GEMMs (m, n, k, count) of one shard for one micro-batch."""
        sh = layer.shape
        h, s = sh.get("hidden", 0), sh.get("seq", 1)
        t = mbs * s
        if layer.kind == "transformer" and h:
            f, a = sh.get("ffn", 4 * h), max(sh.get("heads", 1), 1)
            d = h // a
            return [(t, 3 * h / split, h, 1), (t, h, h / split, 1), (t, f / split, h, 1), (t, h, f / split, 1),
                    (s, s, d, mbs * a / split), (s, d, s, mbs * a / split)]
        if layer.kind == "head" and h and sh.get("vocab"):
            return [(t, sh["vocab"] / split, h, 1)]
        if layer.flops_fwd > 0:
            c = (layer.flops_fwd * mbs / split / 2) ** (1 / 3)
            return [(c, c, c, 1)]
        return []

    def _analytic(self, layer: LayerSpec, *, mbs: int, split: int, dtype: str, model_dtype: str) -> tuple[float, float]:
        b = DTYPE_BYTES[dtype]
        bw = self.bandwidth()
        peak = self.peak(dtype)
        flops = layer.flops_fwd * mbs / split
        fwd = self._gemms(layer, mbs, split)
        t_mm_f = t_mm_b = 0.0
        if fwd and flops > 0:
            # backward of (m, n, k): dX = (m, k, n) and dW = (k, n, m), both with the forward's FLOPs
            shapes = fwd + [(m, k, n, c) for m, n, k, c in fwd] + [(k, n, m, c) for m, n, k, c in fwd]
            arr = np.array(shapes, dtype=float)
            m, n, k, c = arr.T
            eff = self.gemm_eff(dtype, m, n, k)
            gflops = 2 * m * n * k
            secs = c * np.maximum(gflops / (peak * eff), b * (m * k + k * n + m * n) / bw)
            nf = len(fwd)
            scale = flops / float(np.sum(c[:nf] * gflops[:nf]))
            t_mm_f = float(np.sum(secs[:nf])) * scale
            t_mm_b = float(np.sum(secs[nf:])) * scale
        elementwise = layer.bytes_fwd * mbs / split * b / DTYPE_BYTES[model_dtype]
        t_mem_f = elementwise / bw
        t_mem_b = (2 * elementwise + 8.0 * layer.params / split) / bw
        return t_mm_f + t_mem_f, t_mm_b + t_mem_b


def _estimator(device: DeviceType, profile) -> _Estimator:
    return _Estimator(device, profile)


def layer_times(model: ModelSpec, device: DeviceType, *, mbs: int, tp: int = 1, dtype: str | None = None,
                profile=None) -> list[tuple[float, float]]:
    """(forward, backward) seconds of every layer of ``model`` for one micro-batch of ``mbs`` samples on one
    rank of a TP group of ``tp`` devices of type ``device`` (TP communication excluded).

    ``dtype`` defaults to the model's; ``profile`` (a ``DeviceProfile``) calibrates the estimate."""
    if mbs < 1:
        raise ValueError(f"mbs must be >= 1, got {mbs}")
    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    dtype = dtype or model.dtype
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r} (use {', '.join(DTYPE_BYTES)})")
    est = _estimator(device, profile)
    return [est.times(layer, mbs=mbs, tp=tp, dtype=dtype, model_dtype=model.dtype) for layer in model.layers]


def optimizer_step_time(params: float, device: DeviceType, profile=None) -> float:
    """Seconds of one AdamW step over ``params`` fp32 parameters: the profile's measured line when it has
    optimizer records, else ``params x 28 B`` over 80% of the catalog bandwidth (memory-bound update)."""
    if params <= 0:
        return 0.0
    if profile is not None:
        t = profile.optimizer_time(params)
        if t is not None:
            return t
    return params * ADAM_BYTES_PER_PARAM / (device.memory_bandwidth * BANDWIDTH_EFFICIENCY_PRIOR)


def model_flops_utilization(model: ModelSpec, device: DeviceType, *, samples_per_s: float,
                            dtype: str | None = None) -> float:
    """MFU: achieved training FLOP/s (3x forward FLOPs per sample) over the device's catalog peak."""
    peak = device.peak(dtype or model.dtype)
    return model.flops_per_sample * samples_per_s / peak if peak > 0 and math.isfinite(samples_per_s) else 0.0
