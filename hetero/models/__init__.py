"""Model descriptions (ModelSpec, presets) and reference models (transformer LM, flow-matching VLA policy)."""

from hetero.models.spec import LayerSpec, ModelSpec

__all__ = ["LayerSpec", "ModelSpec"]
