"""Compare continual-learning methods on one lifelong sequence, with the project's own code.

    python -m benchmarks.methods                      # all methods, default 5-concept sequence
    python -m benchmarks.methods --long --methods naive,ewc_dc,lfs   # the 10-concept sequence
    python -m benchmarks.methods --seed 3 --concepts ringed-circle,checked-square --report /tmp/r
    python -m benchmarks.methods --orders 3          # each method on 3 concept orders

Each method learns the same concepts in the same order from the same base (params.yaml's
base, train and evaluate sections, with `train.method` replaced), is evaluated after every
step, and gets the continual report (A, F, BWT, LA, drift). Concept photos are rendered from
the world with `--seed` (the shipped data/concepts are seed 0). With `--orders K` every method
runs K sequences: order 0 is the given one with photo seed --seed, order k a permutation of
the same concepts drawn with random.Random(k), photos rendered with seed --seed + k. Each
figure is the mean over the orders, with an interval: min and max over the orders (K > 1), or
with one order the 95% bootstrap interval over the evaluation seeds. With `--runs DIR` each
(method, order) run's figures and R heatmap are kept in DIR under a key of everything they come
from (the library's code, the world's models, params.yaml, the order and its photo seed), and a
run whose key is stored is read back instead of run again: a table of hours can be built over
several sittings, and any change to the code or params runs it afresh. Prints a table, writes a
markdown report with one R heatmap per method (order 0), a plot of forgetting against
sequence length, and whether each method's F and LA differ from naive's and independent's
beyond the intervals, and ends with one JSON line:
{"<method>": {"attr_acc_A": .., "attr_acc_F": .., ..., "s_per_step": .., "cost_vs_naive": ..,
              "bytes_per_concept": .., "fisher_seconds": .., "F_by_length_clip_i": [..], ..,
              "attr_acc_F_ci": [lo, hi], "attr_acc_F_by_order": [..], "drift_clip_t_ci": [lo, hi], ..,
              "differs_from": {"naive": {"F": ["clip_i", ..], "LA": [..]}, "independent": {..}}}}
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import mean

import torch

from lifelong_diffusion.cl_metrics import RESAMPLES, SCORES, forgetting_by_length, format_figure
from lifelong_diffusion.continual import HEATMAP, continual_report
from lifelong_diffusion.evaluate import evaluate_snapshot
from lifelong_diffusion.fileio import sha256_file
from lifelong_diffusion.ingest import ingest_concept
from lifelong_diffusion.methods import METHODS
from lifelong_diffusion.plots import forgetting_curves, stability_plasticity
from lifelong_diffusion.presets import WORLD_DIR
from lifelong_diffusion.project import BASE, Project
from lifelong_diffusion.snapshot import empty_snapshot, read_timing, read_train_log, save_snapshot
from lifelong_diffusion.stamps import content_hash, inputs_key
from lifelong_diffusion.train import train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE, LONG_SEQUENCE, concept_by_name, write_concept_folder

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "lifelong_diffusion"
FIGURES = ("A", "F", "BWT", "LA")
# Method-specific per-step figures of train_log.json, averaged over the steps that have them.
LOGGED = ("fisher_seconds", "update_norm")
REFERENCES = ("naive", "independent")  # every method's F and LA are compared with theirs
PICTURE = "stability_plasticity.png"  # F against LA per method


def picture_scores(results: dict) -> list[str]:
    """The stability-plasticity picture's panels: the exact score and CLIP-I, where measured."""
    return [s for s in ("attr_acc", "clip_i") if f"{s}_F" in next(iter(results.values()))]


def concept_orders(names: list[str], orders: int, seed: int) -> list[tuple[list[str], int]]:
    """(concept order, photo seed) of each run: the given order with `seed`, then permutations
    drawn from random.Random(k) with seed + k, so the orders differ in which concept comes
    first and in the photos."""
    return [(list(names), seed)] + [(random.Random(k).sample(names, len(names)), seed + k)
                                    for k in range(1, orders)]


def prepare_concepts(names: list[str], seed: int, work: Path, ingest: dict) -> tuple[Path, list[str]]:
    """Render and ingest the concepts once; every method reads the same processed folders."""
    processed = work / "processed"
    for name in names:
        folder = write_concept_folder(concept_by_name(name), work / "concepts", seed=seed)
        ingest_concept(folder, processed / name, **ingest)
    class_words = list(dict.fromkeys(concept_by_name(n).class_word for n in names))
    return processed, class_words


