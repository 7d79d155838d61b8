"""Tune one method on the default concept order, by a rule fixed before the sweep.

    python -m benchmarks.sweep --method ewc --grid weight=1.0,10.0,100.0 --then gamma=0.5,0.9 \\
        --runs reports/methods_runs --report reports/tuning

Write values as params.yaml does (10.0, not 10): a kept run's key sees the difference, so the
shipped value would be run again instead of read back.

Each combination of the grid is one `benchmarks.methods` run on the default order (photo seed
--seed) with `train.method_params.<method>` updated in a copy of params.yaml; `naive` and
`independent` run beside it (or are read back from --runs) as references. Each `--then` grid is
a later stage, swept at the values chosen so far (a knob at a time, not the full product). The
rule, applied after every stage to all rows so far: among the
combinations whose attr_acc LA is at least --la-share (0.9) of independent's, the lowest
attr_acc F; if none qualifies, the highest LA (ties: the lowest F). Other orders are for
evaluation only (`--orders` of benchmarks.methods), never for tuning.

Writes <report>/<method>.md (the table, the rule and the choice) and ends with one JSON line:
{"method": .., "rule": .., "references": {"naive": {..}, "independent": {..}},
 "rows": [{"params": {..}, "A": .., "F": .., "F_ci": [..], "LA": .., "LA_ci": [..],
           "drift": .., "cost_vs_naive": .., "qualifies": ..}], "chosen": {"params": {..}, ..}}
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks import methods as bench
from lifelong_diffusion.cl_metrics import format_figure

def parse_grid(items: list[str]) -> list[dict]:
    """`name=v1,v2` items as every combination of their values (YAML scalars)."""
    names, values = [], []
    for item in items:
        name, _, listed = item.partition("=")
        if not name or not listed:
            raise SystemExit(f"--grid {item!r}: write it as name=value1,value2,...")
        names.append(name)
        values.append([yaml.safe_load(v) for v in listed.split(",")])
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def method_params(root: Path, method: str, params: dict) -> dict:
    """The method's entry in root's params.yaml with `params` over it: what one run uses."""
    entries = yaml.safe_load((root / "params.yaml").read_text())["train"].get("method_params") or {}
    return {**(entries.get(method) or {}), **params}


def project_with(root: Path, method: str, params: dict, folder: Path) -> Path:
    """A copy of root's params.yaml in `folder` with the method's params updated, beside a link
    to root's models/."""
    data = yaml.safe_load((root / "params.yaml").read_text())
    entries = data["train"].setdefault("method_params", {}) or {}
    entries[method] = method_params(root, method, params)
    data["train"]["method_params"] = entries
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    if (root / "models").exists():  # params.yaml's relative paths (models/world/...) resolve as in root
        (folder / "models").symlink_to((root / "models").resolve())
    return folder


def row_of(params: dict, figures: dict, score: str, naive_seconds: float) -> dict:
    return {"params": params, "A": figures[f"{score}_A"], "F": figures[f"{score}_F"],
            "F_ci": figures[f"{score}_F_ci"], "LA": figures[f"{score}_LA"],
            "LA_ci": figures[f"{score}_LA_ci"], "drift": figures.get(f"drift_{score}"),  # none for clip_i
            "cost_vs_naive": figures["s_per_step"] / naive_seconds}


def choose(rows: list[dict], independent_la: float, share: float) -> dict:
    """Lowest F among the rows with LA >= share * independent's; else the highest LA, and
    among rows with that LA the lowest F (F is what the rule minimises)."""
    for row in rows:
        row["qualifies"] = row["LA"] >= share * independent_la
    qualified = [row for row in rows if row["qualifies"]]
    return min(qualified or [r for r in rows if r["LA"] == max(r["LA"] for r in rows)],
               key=lambda r: r["F"])


