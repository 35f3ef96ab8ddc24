"""ModelSpec.from_module: meta-device tracing against a hand-counted MLP and the reference GPT's formulas.

    python -m pytest -q tests/test_trace.py
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hetero.config import ConfigError
from hetero.models.spec import ModelSpec
from hetero.models.trace import spec_from_module


def test_hand_counted_mlp():
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    spec = ModelSpec.from_module(net, torch.randn(2, 8), name="mlp")
    l0, relu, l2 = spec.layers
    # per sample: Linear(8, 16) = 2*8*16 FLOPs, saves its input (8 floats); weights are not activations
    assert (l0.params, l0.flops_fwd, l0.act_saved_bytes) == (8 * 16 + 16, 2 * 8 * 16, 8 * 4)
    assert (l0.act_in_bytes, l0.act_out_bytes) == (8 * 4, 16 * 4)
    # ReLU: no FLOPs counted, saves its output (16 floats), reads and writes 16 floats
    assert (relu.params, relu.flops_fwd, relu.act_saved_bytes, relu.bytes_fwd) == (0, 0, 16 * 4, 2 * 16 * 4)
    assert (l2.params, l2.flops_fwd, l2.act_saved_bytes) == (16 * 4 + 4, 2 * 16 * 4, 16 * 4)
    assert spec.dtype == "fp32" and spec.params == sum(p.numel() for p in net.parameters())
    # the real module was not moved to meta
    assert next(net.parameters()).device.type == "cpu"


def test_reference_gpt_matches_transformer_formula():
    from hetero.models.gpt import GPT, GPTConfig, lm_loss

    c = GPTConfig(vocab=512, hidden=64, heads=4, num_layers=2, seq_len=32)
    with torch.device("meta"):
        net = GPT(c)
    tok = torch.zeros(3, 32, dtype=torch.long)
    traced = spec_from_module(net, tok, name="gpt", loss_fn=lm_loss, target=tok)
    formula = c.spec(dtype="fp32")
    assert [layer.kind for layer in traced.layers] == ["embedding", "transformer", "transformer", "head"]
    for t, f in zip(traced.layers, formula.layers):
        assert t.params == f.params
        assert t.flops_fwd == pytest.approx(f.flops_fwd)
    blk = traced.layers[1]
    assert blk.shape == {"seq": 32, "hidden": 64, "ffn": 256, "heads": 4, "vocab": 0} or \
        {k: blk.shape[k] for k in ("seq", "hidden", "ffn", "heads")} == {"seq": 32, "hidden": 64, "ffn": 256, "heads": 4}
    # flash attention keeps no s x s scores: saved bytes stay within 20% of the Korthikanti count
    assert blk.act_saved_bytes == pytest.approx(formula.layers[1].act_saved_bytes, rel=0.2)
    # the loss's log-softmax (s x vocab floats per sample) is saved by the head
    assert traced.layers[-1].act_saved_bytes >= 32 * 512 * 4


def test_saved_bytes_match_real_autograd():
    """The meta trace's saved bytes equal what autograd saves on real tensors."""
    net = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 8))
    x = torch.randn(4, 32)
    spec = spec_from_module(net, x, name="m")
    seen, total = set(), 0
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in params and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x.requires_grad_(False))
    assert sum(layer.act_saved_bytes for layer in spec.layers) * 4 == pytest.approx(total, rel=0.05)


def test_bad_input():
    with pytest.raises(ConfigError, match="module"):
        spec_from_module("not a module", torch.zeros(1))
    with pytest.raises(ConfigError, match="sample_input"):
        spec_from_module(nn.Linear(2, 2), torch.tensor(1.0))
    with pytest.raises(ConfigError, match="trace"):
        spec_from_module(nn.Linear(2, 2), torch.zeros(3, 5))