def run_method(method: str, project: Project, names: list[str], processed: Path,
               class_words: list[str], work: Path) -> dict:
    """The whole sequence for one method; returns its continual summary, training time,
    storage and the method's own logged figures."""
    cfg, eval_cfg = replace(project.train_config(), method=method), project.eval_config()
    adapters, evals = work / method / "adapters", work / method / "eval"
    save_snapshot(empty_snapshot(project.section("base")["model"]), adapters / BASE)
    base_metrics = evaluate_snapshot(adapters / BASE, processed, evals / BASE, eval_cfg, class_words)
    steps, logs, prev = [], [], BASE
    for name in names:
        train_concept(adapters / prev, processed / name, adapters / name, cfg, progress=False)
        logs.append({**read_train_log(adapters / name), **read_timing(adapters / name)})
        steps.append(evaluate_snapshot(adapters / name, processed, evals / name, eval_cfg, class_words))
        print(f"  {method} after {name}: {steps[-1]['summary']}", flush=True)
        prev = name
    summary = continual_report(base_metrics, steps, work / method / "report")
    # training_seconds excludes model loading and after-step passes (Fisher), reported apart
    summary["s_per_step"] = sum(log["training_seconds"] for log in logs) / (cfg.steps * len(names))
    summary["bytes_per_concept"] = snapshot_bytes(adapters / names[-1]) // len(names)
    for key in LOGGED:
        values = [log[key] for log in logs if key in log]
        summary[key] = values or None
    return summary


def library_files(method: str) -> list[Path]:
    """The library's files one method's figures depend on: all but the other methods' own
    modules (and plots.py, which only draws), so adding or changing a method keeps the other
    methods' stored runs. A module the method's class inherits from or imports names from
    (lfs: lfs_kd) is kept."""
    own = {sys.modules[c.__module__] for c in METHODS[method].__mro__ if c.__module__.startswith(LIBRARY.name)}
    used = set(own)
    for mod in own:
        used |= {sys.modules[v.__module__] for v in vars(mod).values()
                 if isinstance(getattr(v, "__module__", None), str) and v.__module__.startswith(LIBRARY.name)}
    others = {Path(sys.modules[c.__module__].__file__) for c in METHODS.values()} - {Path(m.__file__) for m in used}
    others.add(LIBRARY / "plots.py")  # draws the figures, never computes one
    return [f for f in sorted(LIBRARY.rglob("*.py")) if f not in others]


def run_key(method: str, project: Project, order: list[str], seed: int) -> str:
    """Everything one run's figures come from: the library's code (`library_files`), the
    world's models, params.yaml's sections (with train.method replaced; other methods' params
    left out, so tuning one method keeps the others' runs), the concept order and its photo
    seed."""
    code = [[f.relative_to(LIBRARY).as_posix(), sha256_file(f)] for f in library_files(method)]
    sections = {s: project.section(s) for s in ("base", "ingest", "evaluate")}
    train = project.section("train")
    sections["train"] = {**train, "method": method,
                         "method_params": (train.get("method_params") or {}).get(method)}
    return inputs_key(code, content_hash(WORLD_DIR), sections, order, seed)


def stored_run(runs: Path | None, method: str, k: int, project: Project, order: list[str],
               seed: int) -> Path | None:
    """Where run (method, order k) with its inputs' key is kept under --runs, or None without
    it (then nothing is hashed)."""
    if not runs:
        return None
    return runs / f"{method}-order{k}-{run_key(method, project, order, seed)[:16]}.json"


def keep_run(stored: Path, row: dict, heatmap: Path, order: list[str], seed: int) -> None:
    """Figures as JSON (written to a temporary name, then renamed: a killed run leaves no
    half file to be read back) and the R heatmap beside them."""
    stored.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(heatmap, stored.with_suffix(".png"))
    partial = stored.with_suffix(".part")
    partial.write_text(json.dumps({"order": order, "photo_seed": seed, "figures": row}))
    partial.replace(stored)


def snapshot_bytes(folder: Path) -> int:
    """What a user must keep to generate every concept: the snapshot's tensor files."""
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def figures(summary: dict) -> dict:
    """One run's figures; each continual figure `x` has its bootstrap interval as `x_ci`."""
    out = {}
    for score in SCORES:
        if score in summary:
            for k in FIGURES:
                out[f"{score}_{k}"], out[f"{score}_{k}_ci"] = summary[score][k], summary[score][f"{k}_ci"]
    for score, d in summary["drift"].items():
        out[f"drift_{score}"], out[f"drift_{score}_ci"] = d["drift"], d["drift_ci"]
    out["s_per_step"], out["bytes_per_concept"] = summary["s_per_step"], summary["bytes_per_concept"]
    if summary["fisher_seconds"]:
        out["fisher_seconds"] = sum(summary["fisher_seconds"]) / len(summary["fisher_seconds"])
    if summary["update_norm"]:
        out["update_norms"] = summary["update_norm"]
    for score in SCORES:
        if score in summary:
            out[f"F_by_length_{score}"] = forgetting_by_length(summary[score]["R"])
    return out


