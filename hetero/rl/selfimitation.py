"""Self-imitation: the chunks of recent successful rollout episodes, per task, for a flow-matching anchor.

The behaviour-cloning anchor (``algo.bc_coef``) holds the policy on the few-shot demonstrations, so it cannot hold
what RL learned beyond them (Meta-World drawer-open with the drawer on the left, which no demo shows: docs/results.md,
RL, nineteenth session). With ``algo.sil_coef > 0`` the trainer also keeps, for each task, the (observation,
executed action chunk) rows of its last ``algo.sil_episodes`` successful rollout episodes, and adds ``sil_coef`` x
the flow-matching loss on ``algo.bc_batch_size`` of them to every minibatch: self-imitation learning (Oh et al.,
2018) in its filtered-behaviour-cloning form. Episodes of a crashed env worker never enter.

Tests: ``python -m pytest -q tests/test_rl_selfimitation.py``.
"""

from __future__ import annotations

from collections import deque

import torch


class SuccessBuffer:
    """Rows of the last ``per_task`` successful episodes of each task (tasks told apart by instruction).

    Call :meth:`add` once per chunk step of the rollout, in order, with the observation the chunk was sampled
    from and the chunk the envs executed; rows of an episode wait per env until it ends and are kept only if it
    ended in success. :meth:`dataset` gives the kept rows in :func:`hetero.rl.sft.make_dataset`'s format."""

    def __init__(self, *, num_envs: int, per_task: int):
        if per_task < 1:
            raise ValueError(f"per_task must be >= 1, got {per_task}")
        self.per_task = per_task
        self.pending: list[list[dict]] = [[] for _ in range(num_envs)]  # rows of each env's running episode
        self.episodes: dict[str, deque[dict]] = {}  # instruction -> its last successful episodes (stacked rows)

    def add(self, obs: dict, actions: torch.Tensor, *, done, success, discarded) -> int:
        """One chunk step: ``obs`` (state ``[N, S]``, instruction list, images ``[N, C, 3, h, w]`` where given) as
        sampled from, ``actions [N, H, A]`` as executed, and the step's ``done``, ``success`` and ``discarded``
        ``[N]`` (:class:`hetero.rl.envs.base.ChunkResult`). Returns the number of successful episodes it kept."""
        n = len(self.pending)
        if actions.shape[0] != n or obs["state"].shape[0] != n:
            raise ValueError(f"expected {n} envs, got actions {tuple(actions.shape)}, state {tuple(obs['state'].shape)}")
        kept = 0
        for i in range(n):
            row = {"state": obs["state"][i].cpu(), "actions": actions[i].cpu(), "instruction": obs["instruction"][i]}
            if "images" in obs:
                row["images"] = obs["images"][i].cpu()
            self.pending[i].append(row)
            if bool(done[i]):
                if bool(success[i]) and not bool(discarded[i]):
                    ep = _stack(self.pending[i])
                    self.episodes.setdefault(ep["instruction"], deque(maxlen=self.per_task)).append(ep)
                    kept += 1
                self.pending[i] = []
        return kept

    def drop_running(self) -> None:
        """Forget the episodes still running (call when the envs are reset)."""
        self.pending = [[] for _ in self.pending]

    def dataset(self) -> dict | None:
        """The kept rows: state ``[M, S]``, actions ``[M, H, A]``, instruction [M], images where given; None when
        no episode has succeeded yet."""
        eps = [ep for task in self.episodes.values() for ep in task]
        if not eps:
            return None
        out = {k: torch.cat([ep[k] for ep in eps]) for k in eps[0] if k != "instruction"}
        out["instruction"] = [ep["instruction"] for ep in eps for _ in range(ep["state"].shape[0])]
        return out

    def counts(self) -> dict[str, int]:
        """Kept episodes per instruction."""
        return {k: len(v) for k, v in self.episodes.items()}

    def state_dict(self) -> dict:
        """The kept episodes (not the running ones: a resumed run resets its envs), for a checkpoint."""
        return {"per_task": self.per_task, "episodes": {k: list(v) for k, v in self.episodes.items()}}

    def load_state_dict(self, sd: dict) -> None:
        """Restore :meth:`state_dict`'s episodes (the newest ``per_task`` of each task where that shrank)."""
        self.episodes = {k: deque(v, maxlen=self.per_task) for k, v in sd["episodes"].items()}


def _stack(rows: list[dict]) -> dict:
    """One episode's rows -> state ``[L, S]``, actions ``[L, H, A]``, images where given, and its instruction."""
    ep = {k: torch.stack([r[k] for r in rows]) for k in rows[0] if k != "instruction"}
    ep["instruction"] = rows[0]["instruction"]
    return ep
