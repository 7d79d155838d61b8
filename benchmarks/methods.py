"""Compare continual-learning methods on one lifelong sequence, with the project's own code.

    python -m benchmarks.methods                      # all methods, default 5-concept sequence
    python -m benchmarks.methods --long --methods naive,ewc_dc,lfs   # the 10-concept sequence
    python -m benchmarks.methods --seed 3 --concepts ringed-circle,checked-square --report /tmp/r

Each method learns the same concepts in the same order from the same base (params.yaml's
base, train and evaluate sections, with `train.method` replaced), is evaluated after every
step, and gets the continual report (A, F, BWT, LA, drift). Concept photos are rendered from
the world with `--seed` (the shipped data/concepts are seed 0). Prints a table, writes a
markdown report with one R heatmap per method and a plot of forgetting against sequence
length, and ends with one JSON line:
{"<method>": {"attr_acc_A": .., "attr_acc_F": .., ..., "s_per_step": .., "cost_vs_naive": ..,
              "bytes_per_concept": .., "fisher_seconds": .., "F_by_length_clip_i": [..], ..}}
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from lifelong_diffusion.cl_metrics import SCORES, forgetting_by_length
from lifelong_diffusion.continual import HEATMAP, continual_report
from lifelong_diffusion.evaluate import evaluate_snapshot
from lifelong_diffusion.ingest import ingest_concept
from lifelong_diffusion.methods import METHODS
from lifelong_diffusion.plots import forgetting_curves
from lifelong_diffusion.project import BASE, Project
from lifelong_diffusion.snapshot import empty_snapshot, read_train_log, save_snapshot
from lifelong_diffusion.train import train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE, LONG_SEQUENCE, concept_by_name, write_concept_folder

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("A", "F", "BWT", "LA")
# Method-specific per-step figures of train_log.json, averaged over the steps that have them.
LOGGED = ("fisher_seconds", "update_norm")


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
        logs.append(read_train_log(adapters / name))
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


def snapshot_bytes(folder: Path) -> int:
    """What a user must keep to generate every concept: the snapshot's tensor files."""
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def figures(summary: dict) -> dict:
    out = {}
    for score in SCORES:
        if score in summary:
            out.update({f"{score}_{k}": summary[score][k] for k in FIGURES})
    out.update({f"drift_{score}": d["drift"] for score, d in summary["drift"].items()})
    out["s_per_step"], out["bytes_per_concept"] = summary["s_per_step"], summary["bytes_per_concept"]
    if summary["fisher_seconds"]:
        out["fisher_seconds"] = sum(summary["fisher_seconds"]) / len(summary["fisher_seconds"])
    if summary["update_norm"]:
        out["update_norms"] = summary["update_norm"]
    for score in SCORES:
        if score in summary:
            out[f"F_by_length_{score}"] = forgetting_by_length(summary[score]["R"])
    return out


def markdown(results: dict, names: list[str], args, name: str) -> str:
    keys = [k for k in TABLE_KEYS if any(k in row for row in results.values())]
    command = f"--methods {args.methods} --seed {args.seed}" + (" --long" if args.long else "")
    lines = [f"# Methods on the world sequence ({', '.join(names)})", "",
             f"`python -m benchmarks.methods {command}`; "
             f"train.steps from params.yaml, {torch.get_num_threads()} torch threads.", "",
             "| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for method, row in results.items():
        lines.append(f"| {method} | " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
    lines += ["", "F: forgetting (Chaudhry), LA: accuracy right after learning, drift: class-prompt "
              "score of the base minus the final model (positive = the class got worse).", ""]
    lines += [f"![Forgetting ({score}) against sequence length]({name}/forgetting_{score}.png)\n"
              for score in SCORES if f"F_by_length_{score}" in next(iter(results.values()))]
    norms = {m: row["update_norms"] for m, row in results.items() if "update_norms" in row}
    lines += [f"Update norm per step, {m}: " + ", ".join(f"{v:.3g}" for v in values) + "\n"
              for m, values in norms.items()]
    lines += [f"## {m}\n\n![R heatmap of {m}]({name}/{m}_R.png)\n" for m in results]
    return "\n".join(lines)


def table_keys() -> tuple[str, ...]:
    """Scalar columns of the report table, in a fixed order (lists stay in the JSON)."""
    scores = tuple(f"{score}_{k}" for score in SCORES for k in FIGURES)
    return scores + tuple(f"drift_{score}" for score in SCORES) + (
        "s_per_step", "cost_vs_naive", "fisher_seconds", "bytes_per_concept")


TABLE_KEYS = table_keys()


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:,}" if isinstance(value, int) else f"{value:.3f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="world seed of the concept photos")
    parser.add_argument("--concepts", default=",".join(DEFAULT_SEQUENCE), help="sequence, comma-separated")
    parser.add_argument("--long", action="store_true",
                        help=f"the {len(LONG_SEQUENCE)}-concept sequence instead of --concepts")
    parser.add_argument("--project", type=Path, default=REPO, help="params.yaml to take settings from")
    parser.add_argument("--report", type=Path, default=REPO / "reports", help="where the report goes")
    args = parser.parse_args(argv)

    project = Project(args.project.resolve())
    names = list(LONG_SEQUENCE) if args.long else args.concepts.split(",")
    name = "methods_long" if args.long else "methods"  # report file and figure folder
    figures_dir = args.report / name
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        processed, class_words = prepare_concepts(names, args.seed, work, project.section("ingest"))
        figures_dir.mkdir(parents=True, exist_ok=True)
        for method in args.methods.split(","):
            start = time.perf_counter()
            summary = run_method(method, project, names, processed, class_words, work)
            results[method] = figures(summary)
            shutil.copy(work / method / "report" / HEATMAP, figures_dir / f"{method}_R.png")
            print(f"{method}: {time.perf_counter() - start:.0f} s", flush=True)
    naive = results.get("naive", {}).get("s_per_step")
    for row in results.values():
        row["cost_vs_naive"] = row["s_per_step"] / naive if naive else None
    for score in SCORES:
        if f"F_by_length_{score}" in next(iter(results.values())):
            forgetting_curves({m: row[f"F_by_length_{score}"] for m, row in results.items()},
                              score, figures_dir / f"forgetting_{score}.png")
    report = markdown(results, names, args, name)
    (args.report / f"{name}.md").write_text(report + "\n")
    print(report)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