def markdown(method: str, score: str, rows: list[dict], chosen: dict, refs: dict, rule: str,
             command: str) -> str:
    lines = [f"# Sweep: {method} (default order, {score})", "", f"`python -m benchmarks.sweep {command}`",
             "", f"Rule, fixed before the sweep: {rule}", "",
             "| params | A | F | LA | drift | cost vs naive | qualifies |", "|---|---|---|---|---|---|---|"]
    for name, ref in refs.items():
        lines.append(f"| *{name}* | {ref['A']:.3f} | {format_figure(ref['F'], ref['F_ci'])} | "
                     f"{format_figure(ref['LA'], ref['LA_ci'])} | {format_figure(ref['drift'], spec='+.3f')} | "
                     f"{ref['cost_vs_naive']:.2f} | |")
    for row in rows:
        mark = " **chosen**" if row is chosen else ""
        params = ", ".join(f"{k}={v}" for k, v in row["params"].items())
        lines.append(f"| {params}{mark} | {row['A']:.3f} | {format_figure(row['F'], row['F_ci'])} | "
                     f"{format_figure(row['LA'], row['LA_ci'])} | {format_figure(row['drift'], spec='+.3f')} | "
                     f"{row['cost_vs_naive']:.2f} | {'yes' if row['qualifies'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True)
    parser.add_argument("--grid", action="append", required=True, help="name=v1,v2 (repeatable)")
    parser.add_argument("--then", action="append", default=[],
                        help="name=v1,v2: a later stage, swept at the values chosen so far (repeatable)")
    parser.add_argument("--score", default="attr_acc",
                        help="the score F and LA are read on (attr_acc: the exact score of the targets)")
    parser.add_argument("--la-share", type=float, default=0.9,
                        help="a value qualifies with LA >= this share of independent's")
    parser.add_argument("--seed", type=int, default=0, help="photo seed of the default order")
    parser.add_argument("--concepts", default=None, help="sequence (default: benchmarks.methods')")
    parser.add_argument("--project", type=Path, default=bench.REPO)
    parser.add_argument("--runs", type=Path, help="as benchmarks.methods --runs")
    parser.add_argument("--report", type=Path, default=bench.REPO / "reports" / "tuning")
    args = parser.parse_args(argv)
    if args.method not in bench.METHODS:
        raise SystemExit(f"--method {args.method}: choose one of {', '.join(sorted(bench.METHODS))}")
    common = ["--orders", "1", "--seed", str(args.seed)] + (["--runs", str(args.runs)] if args.runs else [])
    common += ["--concepts", args.concepts] if args.concepts else []
    with tempfile.TemporaryDirectory() as tmp:
        refs = bench.main(["--methods", "naive,independent", "--project", str(args.project),
                           "--report", f"{tmp}/refs", *common])
        naive_seconds = refs["naive"]["s_per_step"]
        rows, shipped = [], method_params(args.project, args.method, {})
        for stage in [args.grid, *[[item] for item in args.then]]:
            base = chosen["params"] if rows else {}
            for combo in parse_grid(stage):
                params = {**base, **combo}
                if any({**shipped, **r["params"]} == {**shipped, **params} for r in rows):
                    continue  # the same run as a row already swept (a stage's current value)
                k = len(rows)
                project = project_with(args.project, args.method, params, Path(tmp) / f"project-{k}")
                result = bench.main(["--methods", args.method, "--project", str(project),
                                     "--report", f"{tmp}/report-{k}", *common])
                rows.append(row_of(params, result[args.method], args.score, naive_seconds))
            chosen = choose(rows, refs["independent"][f"{args.score}_LA"], args.la_share)
    references = {name: row_of({}, refs[name], args.score, naive_seconds) for name in ("naive", "independent")}
    rule = (f"among the values with {args.score} LA >= {args.la_share:g} x independent's "
            f"({args.la_share * references['independent']['LA']:.3f}), the lowest {args.score} F; "
            "if none qualifies, the highest LA (ties: the lowest F)")
    command = " ".join(sys.argv[1:] if argv is None else argv)  # as typed, for the report
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / f"{args.method}.md").write_text(markdown(args.method, args.score, rows, chosen, references, rule, command))
    out = {"method": args.method, "rule": rule, "references": references, "rows": rows, "chosen": chosen}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
