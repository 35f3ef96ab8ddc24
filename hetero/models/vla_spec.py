"""ModelSpec of a pi0-like Vision-Language-Action policy: SigLIP vision tower, Gemma-2B backbone, Gemma-300M expert.

Shapes follow openpi's Pi0Config defaults (PaliGemma gemma_2b + action expert gemma_300m, action horizon 50,
max_token_len 48, three 224x224 camera images of 256 tokens each). The action expert attends to the prefix's
keys and values, so its attention FLOPs use the prefix + suffix length. One sample = one observation; the
denoising loop (N steps of the expert) is counted for inference via ``denoise_steps``.

    python -c "from hetero.models.spec import ModelSpec; print(ModelSpec.preset('pi0').summary())"
"""

from __future__ import annotations

import dataclasses

from hetero.models.spec import LayerSpec, ModelSpec


def pi0_spec(*, dtype: str = "bf16", images: int = 3, text_tokens: int = 48, action_horizon: int = 50,
             name: str = "pi0") -> ModelSpec:
    """pi0-like VLA: 27 SigLIP blocks, 18 Gemma-2B blocks over the prefix, 18 Gemma-300M expert blocks."""
    img_tokens = 256 * images
    prefix = img_tokens + text_tokens
    suffix = action_horizon + 1  # action tokens + state token
    vision = ModelSpec.transformer(name="siglip", num_layers=27, hidden=1152, heads=16, ffn=4304, vocab=1,
                                   seq_len=img_tokens, dtype=dtype)
    backbone = ModelSpec.transformer(name="gemma-2b", num_layers=18, hidden=2048, heads=8, kv_heads=1, ffn=16384,
                                     vocab=257152, seq_len=prefix, gated_mlp=True, dtype=dtype, tied_embeddings=True)
    expert = ModelSpec.transformer(name="gemma-300m", num_layers=18, hidden=1024, heads=8, kv_heads=1, ffn=4096,
                                   vocab=1, seq_len=suffix, gated_mlp=True, dtype=dtype)
    layers: list[LayerSpec] = []
    # patch embedding: a 14x14 conv from 3 channels to 1152 per token
    patch = 14 * 14 * 3 * 1152
    layers.append(LayerSpec(name="vision.patch_embed", kind="embedding", params=patch + 1152 * 256,
                            flops_fwd=2.0 * img_tokens * patch, act_saved_bytes=float(images * 224 * 224 * 3 * 2),
                            act_in_bytes=float(images * 224 * 224 * 3 * 2),
                            act_out_bytes=float(img_tokens * 1152 * 2), shape=vision.layers[1].shape))
    layers += [dataclasses.replace(layer, name=f"vision.{layer.name}") for layer in vision.layers[1:-1]]
    layers.append(dataclasses.replace(backbone.layers[0], name="backbone.embedding"))
    layers += [dataclasses.replace(layer, name=f"backbone.{layer.name}") for layer in backbone.layers[1:-1]]
    for layer in expert.layers[1:-1]:
        # attention over prefix + suffix keys: add the cross part 4 * suffix * prefix * h
        extra = 4.0 * suffix * prefix * 1024
        layers.append(dataclasses.replace(layer, name=f"expert.{layer.name}", flops_fwd=layer.flops_fwd + extra))
    h = 1024
    layers.append(LayerSpec(name="expert.action_out", kind="head", params=h * 32 + 32 * h * 2 + 2 * h * h,
                            flops_fwd=2.0 * suffix * (h * 32 + 32 * h * 2 + 2 * h * h), act_saved_bytes=float(suffix * h * 2),
                            act_in_bytes=float(suffix * h * 2), act_out_bytes=float(action_horizon * 32 * 4),
                            shape=expert.layers[1].shape))
    return ModelSpec(name=name, layers=layers, seq_len=prefix + suffix, dtype=dtype, param_dtype="fp32")


VLA_PRESETS = {"pi0": pi0_spec, "pi0-vla": pi0_spec}
