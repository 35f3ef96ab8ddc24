"""``hetero.parallelize(model, runtime)``: turn a model with a plan-indexed layer list into this rank's part.

The model exposes ``model.layers`` (an ``nn.ModuleList`` laid out like its ModelSpec: embedding, blocks, head;
each layer maps one tensor to one tensor). Every rank builds the full model with the same seed, then keeps its
part. Transformations, in this fixed order:

1. **Pipeline split**: keep the plan stage's layer range (uneven ranges are fine) as a ``torch.distributed.pipelining``
   ``PipelineStage`` on the rank's pipeline group, driven by the plan's schedule (GPipe, 1F1B, interleaved 1F1B).
2. **Tensor parallelism**: layers with ``tp_shard`` keep a speed-proportional shard (``Stage.tp_shares``, hetero's
   column/row-parallel layers); with equal shares and ``tp_impl="dtensor"`` layers with ``tp_plan`` go to DTensor.
3. **Activation recomputation** (``Stage.recompute``): each block runs under ``torch.utils.checkpoint``.
4. **Weighted data parallelism**: after backward, every gradient is multiplied by ``n_d / N`` (replica d's share of
   the global batch) and summed over the DP group in flat buckets, so the update equals the single-device one.

On CPU, a rank declared slower (``HETERO_SLOWDOWN`` > 1, tests and benchmarks only) pads each forward and backward
of its stage through ``hetero.runtime.emulate.Emulator``.

    rt = hetero.init(plan); pm = hetero.parallelize(GPT(cfg), rt, loss_fn=lm_loss)
    opt = torch.optim.AdamW(pm.parameters()); loss = pm.train_step(x, y); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from hetero.config import ConfigError
from hetero.runtime.mesh import Runtime

BUCKET_BYTES = 25 * 2**20


class _Timer:
    """Busy-time accounting of one stage module (measured, before any emulation padding)."""

    def __init__(self, emulator=None):
        self.emulator = emulator
        self.busy_s = 0.0
        self.padded_s = 0.0
        self._bwd_t0: list[tuple[float, str]] = []

    def before(self, kind: str) -> None:
        """Emulation: the share of the padding slept before a ``kind`` block ("fwd"/"bwd" and the input shape: the
        emulator pads each kind from its fastest run, so blocks of one kind must be the same work)."""
        if self.emulator is not None:
            self.emulator.before(kind)

    def add(self, elapsed: float, kind: str) -> None:
        self.busy_s += elapsed
        self.padded_s += self.emulator.pad(elapsed, kind) if self.emulator is not None else elapsed


class _BackwardStart(torch.autograd.Function):
    """Identity at a stage's output; its backward (the first of the stage) starts the backward clock."""

    @staticmethod
    def forward(ctx, x, timer, kind):
        ctx.timer, ctx.kind = timer, kind
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.timer.before(ctx.kind)
        ctx.timer._bwd_t0.append((time.perf_counter(), ctx.kind))
        return grad, None, None


class _BackwardEnd(torch.autograd.Function):
    """Identity at a stage's input; its backward (the last of the stage) stops the clock and pads."""

    @staticmethod
    def forward(ctx, x, timer):
        ctx.timer = timer
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        t = ctx.timer
        if t._bwd_t0:
            t0, kind = t._bwd_t0.pop()
            t.add(time.perf_counter() - t0, kind)
        return grad, None


