"""New concepts arrive: `lifelong add`, the inbox, the rejected folder (arrivals.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from lifelong_diffusion.arrivals import ERROR_FILE, INBOX, REJECTED, add_concept, take_inbox
from lifelong_diffusion.ingest import ConceptDataError
from lifelong_diffusion.project import Project

REPO = Path(__file__).resolve().parents[1]
FIRST, SECOND = "striped-star", "dotted-heart"


def concept_folder(where: Path, like: str, token: str) -> Path:
    """A copy of a shipped concept folder under another token."""
    shutil.copytree(REPO / "data" / "concepts" / like, where)
    config = yaml.safe_load((where / "concept.yaml").read_text())
    (where / "concept.yaml").write_text(yaml.safe_dump({**config, "token": token}))
    return where


@pytest.fixture
def project(tmp_path) -> Project:
    root = tmp_path / "p"
    shutil.copytree(REPO / "data" / "concepts" / FIRST, root / "data" / "concepts" / FIRST)
    text = (REPO / "params.yaml").read_text()
    text = text[: text.index("sequence:")] + f"sequence:\n  {FIRST}: {{prev: base}}  # the first\n"
    (root / "params.yaml").write_text(text)
    return Project(root)


def snapshot_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_add_copies_the_folder_and_appends_it_keeping_comments(project, tmp_path):
    source = concept_folder(tmp_path / "My Photos", SECOND, "<c2>")
    before = snapshot_of(source)
    assert add_concept(project, source, name="my-heart") == "my-heart"
    assert project.sequence() == [FIRST, "my-heart"] and project.previous("my-heart") == FIRST
    text = (project.root / "params.yaml").read_text()
    assert "# the first" in text and "# One section per stage" in text  # comments kept
    assert text.endswith("  my-heart: {prev: striped-star}\n")
    assert snapshot_of(project.concept_dir("my-heart")) == before == snapshot_of(source)
    assert not [p for p in project.concept_dir("x").parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("problem, message", [
    (lambda f: (f / "notes.txt").write_text("stray"), "notes.txt"),
    (lambda f: (f / "concept.yaml").unlink(), "concept.yaml"),
    (lambda f: (f / "concept.yaml").write_text("token: <c1>\nclass_word: heart\n"), "<c1>"),
    (lambda f: [p.unlink() for p in sorted(f.glob("*.png"))[1:]], "new-heart: has 1 image"),
])
def test_a_bad_concept_changes_nothing(project, tmp_path, problem, message):
    source = concept_folder(tmp_path / "new-heart", SECOND, "<c2>")
    problem(source)
    before = snapshot_of(project.root)
    with pytest.raises(ConceptDataError, match=message) as info:
        add_concept(project, source)
    assert ".arriving-" not in str(info.value)  # names the user's folder
    assert snapshot_of(project.root) == before


def test_names_that_cannot_be_concepts_or_are_taken(project, tmp_path):
    source = concept_folder(tmp_path / "Heart Photos", SECOND, "<c2>")
    with pytest.raises(ConceptDataError, match="--name"):
        add_concept(project, source)  # the folder's name is not a concept name
    with pytest.raises(ConceptDataError, match="already exists"):
        add_concept(project, source, name=FIRST)
    with pytest.raises(ConceptDataError, match="not a concept name"):
        add_concept(project, source, name="../evil")


def test_the_first_concept_of_an_empty_project(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    text = (REPO / "params.yaml").read_text()
    (root / "params.yaml").write_text(text[: text.index("sequence:")] + "sequence: {}\n")
    add_concept(Project(root), concept_folder(tmp_path / FIRST, FIRST, "<c1>"))
    assert Project(root).sequence() == [FIRST] and Project(root).previous(FIRST) == "base"


def test_inbox_adds_the_good_and_rejects_the_bad(project):
    inbox = project.root / INBOX
    concept_folder(inbox / "b-heart", SECOND, "<c2>")
    concept_folder(inbox / "a-clash", SECOND, "<c1>")  # the first concept's token
    outcome = take_inbox(project)
    assert outcome.added == ["b-heart"] and list(outcome.rejected) == ["a-clash"]
    assert project.sequence() == [FIRST, "b-heart"]
    assert sorted(p.name for p in inbox.iterdir()) == [REJECTED]  # the good one left the inbox
    error = (inbox / REJECTED / "a-clash" / ERROR_FILE).read_text()
    assert "<c1>" in error and FIRST in error and "move the folder back" in error
    assert (inbox / REJECTED / "a-clash" / "concept.yaml").exists()
    assert take_inbox(project).added == []  # the rejected folder is not retried


def test_cli_add_and_its_one_line_error(project, tmp_path, capsys):
    source = concept_folder(tmp_path / "heart", SECOND, "<c2>")
    assert main(["--project", str(project.root), "add", str(source), "--name", "my-heart"]) == 0
    assert "added my-heart" in capsys.readouterr().out
    assert main(["--project", str(project.root), "add", str(source), "--name", "my-heart"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lifelong add: error:") and "already exists" in err[0]


def test_a_second_run_of_a_project_is_refused_while_one_holds_it(project, capsys):
    with project.lock():
        assert main(["--project", str(project.root), "run"]) == 2
    assert "is already running" in capsys.readouterr().err


def test_appends_after_multi_line_entries(tmp_path):
    root = tmp_path / "p"
    shutil.copytree(REPO / "data" / "concepts" / FIRST, root / "data" / "concepts" / FIRST)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sequence"] = {FIRST: {"prev": "base"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))  # `prev:` on its own line
    add_concept(Project(root), concept_folder(tmp_path / "heart", SECOND, "<c2>"))
    assert Project(root).sequence() == [FIRST, "heart"]
