"""ModelSpec presets: GPT-2 sizes, OPT-350M, GPT-Neo-2.7B, Llama-2/3 7B/8B/13B/70B, a 140B Llama-style model.

    python -c "from hetero.models.presets import PRESETS; print(sorted(PRESETS))"
"""

from __future__ import annotations

from typing import Any

from hetero.config import ConfigError

# name -> transformer shape (ModelSpec.transformer keyword arguments) and default seq_len.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-small": dict(num_layers=12, hidden=768, heads=12, vocab=50257, seq_len=1024, tied_embeddings=True),
    "gpt2-medium": dict(num_layers=24, hidden=1024, heads=16, vocab=50257, seq_len=1024, tied_embeddings=True),
    "gpt2-large": dict(num_layers=36, hidden=1280, heads=20, vocab=50257, seq_len=1024, tied_embeddings=True),
    "gpt2-xl": dict(num_layers=48, hidden=1600, heads=25, vocab=50257, seq_len=1024, tied_embeddings=True),
    "opt-350m": dict(num_layers=24, hidden=1024, heads=16, vocab=50272, seq_len=2048, tied_embeddings=True),
    "gpt-neo-2.7b": dict(num_layers=32, hidden=2560, heads=20, vocab=50257, seq_len=2048, tied_embeddings=True),
    "llama2-7b": dict(num_layers=32, hidden=4096, heads=32, ffn=11008, vocab=32000, seq_len=4096, gated_mlp=True),
    "llama2-13b": dict(num_layers=40, hidden=5120, heads=40, ffn=13824, vocab=32000, seq_len=4096, gated_mlp=True),
    "llama2-70b": dict(num_layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=32000, seq_len=4096,
                       gated_mlp=True),
    "llama3-8b": dict(num_layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=128256, seq_len=8192,
                      gated_mlp=True),
    "llama3-70b": dict(num_layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=128256, seq_len=8192,
                       gated_mlp=True),
    # A 140B Llama-style model: 70B's width, twice the depth (as used in heterogeneous-training papers).
    "llama-140b": dict(num_layers=160, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=32000, seq_len=4096,
                       gated_mlp=True),
}
ALIASES = {"llama-7b": "llama2-7b", "llama-13b": "llama2-13b", "llama-70b": "llama2-70b", "gpt2": "gpt2-small",
           "opt350m": "opt-350m", "opt-350": "opt-350m", "gpt-neo-2.7": "gpt-neo-2.7b", "llama3-70b-8k": "llama3-70b"}


def preset_names() -> list[str]:
    """All preset names and aliases."""
    from hetero.models import vla_spec

    return sorted(set(PRESETS) | set(ALIASES) | set(vla_spec.VLA_PRESETS))


def make_preset(name: str, *, seq_len: int | None = None, dtype: str | None = None):
    """Build the ModelSpec of preset ``name`` (optionally at another seq_len / dtype)."""
    from hetero.models import vla_spec
    from hetero.models.spec import ModelSpec

    key = ALIASES.get(name.lower(), name.lower())
    if key in vla_spec.VLA_PRESETS:
        return vla_spec.VLA_PRESETS[key](dtype=dtype or "bf16")
    if key not in PRESETS:
        import difflib

        close = difflib.get_close_matches(key, preset_names(), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError("model", f"unknown model preset {name!r}{hint} (presets: {', '.join(preset_names())})")
    kw = dict(PRESETS[key])
    if seq_len is not None:
        kw["seq_len"] = seq_len
    return ModelSpec.transformer(name=key, dtype=dtype or "bf16", **kw)