class StageModule(nn.Module):
    """Layers ``[start, end)`` of a model; parameter names keep the full model's (``layers.<i>.…``).

    forward: the layer input of ``start`` -> the output of ``end - 1``; timed for metrics and emulation."""

    def __init__(self, layers: list[tuple[int, nn.Module]], *, recompute: bool = False, emulator=None):
        super().__init__()
        self.layers = nn.ModuleDict({str(i): m for i, m in layers})
        self.recompute = recompute
        self.timer = _Timer(emulator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = "x".join(map(str, x.shape))
        self.timer.before(f"fwd{shape}")
        t0 = time.perf_counter()
        grad = torch.is_grad_enabled()
        marked = False
        for layer in self.layers.values():
            if grad and not marked and x.is_floating_point() and x.requires_grad:
                x, marked = _BackwardEnd.apply(x, self.timer), True
            if self.recompute and grad and x.is_floating_point():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        if grad and not marked and x.requires_grad:  # a one-layer first stage: time its backward from here
            x, marked = _BackwardEnd.apply(x, self.timer), True
        self.timer.add(time.perf_counter() - t0, f"fwd{shape}")
        if grad and x.requires_grad:
            x = _BackwardStart.apply(x, self.timer, f"bwd{shape}")
        return x


def _emulator_from_env():
    slow = float(os.environ.get("HETERO_SLOWDOWN", "1") or 1)
    if slow == 1.0:
        return None
    from hetero.runtime.emulate import Emulator  # tests/benchmarks only: CPU emulation of slower devices

    return Emulator.from_env()


def _chunks(plan, stage_index: int) -> list[tuple[int, int]]:
    """Layer ranges this stage holds: one, or ``virtual_stages`` chunks for interleaved 1F1B."""
    if plan.schedule != "interleaved_1f1b" or plan.virtual_stages == 1:
        return [tuple(plan.stages[stage_index].layers)]
    # Megatron layout: the model is cut into pp*v chunks in order; chunk j runs on stage j % pp. Each stage keeps
    # its planned layer count (split over its v chunks), so uneven plans stay uneven.
    v, pp = plan.virtual_stages, plan.pp
    sizes = []
    for i, st in enumerate(plan.stages):
        if st.num_layers % v:
            raise ConfigError(f"stages[{i}].layers", f"{st.num_layers} layers cannot be split into "
                                                     f"{v} interleaved chunks")
        sizes.append(st.num_layers // v)
    out, start = [], 0
    for j in range(pp * v):
        n = sizes[j % pp]
        if j % pp == stage_index:
            out.append((start, start + n))
        start += n
    return out


class ParallelModel:
    """This rank's part of a model under a plan (built by :func:`parallelize`)."""

    def __init__(self, rt: Runtime, modules: list[StageModule], loss_fn: Callable, schedule=None,
                 stage_indices: list[int] | None = None):
        self.rt = rt
        self.modules = modules
        """Stage modules of this rank (several with interleaved 1F1B)."""
        self.loss_fn = loss_fn
        self.schedule = schedule
        self.stage_indices = stage_indices or [rt.stage_index]
        self.last_step_s = 0.0
        """Wall seconds of the last ``train_step``."""

    # -- parameters
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(full-model name, local parameter) pairs; TP shards carry ``_hetero_shard``."""
        for m in self.modules:
            yield from m.named_parameters()

    def parameters(self) -> list[nn.Parameter]:
        """Local parameters (for the optimizer)."""
        return [p for _, p in self.named_parameters()]

    def busy_s(self) -> tuple[float, float]:
        """(measured, padded) compute seconds of this rank since the last call; resets the counters."""
        b = sum(m.timer.busy_s for m in self.modules)
        p = sum(m.timer.padded_s for m in self.modules)
        for m in self.modules:
            m.timer.busy_s = m.timer.padded_s = 0.0
        return b, p

    # -- training
    def train_step(self, inputs: torch.Tensor | None, targets: torch.Tensor | None) -> float:
        """Forward + backward of this replica's share (``[n_d, S]`` inputs/targets; only the first/last stage
        needs them), weighted DP gradient sum. Returns the global mean loss (same on every rank)."""
        t0 = time.perf_counter()
        rt, plan = self.rt, self.rt.plan
        m = plan.num_microbatches
        dev = rt.device
        if rt.is_first_stage or rt.is_last_stage:
            need = inputs if rt.is_first_stage else targets
            if need is None:
                raise ValueError(f"rank {rt.rank} (stage {rt.stage_index}) needs "
                                 f"{'inputs' if rt.is_first_stage else 'targets'}")
            if need.shape[0] != plan.stages[0].batch_shares[rt.dp_index]:
                raise ValueError(f"rank {rt.rank}: got {need.shape[0]} samples but replica {rt.dp_index}'s share is "
                                 f"{plan.stages[0].batch_shares[rt.dp_index]} (use hetero.data.shard)")
        losses: list[torch.Tensor] = []
        if self.schedule is None:
            mod = self.modules[0]
            for x, y in zip(inputs.to(dev).chunk(m), targets.to(dev).chunk(m)):
                loss = self.loss_fn(mod(x), y)
                (loss / m).backward()
                losses.append(loss.detach())
        else:
            args = (inputs.to(dev),) if rt.is_first_stage else ()
            kw = {"target": targets.to(dev), "losses": losses} if rt.is_last_stage else {}
            self.schedule.step(*args, **kw)
        self._sync_grads()
        # global loss: sum over replicas of w_d * loss_d, contributed by one rank per replica (last stage, tp 0)
        local = torch.zeros(1, dtype=torch.float64)
        if rt.is_last_stage and rt.tp_index == 0:
            local += rt.dp_weight * float(torch.stack([x.detach() for x in losses]).mean())
        if rt.world_size > 1:
            dist.all_reduce(local)
        self.last_step_s = time.perf_counter() - t0
        return float(local)

    def _sync_grads(self) -> None:
        """Scale by n_d/N and sum over the DP group, in flat buckets of at most BUCKET_BYTES."""
        rt = self.rt
        if rt.dp_group is None:
            return
        w = rt.dp_weight
        grads = []
        for _, p in self.named_parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            g = p.grad
            grads.append(g._local_tensor if hasattr(g, "_local_tensor") else g)
        bucket: list[torch.Tensor] = []
        size = 0
        for g in [*grads, None]:
            if g is not None:
                bucket.append(g)
                size += g.numel() * g.element_size()
            if bucket and (g is None or size >= BUCKET_BYTES):
                flat = torch.cat([b.reshape(-1) for b in bucket]).mul_(w)
                dist.all_reduce(flat, group=rt.dp_group)
                off = 0
                for b in bucket:
                    b.copy_(flat[off:off + b.numel()].view_as(b))
                    off += b.numel()
                bucket, size = [], 0


def check_model(model: nn.Module, plan) -> None:
    """Raise ConfigError unless ``model``'s layer list (and name/fingerprint, when known) fits ``plan``."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError("model", f"{type(model).__name__} has no `layers` ModuleList (the plan-indexed layer list)")
    if len(layers) != plan.num_layers:
        raise ConfigError("num_layers", f"the plan was made for {plan.model!r} with {plan.num_layers} layers, but "
                                        f"this model has {len(layers)} layers")
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "spec") and plan.model_hash:
        name = getattr(cfg, "name", "")
        # the fingerprint covers the dtype the costs assume, which does not change the model: accept any
        fps = [cfg.spec(dtype=d).fingerprint() for d in dict.fromkeys([plan.dtype, "fp32", "bf16", "fp16"])]
        fp = fps[0]
        if plan.model_hash not in fps:
            raise ConfigError("model_hash", f"the plan was made for model {plan.model!r} (fingerprint "
                                            f"{plan.model_hash}), this model {name!r} has fingerprint {fp}")


