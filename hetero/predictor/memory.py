"""Per-rank memory: parameters, gradients, optimizer state, activations in flight, runtime overhead.

Model state per parameter (AdamW, Adam moments in fp32):

    pure fp32:            weights 4 + grads 4 + moments 8                  = 16 B
    mixed precision:      low-precision weights 2 + fp32 master 4 + fp32 grads 4 + moments 8 = 18 B

(the Megatron-LM accounting); parameters of a stage are split over its TP degree.

Activations: a micro-batch's activations stay alive from its forward to its backward. Under GPipe a stage holds
all m micro-batches; under 1F1B stage s of p holds min(p - s, m); under interleaved 1F1B with v chunks it holds
min(m v, 2 (p - s - 1) + (v - 1) p + 1) chunk-sized pieces (1/v of the stage each). With recomputation only each
layer's input is kept, plus one layer's full activations while its backward recomputes it. Either way the
backward of the largest layer briefly holds gradient buffers of about its saved size (a transient workspace).

    python -c "from hetero.models.spec import ModelSpec; from hetero.predictor.memory import stage_memory; \
print(stage_memory(ModelSpec.preset('gpt2-small'), (0, 14), mbs=8, pp=1, stage_index=0, num_microbatches=1))"
"""

from __future__ import annotations

from dataclasses import dataclass

from hetero.models.spec import DTYPE_BYTES, ModelSpec


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per rank by category."""

    params: float
    grads: float
    optimizer: float
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        """Sum of all categories."""
        return self.params + self.grads + self.optimizer + self.activations + self.overhead

    @property
    def model_state(self) -> float:
        """Parameters + gradients + optimizer state."""
        return self.params + self.grads + self.optimizer


def state_bytes_per_param(dtype: str, param_dtype: str = "fp32") -> tuple[float, float, float]:
    """(weight, gradient, optimizer) bytes per parameter for AdamW training in ``dtype`` with ``param_dtype``
    master weights: fp32 -> (4, 4, 8); bf16/fp16 mixed precision -> (2 + 4, 4, 8)."""
    w = DTYPE_BYTES[param_dtype]
    if DTYPE_BYTES[dtype] < w:  # low-precision copy beside the master weights
        return DTYPE_BYTES[dtype] + w, 4.0, 8.0
    return float(w), float(w), 8.0


def in_flight(schedule: str, *, pp: int, stage_index: int, num_microbatches: int, virtual_stages: int = 1) -> float:
    """Micro-batches whose activations a stage holds at its peak, in units of the whole stage's activations."""
    p, s, m, v = pp, stage_index, num_microbatches, virtual_stages
    if schedule == "gpipe":
        return float(m)
    if schedule == "interleaved_1f1b" and v > 1:
        chunks = min(m * v, 2 * (p - s - 1) + (v - 1) * p + 1)
        return chunks / v
    return float(min(p - s, m))


def stage_memory(model: ModelSpec, layers: tuple[int, int], *, mbs: int, pp: int, stage_index: int,
                 num_microbatches: int, tp: int = 1, schedule: str = "1f1b", virtual_stages: int = 1,
                 recompute: bool = False, dtype: str | None = None, overhead_bytes: float = 0.0) -> MemoryBreakdown:
    """Peak memory of one rank of a stage holding ``layers`` [start, end) at micro-batch size ``mbs``."""
    dtype = dtype or model.dtype
    span = model.layers[layers[0]:layers[1]]
    params = sum(layer.params for layer in span) / tp
    wb, gb, ob = state_bytes_per_param(dtype, model.param_dtype)
    scale = DTYPE_BYTES[dtype] / DTYPE_BYTES[model.dtype]  # spec byte counts assume model.dtype
    if recompute:
        kept = sum(layer.act_in_bytes for layer in span) * scale * mbs
        worst = max((layer.act_saved_bytes for layer in span), default=0.0) * scale * mbs / tp
        per_mb, extra = kept, worst
    else:
        # backward of a layer allocates gradient buffers about the size of what it saved (for the LM head: the
        # logits' gradient beside the logits), on top of everything in flight
        per_mb = sum(layer.act_saved_bytes for layer in span) * scale * mbs / tp
        extra = max((layer.act_saved_bytes for layer in span), default=0.0) * scale * mbs / tp
    n = in_flight(schedule, pp=pp, stage_index=stage_index, num_microbatches=num_microbatches,
                  virtual_stages=virtual_stages)
    # p2p buffers: one activation in and one gradient out per in-flight boundary tensor
    p2p = 0.0 if pp == 1 else 2 * span[-1].act_out_bytes * scale * mbs
    return MemoryBreakdown(params=params * wb, grads=params * gb, optimizer=params * ob,
                           activations=per_mb * n + extra + p2p, overhead=overhead_bytes)