def across_orders(rows: list[dict]) -> dict:
    """One method's figures over its runs (one per order): every figure's mean under its own
    key, and for each continual figure its values by order (`_by_order`) and an interval
    (`_ci`): min and max over the orders, or with one order its bootstrap interval."""
    out = {key: mean_of([row[key] for row in rows]) for key in rows[0] if not key.endswith("_ci")}
    for key in [k for k in rows[0] if f"{k}_ci" in rows[0]]:
        values = [row[key] for row in rows]
        out[f"{key}_by_order"] = values
        out[f"{key}_ci"] = rows[0][f"{key}_ci"] if len(rows) == 1 else span(values)
    return out


def mean_of(values: list):
    """Mean of numbers, element-wise for lists (per-step or per-length figures); None if any
    run lacks the figure."""
    if any(v is None for v in values):
        return None
    if isinstance(values[0], list):
        return [mean_of(list(column)) for column in zip(*values)]
    return mean(values)


def span(values: list[float | None]) -> list[float] | None:
    return None if any(v is None for v in values) else [min(values), max(values)]


def apart(a: list[float] | None, b: list[float] | None) -> bool:
    """Two intervals that do not overlap: a difference beyond the uncertainty."""
    return a is not None and b is not None and (a[1] < b[0] or b[1] < a[0])


def differences(results: dict) -> None:
    """Adds `differs_from` to each method's row: per reference method (naive, independent) and
    figure (F, LA), the scores whose intervals do not overlap the reference's."""
    for method, row in results.items():
        row["differs_from"] = {
            ref: {k: [s for s in SCORES if f"{s}_{k}_ci" in row
                      and apart(row[f"{s}_{k}_ci"], results[ref][f"{s}_{k}_ci"])] for k in ("F", "LA")}
            for ref in REFERENCES if ref in results and ref != method}


def interval_note(orders: list[tuple[list[str], int]], eval_seeds: int) -> str:
    if len(orders) == 1:
        return (f"Brackets: 95% bootstrap interval over the {eval_seeds} evaluation seeds "
                f"({RESAMPLES} resamples of the seeds, the same for every step).")
    listed = "; ".join(f"{k}: {', '.join(names)} (photo seed {seed})"
                       for k, (names, seed) in enumerate(orders))
    return (f"Each figure is the mean over {len(orders)} concept orders; brackets: min and max over "
            f"the orders (a range, not a confidence interval). Orders: {listed}.")


