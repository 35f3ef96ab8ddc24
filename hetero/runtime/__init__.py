"""The runtime: ``hetero.init(plan)`` (process groups, DeviceMesh per stage), ``hetero.parallelize(model, rt)``
(uneven PP, speed-proportional TP, recomputation, weighted DP), checkpoints, hooks and the ``hetero-run`` launcher.

    rt = hetero.init(plan); pm = hetero.parallelize(model, rt, loss_fn=lm_loss)
"""

from hetero.runtime.mesh import Runtime, init
from hetero.runtime.parallelize import ParallelModel, parallelize

__all__ = ["ParallelModel", "Runtime", "init", "parallelize"]
