"""ModelSpec: a model as a list of layers with FLOPs, parameters and activation sizes, for the predictor and planner.

Numbers are **per sample** (one sequence of ``seq_len`` tokens) at TP degree 1; the predictor scales them by the
micro-batch size and divides by TP. Built from presets (``ModelSpec.preset("llama2-70b", seq_len=4096)``), from a
transformer shape (``ModelSpec.transformer(...)``), from YAML, or by tracing a real ``nn.Module`` on the meta device
(``ModelSpec.from_module(model, sample_input)``).

    python -c "from hetero.models.spec import ModelSpec; print(ModelSpec.preset('gpt2-small').summary())"
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hetero.config import ConfigError, build, check, load_yaml, to_dict, under_file

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
LayerKind = Literal["embedding", "transformer", "head", "other"]


@dataclass(kw_only=True)
class LayerSpec:
    """Cost of one layer for one sample at TP degree 1."""

    name: str
    """Layer name (``block.3``)."""
    kind: LayerKind = "other"
    """Layer kind; transformer layers are TP-splittable Megatron-style."""
    params: int
    """Parameter count."""
    flops_fwd: float
    """Forward FLOPs per sample (backward is taken as 2x, recomputation adds 1x)."""
    bytes_fwd: float = 0.0
    """Device-memory bytes moved by the forward per sample beyond the weights (elementwise ops, softmax, norms)."""
    act_saved_bytes: float
    """Activation bytes kept for backward per sample, without recomputation."""
    act_in_bytes: float
    """Bytes of the layer's input per sample (what recomputation keeps)."""
    act_out_bytes: float
    """Bytes of the layer's output per sample (what a pipeline boundary sends)."""
    tp_comm_bytes: float = 0.0
    """Bytes all-reduced across the TP group per sample in the forward (same again in backward)."""
    shape: dict[str, int] = field(default_factory=dict)
    """Shape features for calibration: hidden, ffn, heads, seq, vocab."""

    def __post_init__(self):
        check(self.params >= 0, "params", "must be >= 0")
        check(self.flops_fwd >= 0, "flops_fwd", "must be >= 0")
        check(self.act_saved_bytes >= 0, "act_saved_bytes", "must be >= 0")


