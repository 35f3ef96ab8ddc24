"""Training-loop hooks: ``on_step_start`` / ``on_step_end`` (no-ops by default) and the metrics hook.

:class:`MetricsHook` gathers, every step, each rank's measured compute time (``ParallelModel.busy_s``), and prints
one line from rank 0: step, loss, tokens/s, MFU per device type, measured vs predicted step time and per-stage
busy time. Measured stage times go to ``measured_stage_busy()`` (and a JSONL file) so the predictor can be
calibrated against them (``hetero.predictor`` reads ``{"stage_busy_s": [...], "predicted_stage_busy_s": [...]}``);
``type_calibration()`` gives each device type's measured / predicted compute time over its ranks, the factor to
re-plan with (a type's peak divided by it).

    hook = MetricsHook(pm, spec=cfg.spec(), cluster=cluster)
    for step in ...: hook.on_step_start(step); loss = pm.train_step(x, y); ...; hook.on_step_end(step, loss)
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist


def type_calibration(cluster, spec, plan, rank_busy: list[float]) -> dict[str, float]:
    """Measured / predicted compute seconds per device type: each rank's measured busy time per step
    (``rank_busy[rank]``, padded where emulated) over the predictor's busy time of its replica and stage, averaged
    over the type's ranks. Above 1: the type ran slower than predicted (for example a replica with a small batch
    share, less efficient per sample than a linear FLOP/s calibration says)."""
    from hetero.predictor import predict_detailed

    rep = predict_detailed(cluster, spec, plan)
    ratios: dict[str, list[float]] = {}
    for si, st in enumerate(plan.stages):
        for d in range(st.dp):
            pred = rep.simulations[d].busy[si]
            for t in range(st.tp):
                r = st.rank(d, t)
                if pred > 0 and r < len(rank_busy) and rank_busy[r] > 0:
                    ratios.setdefault(st.type_of(d), []).append(rank_busy[r] / pred)
    return {k: sum(v) / len(v) for k, v in ratios.items()}


class Hooks:
    """Training-loop callbacks; subclass and override what you need (all default to no-ops)."""

    def on_step_start(self, step: int) -> None:
        """Called before the step's forward."""

    def on_step_end(self, step: int, loss: float) -> None:
        """Called after the optimizer step with the global loss."""


