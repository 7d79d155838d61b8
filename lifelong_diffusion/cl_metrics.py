"""Continual-learning summaries of the score matrix R[t][j] (METHODS.md, "Evaluation").

R[t][j] is the score of concept j after step t (rows: steps 1..T, columns: concepts in
learning order; None where j > t, the concept is not learned yet).
"""
from __future__ import annotations

from statistics import mean


def score_matrix(step_metrics: list[dict], key: str) -> tuple[list[str], list[list[float | None]]]:
    """Build R from the metrics.json of each step (in step order) for one score, e.g. clip_i."""
    names = [m["concept"] for m in step_metrics]
    rows = [[m["per_concept"].get(name, {}).get(key) for name in names] for m in step_metrics]
    return names, rows


def summarize(R: list[list[float | None]]) -> dict[str, float | None]:
    """A (final average), F (Chaudhry forgetting), BWT (backward transfer), LA (plasticity).

    F and BWT need at least two steps; with one step they are None, not a misleading 0.
    """
    T = len(R)
    final = R[-1]
    summary = {"A": mean(final), "LA": mean(R[j][j] for j in range(T)), "F": None,
               "BWT": None}
    if T > 1:
        summary["F"] = mean(max(R[t][j] for t in range(j, T - 1)) - final[j] for j in range(T - 1))
        summary["BWT"] = mean(final[j] - R[j][j] for j in range(T - 1))
    return summary


def format_summary(score: str, summary: dict) -> str:
    """One line such as `clip_i: A=0.926  LA=0.928  F=0.002  BWT=-0.002` (n/a when undefined)."""
    figures = "  ".join(f"{k}={summary[k]:.3f}" if summary[k] is not None else f"{k}=n/a"
                        for k in ("A", "LA", "F", "BWT"))
    return f"{score}: {figures}"
