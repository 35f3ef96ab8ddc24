"""Gantt chart of a predicted pipeline schedule: one row per stage, forward/backward blocks per micro-batch.

The blocks come from the predictor's schedule simulation (``predict_detailed(..., keep_blocks=True)``), so the
picture is exactly what the predicted step time assumes.

    hetero-plan --cluster examples/clusters/a100_v100.yaml --model llama2-13b --global-batch 256 --gantt plan.png
"""

from __future__ import annotations

from pathlib import Path

from hetero.autoparallel.plan import Plan
from hetero.predictor.pipeline import Simulation


def draw(plan: Plan, sim: Simulation, path: str | Path, *, title: str = "", max_labels: int = 16) -> Path:
    """Write a PNG of ``sim`` (one pipeline of ``plan``) to ``path``; returns the path.

    Forward blocks are blue, backward blocks orange (darker for later model chunks of interleaved 1F1B); each block
    is labelled with its micro-batch index when there are at most ``max_labels`` micro-batches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = plan.pp
    fig, ax = plt.subplots(figsize=(12, 0.6 * p + 1.6))
    fwd = ["#4c78a8", "#2d4f73"]
    bwd = ["#f58518", "#b35c0c"]
    label = plan.num_microbatches <= max_labels
    bars: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for b in sim.blocks:
        color = (fwd if b.kind == "F" else bwd)[b.chunk % 2]
        bars.setdefault((b.stage, color), []).append((b.start, b.end - b.start))
        if label and (b.end - b.start) > sim.makespan / 150:
            ax.text((b.start + b.end) / 2, p - 1 - b.stage, str(b.micro), ha="center", va="center", fontsize=6,
                    color="white")
    for (stage, color), spans in bars.items():
        y = p - 1 - stage
        ax.broken_barh(spans, (y - 0.4, 0.8), facecolors=color, edgecolor="white",
                       linewidth=0.3 if plan.num_microbatches <= 32 else 0.0)
    ax.set_yticks(range(p))
    ax.set_yticklabels([f"stage {i}: {s.device_type} tp{s.tp} L{s.layers[0]}-{s.layers[1] - 1}"
                        for i, s in reversed(list(enumerate(plan.stages)))], fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_xlim(0, sim.makespan * 1.01 if sim.makespan > 0 else 1)
    ax.set_title(title or f"{plan.model}: {plan.schedule}, {plan.num_microbatches} micro-batches, "
                 f"pipeline {sim.makespan:.3f} s, bubble {sim.bubble_fraction:.1%}", fontsize=10)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=fwd[0], label="forward"), Patch(color=bwd[0], label="backward")],
              loc="upper right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