class MetricsHook(Hooks):
    """One metrics line per step from rank 0 (collective: every rank must call the hooks)."""

    def __init__(self, pm, *, spec=None, cluster=None, prediction=None, jsonl: str | Path | None = None,
                 printer: Callable[[str], None] = print, warmup: int = 1):
        """``pm``: the ParallelModel; ``spec``: its ModelSpec (FLOPs for MFU); ``cluster``: device peaks (MFU) and
        the predictor's input; ``prediction``: a Prediction (default: the plan's, else predicted here when the
        predictor and cluster are available); ``jsonl``: file for one JSON record per step (rank 0);
        ``warmup``: steps left out of the averages."""
        self.pm, self.rt, self.spec, self.cluster = pm, pm.rt, spec, cluster
        self.printer, self.warmup = printer, warmup
        self.jsonl = Path(jsonl) if jsonl else None
        plan = self.rt.plan
        self.prediction = prediction or plan.predicted
        if self.prediction is None and cluster is not None and spec is not None and cluster.world_size == plan.world_size:
            try:
                from hetero.predictor import predict

                self.prediction = predict(cluster, spec, plan)
            except Exception as e:  # the predictor is optional for the metrics line; say why it is missing
                warnings.warn(f"no predicted step time in the metrics: {type(e).__name__}: {e}", stacklevel=2)
        self.records: list[dict] = []
        self._t0 = 0.0
        self._flops = self._rank_flops()

    def _rank_flops(self) -> float:
        """Model FLOPs this rank does per step: 3 x forward FLOPs of its layers x its replica's samples / tp."""
        if self.spec is None:
            return 0.0
        st = self.rt.stage
        lo, hi = st.layers
        per_sample = 3 * sum(layer.flops_fwd for layer in self.spec.layers[lo:hi])
        return per_sample * st.batch_shares[self.rt.dp_index] / st.tp

    def _peak(self) -> float:
        if self.cluster is None:
            return 0.0
        types = self.cluster.device_types()
        t = types.get(self.rt.stage.type_of(self.rt.dp_index))
        return t.peak(self.rt.plan.dtype) if t is not None else 0.0

    def on_step_start(self, step: int) -> None:
        self._t0 = time.perf_counter()

    def on_step_end(self, step: int, loss: float) -> None:
        step_s = time.perf_counter() - self._t0
        busy, padded = self.pm.busy_s()
        mine = (self.rt.stage_index, self.rt.stage.type_of(self.rt.dp_index), busy, padded, self._flops, self._peak(),
                step_s)
        rows = [mine]
        if self.rt.world_size > 1:
            rows = [None] * self.rt.world_size
            dist.all_gather_object(rows, mine)
        if self.rt.rank != 0:
            return
        plan = self.rt.plan
        step_s = max(r[6] for r in rows)
        stage_busy = [0.0] * plan.pp
        for s, _, _, p, _, _, _ in rows:
            stage_busy[s] = max(stage_busy[s], p)
        mfu: dict[str, list[float]] = {}
        for _, typ, _, _, fl, peak, _ in rows:
            acc = mfu.setdefault(typ, [0.0, 0.0])
            acc[0] += fl
            acc[1] += peak
        mfu_by_type = {t: (f / (step_s * p) if p > 0 and step_s > 0 else None) for t, (f, p) in mfu.items()}
        tokens = plan.global_batch * max(plan.seq_len, 1)
        rec = {"step": step, "loss": loss, "step_s": step_s, "tokens_s": tokens / step_s if step_s else 0.0,
               "mfu": mfu_by_type, "stage_busy_s": stage_busy, "rank_busy_s": [r[3] for r in rows],
               "predicted_step_s": self.prediction.step_time_s if self.prediction else None,
               "predicted_stage_busy_s": list(self.prediction.stage_busy_s) if self.prediction else None}
        self.records.append(rec)
        if self.jsonl is not None:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(rec) + "\n")
        parts = [f"step {step}", f"loss {loss:.4f}", f"{rec['tokens_s']:,.0f} tok/s"]
        m = " ".join(f"{t} {v * 100:.2f}%" for t, v in mfu_by_type.items() if v is not None)
        if m:
            parts.append(f"MFU {m}")
        pred = rec["predicted_step_s"]
        parts.append(f"step {step_s * 1e3:.1f} ms" + (f" (pred {pred * 1e3:.1f} ms, {100 * (step_s / pred - 1):+.1f}%)"
                                                      if pred else ""))
        parts.append("stages " + "/".join(f"{b * 1e3:.0f}" for b in stage_busy) + " ms busy")
        self.printer(" | ".join(parts))

    def _mean_after_warmup(self, key: str) -> list[float]:
        """Element-wise mean of the records' ``key`` lists after warm-up (rank 0; empty elsewhere)."""
        recs = self.records[self.warmup:] or self.records
        if not recs:
            return []
        return [sum(r[key][i] for r in recs) / len(recs) for i in range(len(recs[0][key]))]

    def measured_stage_busy(self) -> list[float]:
        """Mean measured busy seconds per stage per step after warm-up (rank 0; empty elsewhere)."""
        return self._mean_after_warmup("stage_busy_s")

    def measured_rank_busy(self) -> list[float]:
        """Mean measured busy seconds (padded where emulated) per rank per step after warm-up (rank 0)."""
        return self._mean_after_warmup("rank_busy_s")

    def type_calibration(self) -> dict[str, float]:
        """:func:`type_calibration` of this run (rank 0; empty without a cluster and ModelSpec or records)."""
        busy = self.measured_rank_busy()
        if not busy or self.cluster is None or self.spec is None:
            return {}
        try:
            return type_calibration(self.cluster, self.spec, self.rt.plan, busy)
        except Exception as e:  # optional, like the prediction: say why it is missing
            warnings.warn(f"no type calibration: {type(e).__name__}: {e}", stacklevel=2)
            return {}

    def median_step_s(self) -> float:
        """Median measured step seconds after warm-up (rank 0): robust to other load on the machine."""
        recs = sorted(r["step_s"] for r in (self.records[self.warmup:] or self.records))
        if not recs:
            return 0.0
        k = len(recs) // 2
        return recs[k] if len(recs) % 2 else (recs[k - 1] + recs[k]) / 2

    def mean_step_s(self) -> float:
        """Mean measured step seconds after warm-up (rank 0)."""
        recs = self.records[self.warmup:] or self.records
        return sum(r["step_s"] for r in recs) / len(recs) if recs else 0.0
