"""hetero: train models on clusters that mix accelerator types.

Describe or discover the cluster (``Cluster``), describe the model (``ModelSpec``), predict cost per device
(``hetero.predictor``), get a data/tensor/pipeline ``Plan`` with uneven splits, and run it with ``hetero-run``.
"""

from hetero.autoparallel.plan import Plan, Stage
from hetero.cluster.spec import Cluster, DeviceType
from hetero.config import ConfigError
from hetero.models.spec import ModelSpec

__version__ = "0.1.0"
__all__ = ["Cluster", "ConfigError", "DeviceType", "ModelSpec", "Plan", "Stage", "__version__", "init", "parallelize"]

# Imported on first use (they import torch): name -> module.
_LAZY = {"init": "hetero.runtime.mesh", "parallelize": "hetero.runtime.parallelize"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hetero' has no attribute {name!r}")
