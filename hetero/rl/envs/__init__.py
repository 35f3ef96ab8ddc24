"""Vectorised chunk-stepping environments for hetero.rl: the interface and workers (base.py), Meta-World
(metaworld.py), LIBERO (libero.py) and ManiSkill3 (maniskill.py).

    from hetero.rl.envs import make_vec_env
    env = make_vec_env(cfg.env)      # the benchmark follows the config's type (MetaWorld/Libero/ManiSkillConfig)
"""

from __future__ import annotations


def make_vec_env(cfg, *, start_method: str = "forkserver"):
    """The :class:`~hetero.rl.envs.base.ChunkVecEnv` of whichever benchmark ``cfg`` configures."""
    from hetero.rl.envs import libero, maniskill, metaworld

    if isinstance(cfg, libero.LiberoConfig):
        return libero.make_vec_env(cfg, start_method=start_method)
    if isinstance(cfg, maniskill.ManiSkillConfig):
        return maniskill.make_vec_env(cfg, start_method=start_method)
    if isinstance(cfg, metaworld.MetaWorldConfig):
        return metaworld.make_vec_env(cfg, start_method=start_method)
    raise TypeError(f"no environment for a {type(cfg).__name__}: expected MetaWorldConfig, LiberoConfig or "
                    f"ManiSkillConfig")
