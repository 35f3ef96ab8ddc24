"""Auto-parallel planning: the Plan schema and (later) the search that writes it."""

from hetero.autoparallel.plan import Plan, Prediction, Stage

__all__ = ["Plan", "Prediction", "Stage"]