def markdown(results: dict, orders: list[tuple[list[str], int]], eval_seeds: int, args, name: str) -> str:
    keys = [k for k in TABLE_KEYS if any(k in row for row in results.values())]
    command = f"--methods {args.methods} --seed {args.seed}" + (" --long" if args.long else "")
    command += f" --orders {args.orders}" if args.orders > 1 else ""
    command += f" --runs {args.runs}" if args.runs else ""
    lines = [f"# Methods on the world sequence ({', '.join(orders[0][0])})", "",
             f"`python -m benchmarks.methods {command}`; "
             f"train.steps from params.yaml, {torch.get_num_threads()} torch threads.", "",
             *([f"Runs kept in `{args.runs}` and read back where their inputs match: a read-back "
                "run's s_per_step is from the sitting that ran it.", ""] if args.runs else []),
             interval_note(orders, eval_seeds), "",
             "| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for method, row in results.items():
        lines.append(f"| {method} | " + " | ".join(_cell(row, k) for k in keys) + " |")
    lines += ["", "F: forgetting (Chaudhry), LA: accuracy right after learning, drift: class-prompt "
              "score of the base minus the final model (positive = the class got worse).", ""]
    lines += differences_table(results)
    lines += [f"![F against LA per method, with intervals]({name}/{PICTURE})\n"]
    lines += [f"![Forgetting ({score}) against sequence length]({name}/forgetting_{score}.png)\n"
              for score in SCORES if f"F_by_length_{score}" in next(iter(results.values()))]
    norms = {m: row["update_norms"] for m, row in results.items() if "update_norms" in row}
    lines += [f"Update norm per step, {m}: " + ", ".join(f"{v:.3g}" for v in values) + "\n"
              for m, values in norms.items()]
    lines += [f"## {m}\n\n![R heatmap of {m} (order 0)]({name}/{m}_R.png)\n" for m in results]
    return "\n".join(lines)


def differences_table(results: dict) -> list[str]:
    """Per method: the scores whose F (LA) interval lies apart from naive's (independent's)."""
    refs = [(ref, k) for ref in REFERENCES if ref in results for k in ("F", "LA")]
    if not refs:
        return []
    lines = ["## F and LA against " + " and ".join(dict.fromkeys(r for r, _ in refs)), "",
             "Scores whose interval does not overlap the reference's (\"differs\"); "
             "\"within intervals\" where every score's intervals overlap.", "",
             "| method | " + " | ".join(f"{k} vs {ref}" for ref, k in refs) + " |",
             "|---" * (len(refs) + 1) + "|"]
    for method, row in results.items():
        cells = [_differs(row["differs_from"][ref][k]) if ref in row["differs_from"] else "-"
                 for ref, k in refs]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def _differs(scores: list[str]) -> str:
    return "differs: " + ", ".join(scores) if scores else "within intervals"


def table_keys() -> tuple[str, ...]:
    """Scalar columns of the report table, in a fixed order (lists stay in the JSON)."""
    scores = tuple(f"{score}_{k}" for score in SCORES for k in FIGURES)
    return scores + tuple(f"drift_{score}" for score in SCORES) + (
        "s_per_step", "cost_vs_naive", "fisher_seconds", "bytes_per_concept")


TABLE_KEYS = table_keys()


def _cell(row: dict, key: str) -> str:
    """A continual figure as `0.310 [0.250, 0.370]`, anything else as a plain number."""
    if f"{key}_ci" in row:
        return format_figure(row[key], row[f"{key}_ci"])
    return _fmt(row.get(key))


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:,}" if isinstance(value, int) else f"{value:.3f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="world seed of the concept photos (order k: seed + k)")
    parser.add_argument("--concepts", default=",".join(DEFAULT_SEQUENCE), help="sequence, comma-separated")
    parser.add_argument("--long", action="store_true",
                        help=f"the {len(LONG_SEQUENCE)}-concept sequence instead of --concepts")
    parser.add_argument("--orders", type=int, default=1,
                        help="concept orders per method: the given one, then seeded permutations")
    parser.add_argument("--project", type=Path, default=REPO, help="params.yaml to take settings from")
    parser.add_argument("--report", type=Path, default=REPO / "reports", help="where the report goes")
    parser.add_argument("--runs", type=Path,
                        help="keep every run's figures here and reuse the stored ones whose inputs match")
    args = parser.parse_args(argv)

    project = Project(args.project.resolve())
    names = list(LONG_SEQUENCE) if args.long else args.concepts.split(",")
    name = "methods_long" if args.long else "methods"  # report file and figure folder
    figures_dir = args.report / name
    orders, methods = concept_orders(names, args.orders, args.seed), args.methods.split(",")
    runs = {method: [] for method in methods}  # figures per order
    with tempfile.TemporaryDirectory() as tmp:
        figures_dir.mkdir(parents=True, exist_ok=True)
        for k, (order, seed) in enumerate(orders):
            work = Path(tmp) / f"order-{k}"
            processed, class_words = prepare_concepts(order, seed, work, project.section("ingest"))
            for method in methods:
                stored = stored_run(args.runs, method, k, project, order, seed)
                if stored and stored.exists():
                    runs[method].append(json.loads(stored.read_text())["figures"])
                    heatmap = stored.with_suffix(".png")
                    print(f"{method}, order {k}: read back from {stored}", flush=True)
                else:
                    start = time.perf_counter()
                    summary = run_method(method, project, order, processed, class_words, work)
                    runs[method].append(figures(summary))
                    heatmap = work / method / "report" / HEATMAP
                    if stored:
                        keep_run(stored, runs[method][-1], heatmap, order, seed)
                    print(f"{method}, order {k}: {time.perf_counter() - start:.0f} s", flush=True)
                if k == 0:
                    shutil.copy(heatmap, figures_dir / f"{method}_R.png")
    results = {method: across_orders(rows) for method, rows in runs.items()}
    differences(results)
    naive = results.get("naive", {}).get("s_per_step")
    for row in results.values():
        row["cost_vs_naive"] = row["s_per_step"] / naive if naive else None
    for score in SCORES:
        if f"F_by_length_{score}" in next(iter(results.values())):
            forgetting_curves({m: row[f"F_by_length_{score}"] for m, row in results.items()},
                              score, figures_dir / f"forgetting_{score}.png")
    stability_plasticity(results, picture_scores(results), figures_dir / PICTURE)
    report = markdown(results, orders, len(project.eval_config().seeds), args, name)
    (args.report / f"{name}.md").write_text(report + "\n")
    print(report)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