def parallelize(model: nn.Module, rt: Runtime, *, loss_fn: Callable, tp_impl: str = "auto",
                emulator=None) -> ParallelModel:
    """This rank's part of ``model`` under ``rt.plan`` (see the module docstring). ``loss_fn(output, target)``
    -> scalar mean loss of a micro-batch. ``tp_impl``: "hetero" (own uneven layers), "dtensor" (even shares
    only) or "auto" (DTensor when the stage's shares are even, else hetero's). Collective over the world."""
    if not isinstance(rt, Runtime):
        raise TypeError("parallelize(model, rt): rt must be the Runtime returned by hetero.init(plan)")
    if tp_impl not in ("auto", "hetero", "dtensor"):
        raise ConfigError("tp_impl", f"must be auto, hetero or dtensor, got {tp_impl!r}")
    plan = rt.plan
    check_model(model, plan)
    st = rt.stage
    emulator = emulator if emulator is not None else _emulator_from_env()
    ranges = _chunks(plan, rt.stage_index)
    modules = []
    for lo, hi in ranges:
        # 1. pipeline split: keep this stage's (possibly uneven) layer range
        layers = [(i, model.layers[i]) for i in range(lo, hi)]
        # 2. tensor parallelism over the stage's TP group
        if st.tp > 1:
            even = st.tp_shares is None or max(st.tp_shares) - min(st.tp_shares) < 1e-9
            use_dtensor = tp_impl == "dtensor" or (tp_impl == "auto" and even and rt.mesh is not None)
            if tp_impl == "dtensor" and not even:
                raise ConfigError("tp_impl", "DTensor cannot shard unevenly; this stage has tp_shares "
                                             f"{st.tp_shares} (use tp_impl='hetero')")
            if use_dtensor and rt.mesh is None:
                raise ConfigError("tp_impl", f"DTensor needs a DeviceMesh, which this backend could not give: "
                                             f"{rt.extra.get('mesh_error')}")
            for _, layer in layers:
                if use_dtensor and hasattr(layer, "tp_plan"):
                    from torch.distributed.tensor.parallel import parallelize_module

                    parallelize_module(layer, rt.mesh["tp"] if rt.mesh.ndim > 1 else rt.mesh, layer.tp_plan())
                elif hasattr(layer, "tp_shard"):
                    layer.tp_shard(group=rt.tp_group, index=rt.tp_index, size=st.tp, shares=st.tp_shares)
        # 3. activation recomputation (per layer, inside StageModule.forward)
        mod = StageModule(layers, recompute=st.recompute, emulator=emulator).to(rt.device)
        modules.append(mod)
    # the pipeline schedule over this rank's pipeline group
    schedule, stage_ids = None, [rt.stage_index]
    if plan.pp > 1:
        schedule, stage_ids = _build_schedule(rt, modules, loss_fn)
    # 4. weighted DP: gradients are scaled by n_d/N and summed in ParallelModel._sync_grads after backward
    return ParallelModel(rt, modules, loss_fn, schedule, stage_ids)


