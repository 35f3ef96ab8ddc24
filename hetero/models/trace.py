"""Build a ModelSpec from a real ``nn.Module`` by running its forward on the meta device (no memory, no compute).

``spec_from_module(model, sample_input, name=..., dtype=...)`` (also ``ModelSpec.from_module``) makes one
LayerSpec per top-level child of ``model`` in registration order, expanding an ``nn.ModuleList``/``Sequential`` of
blocks into one LayerSpec per element; the forward must run those layers in that order. Per layer it records:

* ``flops_fwd``: GEMM/convolution/attention FLOPs (``torch.utils.flop_counter``'s formulas; scaled-dot-product
  attention counts 4 b h s_q s_k d);
* ``act_saved_bytes``: bytes of the tensors autograd saves for backward (``saved_tensors_hooks``), parameters
  excluded and each storage counted once;
* ``bytes_fwd``: input + output bytes of every non-GEMM, non-view op (elementwise, norms, softmax, gathers);
* ``act_in_bytes`` / ``act_out_bytes``: the layer's input and output tensors;
* ``params`` and, where they can be read off the modules, the shape features (hidden, ffn, heads, seq, vocab).

All figures are divided by the batch size (dim 0 of the first input), so they are per sample as LayerSpec wants.
Parameters and buffers are swapped for meta tensors with ``torch.func.functional_call``, so the real model is not
copied. With ``flash_attention=True`` (default) ``F.scaled_dot_product_attention`` is traced as the fused CPU flash
kernel (what CPU and GPU training run; it keeps the output and a log-sum-exp, not the s x s scores), since the meta
device would otherwise pick the math fallback. ``loss_fn(output, target)`` optionally traces the loss as part of
the last layer (its saved tensors, e.g. the log-softmax, count there).

    python -c "from hetero.models.gpt import GPT, GPTConfig; from hetero.models.trace import spec_from_module; \
import torch; print(spec_from_module(GPT(GPTConfig()), torch.zeros(2, 32, dtype=torch.long), name='gpt').summary())"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from hetero.config import ConfigError
from hetero.models.spec import DTYPE_BYTES, LayerSpec, ModelSpec

_TORCH_TO_NAME = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def layer_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) list that becomes the layers: top-level children, with ModuleList/Sequential children
    expanded into their elements (``layers.0``, ``layers.1``, ...)."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)) and len(child) > 0:
            out.extend((f"{name}.{i}", c) for i, c in enumerate(child))
        else:
            out.append((name, child))
    if not out:
        out = [("module", module)]
    return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        t = torch.empty_like(x, device="meta")
        return t.requires_grad_(x.requires_grad)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_meta(v) for k, v in x.items()}
    return x


class _Tracker:
    """Costs attributed to the layer currently running (``current``; -1 = outside every layer)."""

    def __init__(self, n: int):
        self.current = -1
        self.flops = [0.0] * n
        self.bytes = [0.0] * n
        self.saved = [0.0] * n
        self.seen: list[set] = [set() for _ in range(n)]
        self.act_in = [0.0] * n
        self.act_out = [0.0] * n
        self.out_shape: list[tuple | None] = [None] * n
        self.param_storages: set = set()


def _storage_key(t: torch.Tensor):
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return id(t)


class _CostMode(TorchDispatchMode):
    def __init__(self, tracker: _Tracker):
        super().__init__()
        self.tr = tracker

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        i = self.tr.current
        if i < 0:
            return out
        packet = func.overloadpacket
        if packet is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
            q, k = args[0], args[1]
            b, h, sq, d = q.shape
            self.tr.flops[i] += 4.0 * b * h * sq * k.shape[-2] * d
        elif packet in flop_registry:
            self.tr.flops[i] += float(flop_registry[packet](*args, **kwargs, out_val=out))
        elif packet in (torch.ops.aten.embedding, torch.ops.aten.index_select):
            self.tr.bytes[i] += 2.0 * sum(_nbytes(t) for t in _tensors(out))  # rows read + written, not the table
        elif not any(r.alias_info is not None for r in func._schema.returns):
            moved = sum(_nbytes(t) for t in _tensors(args) + _tensors(kwargs)) + sum(_nbytes(t) for t in _tensors(out))
            self.tr.bytes[i] += float(moved)
        return out


class _FlashSDPA(TorchFunctionMode):
    """Route F.scaled_dot_product_attention (no mask, no dropout) to the fused CPU flash kernel on meta."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            q, k, v = args[:3]
            rest = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale"), args[3:]))
            rest.update(kwargs)
            if rest.get("attn_mask") is None and not rest.get("dropout_p") and not rest.get("enable_gqa") \
                    and q.shape[:-2] == k.shape[:-2]:
                out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, 0.0, bool(rest.get("is_causal", False)), scale=rest.get("scale"))
                return out[0]
        return func(*args, **kwargs)


def _find_attr(mod: nn.Module, names: tuple[str, ...]) -> int | None:
    for m in mod.modules():
        for n in names:
            v = getattr(m, n, None)
            if isinstance(v, int) and v > 0:
                return v
    return None


