"""Continual-learning summaries of the score matrix R[t][j] (METHODS.md, "Evaluation").

R[t][j] is the score of concept j after step t (rows: steps 1..T, columns: concepts in
learning order; None where j > t, the concept is not learned yet).
"""
from __future__ import annotations

from statistics import mean

# attr_acc and pattern_acc only where an attribute classifier scored (the world preset)
SCORES = ("attr_acc", "pattern_acc", "clip_i", "clip_t")


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


def forgetting_by_length(R: list[list[float | None]]) -> list[float]:
    """F of the sequence cut after t concepts, for t = 2..T: how forgetting grows as the
    sequence gets longer (R[:t][:t] is exactly what a t-concept run would have measured)."""
    return [summarize([row[:t] for row in R[:t]])["F"] for t in range(2, len(R) + 1)]


def relevant_drift(base_metrics: dict, final_metrics: dict, key: str) -> dict | None:
    """Relevant-concept drift: class-prompt score under the base model minus under the final
    model ("a photo of a star" before and after learning my star); positive = forgotten.
    None when neither evaluation scored `key` on a common class prompt."""
    base, final = base_metrics["class_prompts"], final_metrics["class_prompts"]
    per_class = {word: base[word][key] - scores[key] for word, scores in final.items()
                 if key in scores and key in base.get(word, {})}
    if not per_class:
        return None
    return {"drift": mean(per_class.values()), "per_class": per_class}


def curve_rows(base_metrics: dict, step_metrics: list[dict], keys: list[str]) -> list[dict]:
    """Long-format rows (after_step, prompt, score...) of every concept and class prompt after
    every step, the base's class prompts as step 0: the per-concept curves of the DVC plots."""
    rows = []
    for metrics in [base_metrics, *step_metrics]:
        scored = [(name, v) for name, v in metrics["per_concept"].items()]
        scored += [(f"class: {word}", v) for word, v in metrics["class_prompts"].items()]
        for name, scores in scored:
            rows.append({"after_step": metrics["step"], "prompt": name,
                         **{k: scores.get(k) for k in keys}})
    return rows


def format_summary(score: str, summary: dict) -> str:
    """One line such as `clip_i: A=0.926  LA=0.928  F=0.002  BWT=-0.002` (n/a when undefined)."""
    figures = "  ".join(f"{k}={summary[k]:.3f}" if summary[k] is not None else f"{k}=n/a"
                        for k in ("A", "LA", "F", "BWT"))
    return f"{score}: {figures}"


def format_report(summary: dict) -> list[str]:
    """The lines a finished run prints: one per score, then relevant-concept drift."""
    lines = [format_summary(score, summary[score]) for score in SCORES if score in summary]
    drift = summary.get("drift") or {}
    if drift:
        lines.append("relevant-concept drift (class prompts, base - final): " + "  ".join(
            f"{key}={d['drift']:+.3f}" for key, d in drift.items()))
    if not summary["meaningful"]:
        lines.append("(random-weight evaluator: these scores are reproducible, not meaningful)")
    return lines