def _build_schedule(rt: Runtime, modules: list[StageModule], loss_fn: Callable):
    from torch.distributed.pipelining import (
        PipelineStage,
        Schedule1F1B,
        ScheduleGPipe,
        ScheduleInterleaved1F1B,
    )

    plan = rt.plan
    pp, v = plan.pp, len(modules)
    group = rt.pp_group
    pp_ranks = rt.extra["pp_ranks"]
    # stage index -> rank inside the pipeline group (new_group orders members by global rank)
    to_group = {j: dist.get_group_rank(group, pp_ranks[j % pp]) for j in range(pp * v)}
    ids = [rt.stage_index + k * pp for k in range(v)]
    stages = []
    for sid, mod in zip(ids, modules):
        s = PipelineStage(mod, sid, pp * v, rt.device, group=group)
        s.stage_index_to_group_rank = dict(to_group)
        stages.append(s)
    n = plan.num_microbatches
    if plan.schedule == "interleaved_1f1b" and v > 1:
        sched = ScheduleInterleaved1F1B(stages, n_microbatches=n, loss_fn=loss_fn)
    elif plan.schedule == "gpipe":
        sched = ScheduleGPipe(stages[0], n_microbatches=n, loss_fn=loss_fn)
    else:  # 1f1b, or interleaved with one chunk per rank (which is 1F1B)
        sched = Schedule1F1B(stages[0], n_microbatches=n, loss_fn=loss_fn)
    for s in stages:
        s.stage_index_to_group_rank = dict(to_group)
    return sched, ids