@dataclass(kw_only=True)
class ModelSpec:
    """A model for cost prediction: ordered layers plus the settings their numbers assume."""

    name: str
    """Model name."""
    layers: list[LayerSpec]
    """Layers in execution order."""
    seq_len: int = 0
    """Tokens per sample (0 if not a sequence model)."""
    dtype: str = "bf16"
    """Activation/compute dtype the byte counts assume."""
    param_dtype: str = "fp32"
    """Dtype of master weights (mixed precision keeps fp32 masters)."""

    def __post_init__(self):
        check(len(self.layers) > 0, "layers", "must list at least one layer")
        check(self.dtype in DTYPE_BYTES, "dtype", f"must be one of {', '.join(DTYPE_BYTES)}")
        check(self.param_dtype in DTYPE_BYTES, "param_dtype", f"must be one of {', '.join(DTYPE_BYTES)}")

    @property
    def num_layers(self) -> int:
        """Number of layers."""
        return len(self.layers)

    @property
    def params(self) -> int:
        """Total parameters."""
        return sum(layer.params for layer in self.layers)

    @property
    def flops_per_sample(self) -> float:
        """Training FLOPs per sample (forward + backward = 3x forward)."""
        return 3 * sum(layer.flops_fwd for layer in self.layers)

    def fingerprint(self) -> str:
        """Short stable hash (a Plan records it)."""
        return hashlib.sha256(json.dumps(to_dict(self), sort_keys=True).encode()).hexdigest()[:16]

    def summary(self) -> str:
        """One line: name, layers, parameters, GFLOPs per sample."""
        return (f"{self.name}: {self.num_layers} layers, {self.params / 1e6:.1f}M params, "
                f"{self.flops_per_sample / 1e9:.1f} GFLOP/sample (seq {self.seq_len}, {self.dtype})")

    # -- builders
    @classmethod
    def transformer(cls, *, name: str, num_layers: int, hidden: int, heads: int, ffn: int | None = None,
                    vocab: int = 50257, seq_len: int = 2048, kv_heads: int | None = None, gated_mlp: bool = False,
                    tied_embeddings: bool = False, dtype: str = "bf16", param_dtype: str = "fp32",
                    flash_attention: bool = True) -> ModelSpec:
        """A decoder-only transformer: embedding, ``num_layers`` blocks, final norm + LM head.

        Per block and sample (s = seq, h = hidden, f = ffn, b = dtype bytes): matmul params
        P = 2h^2 + 2h*h_kv + (3 if gated else 2)*h*f; forward FLOPs = 2*s*P + 4*s^2*h (QK^T and AV);
        saved activations follow Korthikanti et al. (2022) without dropout: b*s*h*(~16 + 2*f/h*(3 if gated else 2))
        plus the s^2 attention matrix (a*s^2*b) unless flash attention is used; Megatron TP all-reduces 2*s*h*b per
        forward."""
        ffn = ffn or 4 * hidden
        kv_heads = kv_heads or heads
        b = DTYPE_BYTES[dtype]
        s, h, f = seq_len, hidden, ffn
        h_kv = h * kv_heads // heads
        mlp_mats = 3 if gated_mlp else 2
        p_mat = 2 * h * h + 2 * h * h_kv + mlp_mats * h * f
        p_block = p_mat + 4 * h + (0 if gated_mlp else (2 * h + 2 * h_kv + f + h))  # norms (+ biases for GPT-style)
        # saved for backward: ln inputs (2 s h), qkv input & outputs (s h + s(h + 2 h_kv)), attn out (s h),
        # proj input (s h), mlp input (s h), mlp hidden activations (mlp_mats-1 or 2 tensors of s f), residuals
        saved = b * s * (8 * h + 2 * h_kv + (3 if gated_mlp else 2) * f)
        if not flash_attention:
            saved += b * heads * s * s * 2  # scores + softmax output
        else:
            saved += 4 * heads * s  # logsumexp per row, fp32
        blk = dict(hidden=h, ffn=f, heads=heads, seq=s, vocab=vocab)
        emb = LayerSpec(name="embedding", kind="embedding", params=vocab * h + (s * h if not gated_mlp else 0),
                        flops_fwd=0.0, bytes_fwd=float(b * s * h), act_saved_bytes=0.0,
                        act_in_bytes=float(8 * s), act_out_bytes=float(b * s * h), shape=blk)
        blocks = [LayerSpec(name=f"block.{i}", kind="transformer", params=p_block,
                            flops_fwd=float(2 * s * p_mat + 4 * s * s * h), bytes_fwd=float(b * s * (12 * h + 2 * f)),
                            act_saved_bytes=float(saved), act_in_bytes=float(b * s * h), act_out_bytes=float(b * s * h),
                            tp_comm_bytes=float(2 * b * s * h), shape=blk) for i in range(num_layers)]
        head = LayerSpec(name="head", kind="head", params=(0 if tied_embeddings else vocab * h) + 2 * h,
                         flops_fwd=float(2 * s * h * vocab), bytes_fwd=float(b * s * vocab * 2),
                         act_saved_bytes=float(b * s * h + 4 * s * vocab), act_in_bytes=float(b * s * h),
                         act_out_bytes=float(4 * s), tp_comm_bytes=0.0, shape=blk)
        return cls(name=name, layers=[emb, *blocks, head], seq_len=seq_len, dtype=dtype, param_dtype=param_dtype)

    @classmethod
    def preset(cls, name: str, *, seq_len: int | None = None, dtype: str | None = None) -> ModelSpec:
        """A named preset (see ``hetero.models.presets.PRESETS``); unknown names list the valid ones."""
        from hetero.models.presets import make_preset

        return make_preset(name, seq_len=seq_len, dtype=dtype)

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        """A ModelSpec from a mapping: either ``{preset: name, seq_len: ...}``, a transformer shape
        ``{transformer: {num_layers: .., hidden: .., ...}, name: ..}``, or explicit ``{name, layers: [...]}``."""
        if isinstance(data, dict) and "preset" in data:
            extra = set(data) - {"preset", "seq_len", "dtype"}
            check(not extra, sorted(extra)[0] if extra else "", "unknown key (allowed with preset: preset, seq_len, dtype)")
            return cls.preset(data["preset"], seq_len=data.get("seq_len"), dtype=data.get("dtype"))
        if isinstance(data, dict) and "transformer" in data:
            extra = set(data) - {"transformer", "name"}
            check(not extra, sorted(extra)[0] if extra else "", "unknown key (allowed: transformer, name)")
            t = data["transformer"]
            check(isinstance(t, dict), "transformer", "expected a mapping")
            try:
                return cls.transformer(name=data.get("name", "custom-transformer"), **t)
            except TypeError as e:
                raise ConfigError("transformer", str(e)) from None
        return build(cls, data)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelSpec:
        """Read a model YAML (any form accepted by ``from_dict``)."""
        try:
            return cls.from_dict(load_yaml(path))
        except ConfigError as e:
            raise under_file(path, e) from None

    @classmethod
    def load(cls, name_or_path: str, *, seq_len: int | None = None) -> ModelSpec:
        """A preset name or a model YAML path."""
        if name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).is_file():
            spec = cls.from_file(name_or_path)
            return spec if seq_len is None or seq_len == spec.seq_len else cls.preset(spec.name, seq_len=seq_len)
        return cls.preset(name_or_path, seq_len=seq_len)

    @classmethod
    def from_module(cls, module, sample_input, *, name: str = "module", dtype: str | None = None) -> ModelSpec:
        """Trace ``module`` on the meta device (see ``hetero.models.trace``): one LayerSpec per top-level child."""
        from hetero.models.trace import spec_from_module

        return spec_from_module(module, sample_input, name=name, dtype=dtype)