def _kind_and_shape(idx: int, n: int, mod: nn.Module, out_shape: tuple | None, seq: int) -> tuple[str, dict]:
    linears = [m for m in mod.modules() if isinstance(m, nn.Linear)]
    embeds = [m for m in mod.modules() if isinstance(m, nn.Embedding)]
    attn = any(isinstance(m, nn.MultiheadAttention) for m in mod.modules()) or \
        _find_attr(mod, ("head_dim", "num_heads", "n_head", "heads")) is not None
    shape: dict[str, int] = {}
    if seq:
        shape["seq"] = seq
    if embeds and idx == 0:
        e = max(embeds, key=lambda m: m.num_embeddings)
        shape.update(hidden=e.embedding_dim, vocab=e.num_embeddings)
        return "embedding", shape
    if attn and linears and out_shape:
        h = int(out_shape[-1])
        heads = _find_attr(mod, ("num_heads", "n_head", "heads"))
        hd = _find_attr(mod, ("head_dim",))
        if heads is None and hd:
            heads = h // hd
        shape.update(hidden=h, ffn=max(m.out_features for m in linears), heads=heads or 1)
        return "transformer", shape
    if idx == n - 1 and linears:
        last = linears[-1]
        shape.update(hidden=last.in_features, vocab=last.out_features)
        return "head", shape
    return "other", shape


def spec_from_module(module: nn.Module, sample_input: Any, *, name: str = "module", dtype: str | None = None,
                     flash_attention: bool = True, loss_fn: Callable | None = None, target: Any = None) -> ModelSpec:
    """Trace ``module`` on the meta device with ``sample_input`` (a tensor or a tuple of positional inputs;
    dim 0 = batch) and return its ModelSpec (see the module docstring)."""
    if not isinstance(module, nn.Module):
        raise ConfigError("module", f"expected an nn.Module, got {type(module).__name__}")
    inputs = sample_input if isinstance(sample_input, tuple) else (sample_input,)
    first = _tensors(inputs)
    if not first or first[0].dim() == 0:
        raise ConfigError("sample_input", "needs at least one tensor with a batch dimension (dim 0)")
    batch = int(first[0].shape[0])
    seq = int(first[0].shape[1]) if first[0].dim() >= 2 else 0
    params = list(module.named_parameters())
    if dtype is None:
        dtype = _TORCH_TO_NAME.get(params[0][1].dtype, "fp32") if params else "fp32"
    if dtype not in DTYPE_BYTES:
        raise ConfigError("dtype", f"must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    layers = layer_modules(module)
    tr = _Tracker(len(layers))
    meta_state = {k: torch.empty_like(v, device="meta").requires_grad_(v.requires_grad)
                  for k, v in list(module.named_parameters()) + list(module.named_buffers())}
    tr.param_storages = {_storage_key(v) for v in meta_state.values()}
    handles = []
    for i, (_, mod) in enumerate(layers):
        def pre(_m, args, i=i):
            tr.current = i
            tr.act_in[i] += sum(_nbytes(t) for t in _tensors(args))

        def post(_m, args, out, i=i):
            outs = _tensors(out)
            tr.act_out[i] += sum(_nbytes(t) for t in outs)
            if outs:
                tr.out_shape[i] = tuple(outs[0].shape)
            tr.current = -1
        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))

    def pack(t: torch.Tensor):
        i = tr.current
        key = _storage_key(t)
        if i >= 0 and key not in tr.param_storages and key not in tr.seen[i]:
            tr.seen[i].add(key)
            tr.saved[i] += _nbytes(t)
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            modes = [_CostMode(tr)] + ([_FlashSDPA()] if flash_attention else [])
            with modes[0]:
                if flash_attention:
                    with modes[1]:
                        out = torch.func.functional_call(module, meta_state, _to_meta(inputs))
                else:
                    out = torch.func.functional_call(module, meta_state, _to_meta(inputs))
                if loss_fn is not None:
                    tr.current = len(layers) - 1
                    loss_fn(out, _to_meta(target))
                    tr.current = -1
    except (RuntimeError, NotImplementedError, TypeError) as e:
        raise ConfigError("module", f"could not trace the forward on the meta device: {e}") from None
    finally:
        for h in handles:
            h.remove()
    specs = []
    n = len(layers)
    scale = DTYPE_BYTES[dtype] / first_float_bytes(meta_state, default=DTYPE_BYTES[dtype])
    for i, (lname, mod) in enumerate(layers):
        kind, shape = _kind_and_shape(i, n, mod, tr.out_shape[i], seq)
        p = sum(x.numel() for x in mod.parameters())
        hidden = shape.get("hidden", 0)
        tp_bytes = float(2 * DTYPE_BYTES[dtype] * seq * hidden) if kind == "transformer" else 0.0
        specs.append(LayerSpec(name=lname, kind=kind, params=p, flops_fwd=tr.flops[i] / batch,
                               bytes_fwd=tr.bytes[i] * scale / batch, act_saved_bytes=tr.saved[i] * scale / batch,
                               act_in_bytes=tr.act_in[i] * scale / batch, act_out_bytes=tr.act_out[i] * scale / batch,
                               tp_comm_bytes=tp_bytes, shape=shape))
    return ModelSpec(name=name, layers=specs, seq_len=seq, dtype=dtype,
                     param_dtype=_TORCH_TO_NAME.get(params[0][1].dtype, "fp32") if params else "fp32")


def first_float_bytes(state: dict[str, torch.Tensor], *, default: int) -> int:
    """Element size of the model's first floating-point parameter (the dtype the traced bytes are in)."""
    for v in state.values():
        if v.is_floating_point():
            return v.element_size()
    return default
