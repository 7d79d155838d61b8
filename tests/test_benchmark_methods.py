"""The methods benchmark end to end on the tiny-random preset (figures, report, plots); the
real comparison runs on the world preset (`python -m benchmarks.methods`)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from benchmarks import methods as bench

REPO = Path(__file__).resolve().parents[1]


def tiny_project(root: Path) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"].update(model="tiny-random")
    params["evaluate"].update(clip_model="ld-tiny-clip", clip_weights=None, attribute_classifier=None,
                              seeds=[0], steps=2)
    params["train"].update(steps=3)
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_benchmark_reports_every_figure(tmp_path, capsys):
    project, report = tiny_project(tmp_path / "project"), tmp_path / "reports"
    results = bench.main(["--methods", "naive,merge", "--concepts", "striped-star,dotted-heart",
                          "--project", str(project), "--report", str(report)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == results  # last line: JSON
    naive, merge = results["naive"], results["merge"]
    assert naive["cost_vs_naive"] == 1.0 and merge["cost_vs_naive"] > 0
    for row in (naive, merge):
        assert row["bytes_per_concept"] > 0
        assert len(row["F_by_length_clip_i"]) == 1  # one prefix length (2 concepts)
        assert row["F_by_length_clip_i"][-1] == row["clip_i_F"]  # the full sequence's F
    assert len(merge["update_norms"]) == 2 and "update_norms" not in naive  # only folding logs norms
    text = (report / "methods.md").read_text()
    assert "| merge |" in text and "bytes_per_concept" in text
    for figure in ("naive_R.png", "merge_R.png", "forgetting_clip_i.png"):
        assert (report / "methods" / figure).stat().st_size > 1000
