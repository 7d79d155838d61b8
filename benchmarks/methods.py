"""Compare continual-learning methods on one lifelong sequence, with the project's own code.

    python -m benchmarks.methods --methods naive,independent,lfs_kd,lfs
    python -m benchmarks.methods --seed 3 --concepts ringed-circle,checked-square --report /tmp/r

Each method learns the same concepts in the same order from the same base (params.yaml's
base, train and evaluate sections, with `train.method` replaced), is evaluated after every
step, and gets the continual report (A, F, BWT, LA, drift). Concept photos are rendered from
the world with `--seed` (the shipped data/concepts are seed 0). Prints a table, writes a
markdown report with one R heatmap per method, and ends with one JSON line:
{"<method>": {"attr_acc_A": .., "attr_acc_F": .., ..., "s_per_step": .., "cost_vs_naive": ..}}
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

from lifelong_diffusion.cl_metrics import SCORES
from lifelong_diffusion.continual import HEATMAP, continual_report
from lifelong_diffusion.evaluate import evaluate_snapshot
from lifelong_diffusion.ingest import ingest_concept
from lifelong_diffusion.project import BASE, Project
from lifelong_diffusion.snapshot import empty_snapshot, read_train_log, save_snapshot
from lifelong_diffusion.train import train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE, concept_by_name, write_concept_folder

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("A", "F", "BWT", "LA")


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
    """The whole sequence for one method; returns its continual summary and training time."""
    cfg, eval_cfg = replace(project.train_config(), method=method), project.eval_config()
    adapters, evals = work / method / "adapters", work / method / "eval"
    save_snapshot(empty_snapshot(project.section("base")["model"]), adapters / BASE)
    base_metrics = evaluate_snapshot(adapters / BASE, processed, evals / BASE, eval_cfg, class_words)
    steps, train_seconds, prev = [], 0.0, BASE
    for name in names:
        train_concept(adapters / prev, processed / name, adapters / name, cfg, progress=False)
        train_seconds += read_train_log(adapters / name)["training_seconds"]  # no model loading
        steps.append(evaluate_snapshot(adapters / name, processed, evals / name, eval_cfg, class_words))
        print(f"  {method} after {name}: {steps[-1]['summary']}", flush=True)
        prev = name
    summary = continual_report(base_metrics, steps, work / method / "report")
    summary["s_per_step"] = train_seconds / (cfg.steps * len(names))
    return summary


def figures(summary: dict) -> dict:
    out = {}
    for score in SCORES:
        if score in summary:
            out.update({f"{score}_{k}": summary[score][k] for k in FIGURES})
    out.update({f"drift_{score}": d["drift"] for score, d in summary["drift"].items()})
    out["s_per_step"] = summary["s_per_step"]
    return out


def markdown(results: dict, names: list[str], args) -> str:
    keys = list(next(iter(results.values())))
    lines = [f"# Methods on the world sequence ({', '.join(names)})", "",
             f"`python -m benchmarks.methods --methods {args.methods} --seed {args.seed}`; "
             f"train.steps from params.yaml, {torch.get_num_threads()} torch threads.", "",
             "| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for method, row in results.items():
        lines.append(f"| {method} | " + " | ".join(_fmt(row[k]) for k in keys) + " |")
    lines += ["", "F: forgetting (Chaudhry), LA: accuracy right after learning, drift: class-prompt "
              "score of the base minus the final model (positive = the class got worse).", ""]
    lines += [f"## {m}\n\n![R heatmap of {m}](methods/{m}_R.png)\n" for m in results]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="naive,independent,lfs_kd,lfs")
    parser.add_argument("--seed", type=int, default=0, help="world seed of the concept photos")
    parser.add_argument("--concepts", default=",".join(DEFAULT_SEQUENCE), help="sequence, comma-separated")
    parser.add_argument("--project", type=Path, default=REPO, help="params.yaml to take settings from")
    parser.add_argument("--report", type=Path, default=REPO / "reports", help="where methods.md goes")
    args = parser.parse_args(argv)

    project, names = Project(args.project.resolve()), args.concepts.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        processed, class_words = prepare_concepts(names, args.seed, work, project.section("ingest"))
        (args.report / "methods").mkdir(parents=True, exist_ok=True)
        for method in args.methods.split(","):
            start = time.perf_counter()
            summary = run_method(method, project, names, processed, class_words, work)
            results[method] = figures(summary)
            shutil.copy(work / method / "report" / HEATMAP, args.report / "methods" / f"{method}_R.png")
            print(f"{method}: {time.perf_counter() - start:.0f} s", flush=True)
    naive = results.get("naive", {}).get("s_per_step")
    for row in results.values():
        row["cost_vs_naive"] = row["s_per_step"] / naive if naive else None
    (args.report / "methods.md").write_text(markdown(results, names, args) + "\n")
    print(markdown(results, names, args))
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
