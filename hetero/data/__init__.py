"""``hetero.data``: give each DP replica its share of a batch (``shard``), synthetic tokens; package data
(accelerators.yaml, the device catalog) also lives in this folder.

    x, y = hetero.data.shard(batch, plan)   # rows of this rank's DP replica (HETERO_DP_INDEX)
"""

from hetero.runtime.data import SyntheticTokens, shard, share_range

__all__ = ["SyntheticTokens", "share_range", "shard"]
