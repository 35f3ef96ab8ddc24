"""Vectorised chunk-stepping environments for hetero.rl: the interface and workers (base.py), Meta-World
(metaworld.py), LIBERO (libero.py) and ManiSkill3 (maniskill.py).

    from hetero.rl.envs import make_vec_env
    env = make_vec_env(cfg.env)      # the benchmark follows the config's type (MetaWorld/Libero/ManiSkillConfig)
"""

from __future__ import annotations

from collections.abc import Mapping


def _benchmark(cfg):
    """(module, EnvSlice subclass) of the benchmark whose config ``cfg`` is."""
    from hetero.rl.envs import libero, maniskill, metaworld

    table = {libero.LiberoConfig: (libero, libero.LiberoSlice),
             maniskill.ManiSkillConfig: (maniskill, maniskill.ManiSkillSlice),
             metaworld.MetaWorldConfig: (metaworld, metaworld.MetaWorldSlice)}
    if type(cfg) not in table:
        raise TypeError(f"no environment for a {type(cfg).__name__}: expected MetaWorldConfig, LiberoConfig or "
                        f"ManiSkillConfig")
    return table[type(cfg)]


def make_vec_env(cfg, *, start_method: str = "forkserver"):
    """The :class:`~hetero.rl.envs.base.ChunkVecEnv` of whichever benchmark ``cfg`` configures."""
    return _benchmark(cfg)[0].make_vec_env(cfg, start_method=start_method)


def collect_demos(cfg, *, per_task: int | Mapping[str, int], seed: int = 0) -> list[dict]:
    """Scripted demonstrations of the benchmark ``cfg`` configures (Meta-World's expert policies, ManiSkill's motion
    planner), ``per_task`` successful episodes per task (a count, or one count per task name); ConfigError for a
    benchmark with none offline (LIBERO)."""
    module = _benchmark(cfg)[0]
    if not hasattr(module, "collect_demos"):
        from hetero.config import ConfigError

        raise ConfigError("benchmark", f"{module.__name__.rsplit('.', 1)[-1]} has no demonstrations offline")
    return module.collect_demos(cfg, per_task=per_task, seed=seed)


def slice_class(cfg) -> type:
    """The :class:`~hetero.rl.envs.base.EnvSlice` subclass of the benchmark ``cfg`` configures."""
    return _benchmark(cfg)[1]
