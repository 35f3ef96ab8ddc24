"""CommError: the one exception the communicator raises for a failed, timed-out or mismatched operation.

It subclasses ``torch.distributed.DistError`` (a RuntimeError), so ``except RuntimeError`` catches it too, and it
names the operation, the group and the ranks that were waited for:

    try:
        dist.all_reduce(t)
    except CommError as e:
        print(e.op, e.group, e.ranks)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.distributed as dist


class CommError(dist.DistError):
    """A communicator operation failed; ``op``, ``group`` and ``ranks`` (ranks waited for) say which."""

    def __init__(self, *, op: str, group: str, ranks: Sequence[int], message: str):
        self.op = op
        self.group = group
        self.ranks = tuple(ranks)
        self.message = message
        super().__init__(f"{op} on group {group!r} (waiting for ranks {list(self.ranks)}): {message}")

    def __reduce__(self):
        return (_rebuild, (self.op, self.group, self.ranks, self.message))


def _rebuild(op, group, ranks, message):
    return CommError(op=op, group=group, ranks=ranks, message=message)
