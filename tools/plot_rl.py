"""Draw success-rate (and return) curves of hetero RL runs from their metrics.jsonl logs into one PNG.

    python tools/plot_rl.py runs/rl_mt10/flow_sde runs/rl_mt10/flow_noise -o docs/img/rl_mt10.png [--label A --label B]

Each run directory (or metrics.jsonl path) gives two curves: held-out evaluation success (markers, from the
``eval_success_rate`` lines) and the rollout success of the stochastic policy (thin line). With ``--window K`` it
also prints, per run, every held-out evaluation (success, then per task) and the rollout success over each K
iterations (episode-weighted, then per task). The last line printed is one JSON object with the final evaluation
of every run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(path: str) -> list[dict]:
    """Records of one run's metrics.jsonl (a directory or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise SystemExit(f"error: {p} not found (expected a run directory with metrics.jsonl)")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def window_means(train_recs: list[dict], k: int) -> list[dict]:
    """Rollout success over consecutive ``k``-iteration windows: episode-weighted overall, mean per task."""
    out = []
    for lo in range(0, len(train_recs), k):
        win = train_recs[lo:lo + k]
        eps = sum(r["episodes"] for r in win)
        tasks: dict[str, list[float]] = {}
        for r in win:
            for t, v in (r.get("per_task") or {}).items():
                if v is not None:
                    tasks.setdefault(t, []).append(v)
        out.append({"iterations": (win[0]["iteration"], win[-1]["iteration"]),
                    "success": sum(r["success_rate"] * r["episodes"] for r in win) / max(eps, 1),
                    "per_task": {t: sum(v) / len(v) for t, v in sorted(tasks.items())}})
    return out


def print_tables(label: str, ev: list[dict], tr: list[dict], k: int) -> None:
    """The ``--window`` text: held-out evaluations, then rollout success per window."""
    def tasks(d):
        return " ".join(f"{v:.2f}" for _, v in sorted(d.items()))
    print(f"== {label}: held-out evaluations (success | per task, sorted by name)")
    for r in ev:
        print(f"  it {r['iteration']:5d}  {r['eval_success_rate']:.3f} | {tasks(r.get('eval_per_task') or {})}")
    print(f"== {label}: rollout success per {k} iterations")
    for w in window_means(tr, k):
        print(f"  it {w['iterations'][0]:5d}-{w['iterations'][1]:<5d} {w['success']:.3f} | {tasks(w['per_task'])}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories (train.out_dir) or metrics.jsonl files")
    ap.add_argument("-o", "--output", default="rl_curves.png", help="PNG to write")
    ap.add_argument("--label", action="append", default=[], help="legend label per run (default: the path)")
    ap.add_argument("--title", default="hetero RL: success rate", help="figure title")
    ap.add_argument("--window", type=int, default=0, metavar="K",
                    help="also print the evaluations and K-iteration rollout means of each run")
    args = ap.parse_args(argv)
    if args.window < 0:
        ap.error(f"--window must be >= 0, got {args.window}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_r) = plt.subplots(1, 2, figsize=(11, 4))
    summary = {}
    for i, run in enumerate(args.runs):
        recs = load(run)
        label = args.label[i] if i < len(args.label) else run
        ev = [r for r in recs if "eval_success_rate" in r]
        tr = [r for r in recs if r.get("success_rate") is not None]
        line = None
        if ev:
            (line,) = ax_s.plot([r["iteration"] for r in ev], [100 * r["eval_success_rate"] for r in ev], "o-",
                                label=f"{label} (eval, held-out)")
            ax_r.plot([r["iteration"] for r in ev], [r["eval_return"] for r in ev], "o-", label=label,
                      color=line.get_color())
        if tr:
            ax_s.plot([r["iteration"] for r in tr], [100 * r["success_rate"] for r in tr], "-", alpha=0.35, lw=1,
                      color=line.get_color() if line else None, label=f"{label} (rollouts)")
        if args.window:
            print_tables(label, ev, tr, args.window)
        summary[label] = {"first_eval": ev[0]["eval_success_rate"] if ev else None,
                          "last_eval": ev[-1]["eval_success_rate"] if ev else None,
                          "last_iteration": max((r["iteration"] for r in recs), default=0)}
    ax_s.set_xlabel("RL iteration")
    ax_s.set_ylabel("success rate (%)")
    ax_s.set_ylim(0, 100)
    ax_s.grid(alpha=0.3)
    ax_s.legend(fontsize=7)
    ax_r.set_xlabel("RL iteration")
    ax_r.set_ylabel("eval return")
    ax_r.grid(alpha=0.3)
    fig.suptitle(args.title)
    fig.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(json.dumps({"output": args.output, "runs": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
