"""params.yaml's `sequence`: the prev-chain is validated and ordered (project.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from lifelong_diffusion.project import BASE, ParamsError, Project, sequence_order

SRC = Path("params.yaml")
CHAIN = ["striped-star", "dotted-heart", "checked-square", "ringed-circle", "dotted-hexagon"]


def chain_dict(names: list[str]) -> dict:
    prevs = [BASE] + names[:-1]
    return {name: {"prev": prev} for name, prev in zip(names, prevs)}


def shuffled(d: dict, seed: int) -> dict:
    items = list(d.items())
    random.Random(seed).shuffle(items)
    return dict(items)


def order_error(sequence: dict) -> str:
    with pytest.raises(ParamsError) as info:
        sequence_order(sequence, SRC)
    return str(info.value)


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_dict_gives_chain_order(seed):
    seq = shuffled(chain_dict(CHAIN), seed)
    assert sequence_order(seq, SRC) == CHAIN


def test_single_concept():
    assert sequence_order({"only": {"prev": "base"}}, SRC) == ["only"]


@pytest.mark.parametrize("empty", [{}, None])
def test_empty_sequence(empty):
    msg = order_error(empty)
    assert "params.yaml" in msg
    assert "empty" in msg
    assert "prev: base" in msg


@pytest.mark.parametrize("item", [None, {}, {"previous": "base"}])
def test_missing_prev(item):
    seq = {"a": {"prev": "base"}, "b": item}
    msg = order_error(seq)
    assert "sequence.b" in msg
    assert "needs a `prev` field" in msg
    assert "prev: base" in msg


def test_two_concepts_after_the_same_one():
    seq = {"a": {"prev": "base"}, "b": {"prev": "a"}, "c": {"prev": "a"}}
    msg = order_error(seq)
    assert "'b'" in msg and "'c'" in msg and "'a'" in msg
    assert "single chain" in msg


def test_two_concepts_after_base():
    msg = order_error({"a": {"prev": "base"}, "b": {"prev": "base"}})
    assert "'a'" in msg and "'b'" in msg and "'base'" in msg


def test_unreachable_concept():
    seq = {"a": {"prev": "base"}, "b": {"prev": "a"}, "z": {"prev": "nowhere"}}
    msg = order_error(seq)
    assert "z not reachable" in msg
    assert "`base`" in msg
    assert "prev" in msg
    assert " a," not in msg and " b," not in msg  # only the unreachable one is named


def test_cycle_is_unreachable():
    seq = {"a": {"prev": "base"}, "x": {"prev": "y"}, "y": {"prev": "x"}}
    msg = order_error(seq)
    assert "x, y not reachable" in msg


def test_no_concept_after_base():
    msg = order_error({"x": {"prev": "y"}, "y": {"prev": "x"}})
    assert "x, y not reachable from `base`" in msg


def test_source_path_in_messages(tmp_path):
    src = tmp_path / "custom.yaml"
    with pytest.raises(ParamsError, match="custom.yaml"):
        sequence_order({"a": {"prev": "gone"}}, src)


# --- Project ----------------------------------------------------------------------


def write_params(root: Path, sequence: dict, name: str = "params.yaml") -> Project:
    (root / name).write_text(yaml.safe_dump({"sequence": sequence, "train": {"steps": 7}}))
    return Project(root, name)


def test_project_sequence_and_previous(tmp_path):
    project = write_params(tmp_path, shuffled(chain_dict(CHAIN[:3]), 1))
    assert project.sequence() == CHAIN[:3]
    assert project.previous(CHAIN[0]) == BASE
    assert project.previous(CHAIN[1]) == CHAIN[0]
    assert project.previous(CHAIN[2]) == CHAIN[1]


def test_project_unknown_concept(tmp_path):
    project = write_params(tmp_path, chain_dict(CHAIN[:2]))
    with pytest.raises(ParamsError) as info:
        project.previous("wavy-moon")
    msg = str(info.value)
    assert "'wavy-moon'" in msg
    assert "params.yaml" in msg
    assert f"known: {CHAIN[0]}, {CHAIN[1]}" in msg


def test_project_invalid_sequence_names_file(tmp_path):
    project = write_params(tmp_path, {"a": {"prev": "base"}, "b": {}}, name="other.yaml")
    with pytest.raises(ParamsError, match=r"other\.yaml.*sequence\.b needs a `prev` field"):
        project.sequence()


def test_project_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        Project(tmp_path).sequence()


def test_project_paths_and_sections(tmp_path):
    project = write_params(tmp_path, chain_dict(CHAIN[:1]))
    assert project.processed_dir("x") == tmp_path / "data" / "processed" / "x"
    assert project.processed_dir() == tmp_path / "data" / "processed"
    assert project.concept_dir("x") == tmp_path / "data" / "concepts" / "x"
    assert project.snapshot_dir("x") == tmp_path / "adapters" / "x"
    assert project.eval_dir("x") == tmp_path / "eval" / "x"
    assert project.section("train") == {"steps": 7}
    assert project.section("evaluate") == {}


# --- malformed sequences ---


def test_item_not_a_mapping_is_a_params_error():
    msg = order_error({"a": "base"})
    assert "sequence.a" in msg


def test_sequence_as_list_is_a_params_error():
    msg = order_error(["a", "b"])
    assert "sequence" in msg


def test_concept_named_base_is_rejected():
    import signal

    def _alarm(signum, frame):
        raise TimeoutError("sequence_order did not return within 1 s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(1)
    try:
        msg = order_error({"base": {"prev": "base"}})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert "base" in msg


@pytest.mark.parametrize("name", ["x;touch pwned-marker;echo", "a/b", "../evil", "Dog", "x" * 65, "-dash", 7])
def test_sequence_names_must_be_concept_names(name):
    """A name is a shell argument in dvc.yaml, a folder and a run name: one strict rule,
    before anything runs (a shell-injecting name once ran its command on `lifelong run`)."""
    message = order_error({name: {"prev": "base"}})
    assert "is not a concept name" in message and repr(name) in message
