"""The methods benchmark end to end on the tiny-random preset (figures, report, plots); the
real comparison runs on the world preset (`python -m benchmarks.methods`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks import methods as bench
from lifelong_diffusion.cl_metrics import format_figure
from tests.test_e2e import plumbing_params

REPO = Path(__file__).resolve().parents[1]


def tiny_project(root: Path) -> Path:
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(plumbing_params()))
    return root


def test_benchmark_reports_every_figure_over_two_orders(tmp_path, capsys):
    project, report = tiny_project(tmp_path / "project"), tmp_path / "reports"
    results = bench.main(["--methods", "naive,merge", "--concepts", "striped-star,dotted-heart",
                          "--orders", "2", "--project", str(project), "--report", str(report)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == results  # last line: JSON
    naive, merge = results["naive"], results["merge"]
    assert naive["cost_vs_naive"] == 1.0 and merge["cost_vs_naive"] > 0
    for row in (naive, merge):
        assert row["bytes_per_concept"] > 0
        assert len(row["F_by_length_clip_i"]) == 1  # one prefix length (2 concepts)
        assert row["F_by_length_clip_i"][-1] == pytest.approx(row["clip_i_F"])  # the full sequence's F
        for key in ("clip_i_A", "clip_i_F", "clip_i_LA", "clip_t_BWT", "drift_clip_t"):
            by_order = row[f"{key}_by_order"]
            assert len(by_order) == 2 and by_order[0] != by_order[1]  # other photos, other figures
            assert row[key] == pytest.approx(sum(by_order) / 2)  # the existing key: the mean
            assert row[f"{key}_ci"] == [min(by_order), max(by_order)]
        assert "attr_acc_F" not in row  # no attribute classifier on the tiny preset
    assert len(merge["update_norms"]) == 2 and "update_norms" not in naive  # only folding logs norms
    assert set(merge["differs_from"]) == {"naive"} and naive["differs_from"] == {}
    assert set(merge["differs_from"]["naive"]) == {"F", "LA"}
    assert set(merge["differs_from"]["naive"]["F"]) <= {"clip_i", "clip_t"}
    text = (report / "methods.md").read_text()
    assert "| merge |" in text and "bytes_per_concept" in text and "--orders 2" in text
    assert "min and max over the orders" in text and "photo seed 1" in text
    assert f"| {format_figure(merge['clip_i_F'], merge['clip_i_F_ci'])} |" in text
    assert "| F vs naive | LA vs naive |" in text
    for figure in ("naive_R.png", "merge_R.png", "forgetting_clip_i.png", "stability_plasticity.png"):
        assert (report / "methods" / figure).stat().st_size > 1000


def test_orders_are_the_given_one_then_seeded_permutations():
    names = ["a", "b", "c", "d", "e"]
    orders = bench.concept_orders(names, 3, seed=5)
    assert orders[0] == (names, 5) and [seed for _, seed in orders] == [5, 6, 7]
    assert all(sorted(order) == names for order, _ in orders) and orders[1][0] != names
    assert bench.concept_orders(names, 3, seed=5) == orders  # reproducible


def test_one_order_keeps_the_bootstrap_interval():
    row = {"clip_i_F": 0.2, "clip_i_F_ci": [0.1, 0.3], "s_per_step": 1.5, "F_by_length_clip_i": [0.2]}
    assert bench.across_orders([row]) == {"clip_i_F": 0.2, "clip_i_F_by_order": [0.2],
                                          "clip_i_F_ci": [0.1, 0.3], "s_per_step": 1.5,
                                          "F_by_length_clip_i": [0.2]}
    two = bench.across_orders([row, {**row, "clip_i_F": 0.4, "F_by_length_clip_i": [0.4]}])
    assert two["clip_i_F"] == pytest.approx(0.3) and two["clip_i_F_ci"] == [0.2, 0.4]
    assert two["F_by_length_clip_i"] == [pytest.approx(0.3)]


def test_methods_differ_only_where_intervals_do_not_overlap():
    def row(f, la):
        return {"clip_i_F_ci": f, "clip_i_LA_ci": la, "clip_t_F_ci": [0.0, 1.0], "clip_t_LA_ci": None}

    results = {"naive": row([0.3, 0.5], [0.5, 0.6]), "independent": row([0.0, 0.1], [0.55, 0.7]),
               "lfs": row([0.05, 0.2], [0.61, 0.8])}
    bench.differences(results)
    assert results["lfs"]["differs_from"] == {"naive": {"F": ["clip_i"], "LA": ["clip_i"]},
                                              "independent": {"F": [], "LA": []}}
    assert results["naive"]["differs_from"] == {"independent": {"F": ["clip_i"], "LA": []}}


def test_kept_runs_are_read_back_and_a_params_change_runs_afresh(tmp_path, monkeypatch):
    project, report, runs = tiny_project(tmp_path / "project"), tmp_path / "reports", tmp_path / "runs"
    argv = ["--methods", "naive", "--concepts", "striped-star", "--project", str(project),
            "--report", str(report), "--runs", str(runs)]
    first = bench.main(argv)
    kept = sorted(runs.glob("naive-order0-*.json"))
    assert len(kept) == 1 and kept[0].with_suffix(".png").stat().st_size > 1000
    assert json.loads(kept[0].read_text())["figures"]["clip_i_A"] == first["naive"]["clip_i_A"]

    def no_training(*args, **kwargs):
        raise AssertionError("a kept run was trained again")
    monkeypatch.setattr(bench, "run_method", no_training)
    assert bench.main(argv) == first  # read back: the same figures, nothing trained
    assert "read back where their inputs match" in (report / "methods.md").read_text()

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["steps"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(AssertionError, match="trained again"):
        bench.main(argv)  # another key: the stored run does not answer for these params


def test_a_run_key_ignores_the_other_methods_files():
    from benchmarks.methods import LIBRARY, library_files

    names = {f.relative_to(LIBRARY).as_posix() for f in library_files("naive")}
    assert {"methods/naive.py", "methods/base.py", "train.py"} <= names
    assert not names & {"methods/routed.py", "methods/lfs_kd.py", "methods/ewc.py"}
    lfs = {f.relative_to(LIBRARY).as_posix() for f in library_files("lfs")}
    assert {"methods/lfs.py", "methods/lfs_kd.py"} <= lfs  # inherited
    dsc = {f.relative_to(LIBRARY).as_posix() for f in library_files("dsc")}
    assert "methods/lfs_kd.py" in dsc and "methods/lfs.py" not in dsc  # imports relevant_prompts


def test_sweep_picks_by_the_rule_over_stages_and_writes_its_table(tmp_path, capsys):
    from benchmarks import sweep

    project, report = tiny_project(tmp_path / "project"), tmp_path / "tuning"
    # the second stage's 0.5 is the first stage's run: swept once
    out = sweep.main(["--method", "merge", "--grid", "weight=0.5", "--then", "weight=0.5,1.0",
                      "--score", "clip_i", "--concepts", "striped-star,dotted-heart",
                      "--project", str(project), "--report", str(report)])
    assert [row["params"] for row in out["rows"]] == [{"weight": 0.5}, {"weight": 1.0}]
    expected = sweep.choose([dict(r) for r in out["rows"]], out["references"]["independent"]["LA"], 0.9)
    assert out["chosen"]["params"] == expected["params"]
    text = (report / "merge.md").read_text()
    assert "weight=0.5" in text and "**chosen**" in text and "*independent*" in text
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["method"] == "merge"


def test_sweep_project_resolves_paths_as_the_repository(tmp_path):
    from benchmarks.sweep import project_with
    from lifelong_diffusion.project import Project

    folder = project_with(REPO, "ewc", {"weight": 100.0}, tmp_path / "project")
    project = Project(folder)
    assert Path(project.eval_config().clip_weights).is_file()  # models/world/... as in the repository
    swept, shipped = (p.section("train")["method_params"]["ewc"] for p in (project, Project(REPO)))
    assert swept == {**shipped, "weight": 100.0}  # the other knobs as shipped


def test_sweep_rule_prefers_low_forgetting_among_those_that_learn():
    from benchmarks.sweep import choose, parse_grid

    rows = [{"F": 0.1, "LA": 0.5}, {"F": 0.3, "LA": 0.85}, {"F": 0.2, "LA": 0.8}]
    assert choose(rows, independent_la=0.88, share=0.9) is rows[2]  # 0.1 learns too little
    assert choose(rows[:1], independent_la=0.9, share=0.9) is rows[0]  # none qualifies: best LA
    tied = [{"F": 0.8, "LA": 0.75}, {"F": 0.7, "LA": 0.75}, {"F": 0.5, "LA": 0.6}]
    assert choose(tied, independent_la=0.9, share=0.9) is tied[1]  # best LA, then lowest F
    assert parse_grid(["weight=1,10", "gamma=0.5"]) == [{"weight": 1, "gamma": 0.5}, {"weight": 10, "gamma": 0.5}]


def test_picture_stacks_the_labels_of_methods_on_nearly_the_same_spot():
    from lifelong_diffusion.plots import _label_shifts

    # independent and routed 0.02 apart in LA; naive and ewc apart in F
    points = [(0.867, 0.0), (0.888, 0.0), (0.30, 0.19), (0.704, 0.609), (0.721, 0.646)]
    assert _label_shifts(points) == [0, -9, 0, 0, 0]
    assert _label_shifts([(0.5, 0.5), (0.5, 0.5), (0.5, 0.5), (0.9, 0.1)]) == [0, -9, 9, 0]
