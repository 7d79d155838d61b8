"""Pictures of a lifelong run: the score matrix R as a heatmap and per-concept curves.

PNG files (DVC shows images as plots, MLflow as artifacts), drawn with matplotlib's
non-interactive backend so they work on headless machines.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .cl_metrics import format_figure  # noqa: E402


def r_heatmaps(matrices: dict[str, tuple[list[str], list[list[float | None]]]], summary: dict,
               out: Path) -> Path:
    """One annotated heatmap per score: rows = after step t, columns = concept j; the title
    gives the score's A and F from `summary` (continual.json) with their intervals."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.8), squeeze=False)
    for ax, (score, (names, R)) in zip(axes[0], matrices.items()):
        values = [[float("nan") if v is None else v for v in row] for row in R]
        scores = [v for row in R for v in row if v is not None]
        low, top = min([0.0, *scores]), max(scores) if max(scores) > 0 else 1.0  # CLIP can be < 0
        image = ax.imshow(values, cmap="viridis", vmin=low, vmax=top)
        for t, row in enumerate(R):
            for j, v in enumerate(row):
                if v is not None:  # dark text on the bright half of viridis
                    ax.text(j, t, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if v > low + 0.6 * (top - low) else "white")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(R)), [f"after {t + 1}" for t in range(len(R))], fontsize=7)
        figures = summary[score]
        title = "  ".join(f"{k} {format_figure(figures[k], figures.get(f'{k}_ci'), '.2f')}" for k in ("A", "F"))
        ax.set_title(f"R[t][j]: {score}\n{title}", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.7)
    return _save(fig, out)


def curves(rows: list[dict], keys: list[str], out: Path) -> Path:
    """Score of each concept (solid) and class prompt (dashed) after every step."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.4), squeeze=False)
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    for ax, key in zip(axes[0], keys):
        for prompt in prompts:
            points = [(r["after_step"], r[key]) for r in rows if r["prompt"] == prompt and r[key] is not None]
            if points:
                style = "--" if prompt.startswith("class: ") else "-"
                ax.plot(*zip(*points), style, marker="o", markersize=3, label=prompt)
        ax.set_xlabel("after step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key, fontsize=9)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, out)


def forgetting_curves(by_method: dict[str, list[float]], score: str, out: Path) -> Path:
    """Forgetting F against sequence length (2..T concepts), one line per method."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for method, values in by_method.items():
        ax.plot(range(2, len(values) + 2), values, marker="o", markersize=3, label=method)
    ax.set_xlabel("concepts learned")
    ax.set_ylabel(f"forgetting F ({score})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, out)


def stability_plasticity(results: dict[str, dict], scores: list[str], out: Path) -> Path:
    """F against LA, one point per method with its interval as bars, one panel per score:
    the lower right corner (learns, keeps) is where a lifelong method should sit."""
    fig, axes = plt.subplots(1, len(scores), figsize=(4.6 * len(scores), 4.0), squeeze=False)
    for ax, score in zip(axes[0], scores):
        # one concept: nothing to forget yet, no point
        rows = {m: r for m, r in results.items() if None not in (r[f"{score}_LA"], r[f"{score}_F"])}
        points = [(r[f"{score}_LA"], r[f"{score}_F"]) for r in rows.values()]
        for (method, row), (la, f), dy in zip(rows.items(), points, _label_shifts(points)):
            ax.errorbar(la, f, xerr=_bar(la, row[f"{score}_LA_ci"]), yerr=_bar(f, row[f"{score}_F_ci"]),
                        fmt="o", markersize=4, capsize=2)
            ax.annotate(method, (la, f), textcoords="offset points", xytext=(4, 4 + dy), fontsize=7)
        ax.set_xlabel(f"LA ({score}): learnt right after its step")
        ax.set_ylabel(f"F ({score}): forgotten since")
        ax.axhline(0.0, color="grey", linewidth=0.5)
    return _save(fig, out)


def _label_shifts(points: list[tuple[float, float]], near: tuple[float, float] = (0.15, 0.045)) -> list[int]:
    """Vertical label offsets (points), placed greedily: each label at the first of 0, -9, +9,
    -18, ... points whose box is clear of the labels placed before it. A box is `near` of the
    data's span wide and high (a label is wide; 9 points are about 0.045 of a panel's height),
    so two methods on nearly the same spot (routed and independent) do not print their names
    over each other."""
    spans = [max(v) - min(v) or 1.0 for v in zip(*points)] if points else []
    placed, shifts = [], []
    for x, y in points:
        for k in (0, -1, 1, -2, 2, -3, 3):
            label_y = y + k * near[1] * spans[1]
            if all(abs(x - px) >= near[0] * spans[0] or abs(label_y - py) >= near[1] * spans[1]
                   for px, py in placed):
                break
        placed.append((x, label_y))
        shifts.append(9 * k)
    return shifts


def _bar(value: float, interval: list[float] | None):
    """errorbar's [[below], [above]] for an interval; None draws no bar."""
    return None if interval is None else [[value - interval[0]], [interval[1] - value]]


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
