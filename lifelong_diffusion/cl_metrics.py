"""Continual-learning summaries of the score matrix R[t][j] (docs/methods.md#metrics).

R[t][j] is the score of concept j after step t (rows: steps 1..T, columns: concepts in
learning order; None where j > t, the concept is not learned yet).

Each score is a mean over the evaluation seeds; `bootstrap_intervals` says how far A, F,
BWT, LA and drift would move with other seeds (95% percentile bootstrap over seeds).
"""
from __future__ import annotations

from statistics import mean

import numpy as np

# attr_acc and pattern_acc only where an attribute classifier scored (the world preset)
SCORES = ("attr_acc", "pattern_acc", "clip_i", "clip_t", "dino")  # dino: only when configured
FIGURES = ("A", "LA", "F", "BWT")
GROUPS = ("per_concept", "class_prompts")  # where a metrics.json keeps scores, by prompt
SAMPLES = "samples"  # a prompt's per-seed values of its scores, in seed order
RESAMPLES, BOOTSTRAP_SEED = 1000, 0


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


def point_figures(base_metrics: dict, step_metrics: list[dict], keys: list[str]) -> dict:
    """A, LA, F, BWT of R per score in `keys` and the drift of every score, as plain numbers:
    what one bootstrap draw recomputes."""
    figures = {key: summarize(score_matrix(step_metrics, key)[1]) for key in keys}
    figures["drift"] = {key: d["drift"] for key in SCORES
                        if (d := relevant_drift(base_metrics, step_metrics[-1], key)) is not None}
    return figures


def bootstrap_intervals(base_metrics: dict, step_metrics: list[dict], keys: list[str],
                        resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict | None:
    """95% bootstrap intervals over the evaluation seeds: {score: {"A": [lo, hi], ...},
    "drift": {score: [lo, hi]}}, [lo, hi] None where the figure is undefined (F, BWT after
    one step).
    None when the evaluations carry no per-seed values (metrics.json from before they were
    kept)."""
    draws = resampled_metrics([base_metrics, *step_metrics], resamples, seed)
    if draws is None:
        return None
    figures = [point_figures(base, steps, keys) for base, *steps in draws]
    intervals = {key: {k: percentile_interval([f[key][k] for f in figures]) for k in FIGURES}
                 for key in keys}
    intervals["drift"] = {key: percentile_interval([f["drift"][key] for f in figures])
                          for key in figures[0]["drift"]}
    return intervals


def resampled_metrics(metrics_list: list[dict], resamples: int, seed: int) -> list[list[dict]] | None:
    """`resamples` bootstrap copies of these evaluations, each score replaced by its mean over
    one resample of the seed indices. One resample serves every prompt and evaluation of a
    copy: all steps use the same seeds, and keeping that pairing is what makes differences
    between steps (F, BWT, drift) meaningful. None unless every score has per-seed values,
    as many for every score (else there is no pairing)."""
    scored = [scores for m in metrics_list for group in GROUPS for scores in m[group].values()]
    if not scored or not all(set(s.get(SAMPLES, ())) == set(s) - {SAMPLES} for s in scored):
        return None
    lengths = {len(values) for s in scored for values in s[SAMPLES].values()}
    if len(lengths) != 1:
        return None
    n = lengths.pop()
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    # every score's mean in every resample at once: arrays of shape (resamples,)
    stacked = [_map_scores(m, lambda s: {k: np.asarray(v, float)[idx].mean(axis=1)
                                         for k, v in s[SAMPLES].items()}) for m in metrics_list]
    return [[_map_scores(m, lambda s: {k: float(v[b]) for k, v in s.items()}) for m in stacked]
            for b in range(resamples)]


def _map_scores(metrics: dict, f) -> dict:
    """A copy of a metrics.json with f applied to the scores of every prompt."""
    return {**metrics, **{group: {name: f(scores) for name, scores in metrics[group].items()}
                          for group in GROUPS}}


def percentile_interval(values: list[float | None]) -> list[float] | None:
    """[2.5th, 97.5th] percentile of the draws; None for an undefined figure."""
    if any(v is None for v in values):
        return None
    return [float(q) for q in np.percentile(values, [2.5, 97.5])]


def sequence_figures(base_metrics: dict, step_metrics: list[dict]) -> dict:
    """Per score scored at every step: R (and its concepts) with A, LA, F, BWT and their 95%
    intervals (`A_ci`, ...); and `drift` per score with `drift_ci`. What continual.json holds,
    and what a registered version's page shows for the steps so far."""
    keys = [k for k in SCORES if all(k in v for m in step_metrics for v in m["per_concept"].values())]
    intervals = bootstrap_intervals(base_metrics, step_metrics, keys) or {}
    figures = {}
    for key in keys:
        names, R = score_matrix(step_metrics, key)
        ci = intervals.get(key, {})
        figures[key] = {**summarize(R), **{f"{k}_ci": ci.get(k) for k in FIGURES},
                        "concepts": names, "R": R}
    figures["drift"] = {key: {**d, "drift_ci": intervals.get("drift", {}).get(key)} for key in SCORES
                        if (d := relevant_drift(base_metrics, step_metrics[-1], key)) is not None}
    return figures


def mean_interval(values: list[float] | None, resamples: int = RESAMPLES,
                  seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """95% bootstrap interval of the mean of one prompt's per-seed values; None without them."""
    if not values:
        return None
    arr = np.asarray(values, float)
    idx = np.random.default_rng(seed).integers(0, len(arr), size=(resamples, len(arr)))
    return percentile_interval(arr[idx].mean(axis=1).tolist())


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


def format_figure(value: float | None, interval: list[float] | None = None, spec: str = ".3f") -> str:
    """`0.310 [0.250, 0.370]`: a figure with its interval where there is one; n/a when undefined."""
    if value is None:
        return "n/a"
    text = format(value, spec)
    return f"{text} [{format(interval[0], spec)}, {format(interval[1], spec)}]" if interval else text


def format_summary(score: str, summary: dict) -> str:
    """One line such as `clip_i: A=0.926 [0.911, 0.940]  LA=0.928 [...]  F=0.002 [...]  BWT=...`
    (the 95% bootstrap interval where continual.json has one; n/a when undefined)."""
    figures = "  ".join(f"{k}={format_figure(summary[k], summary.get(f'{k}_ci'))}" for k in FIGURES)
    return f"{score}: {figures}"


def format_report(summary: dict) -> list[str]:
    """The lines a finished run prints: one per score, then relevant-concept drift."""
    lines = [format_summary(score, summary[score]) for score in SCORES if score in summary]
    drift = summary.get("drift") or {}
    if drift:
        lines.append("relevant-concept drift (class prompts, base - final): " + "  ".join(
            f"{key}={format_figure(d['drift'], d.get('drift_ci'), '+.3f')}" for key, d in drift.items()))
    if not summary["meaningful"]:
        lines.append("(random-weight evaluator: these scores are reproducible, not meaningful)")
    return lines
