"""Input keys do not depend on where the project lives (stamps.py, evaluate.eval_inputs_key)."""

from __future__ import annotations

import shutil

from lifelong_diffusion.evaluate import EvalConfig, eval_inputs_key
from lifelong_diffusion.snapshot import empty_snapshot, save_snapshot
from lifelong_diffusion.stamps import content_hash


def project_copy(root, weights: bytes):
    (root / "models").mkdir(parents=True)
    (root / "models" / "clip.safetensors").write_bytes(weights)
    (root / "models" / "dino").mkdir()
    (root / "models" / "dino" / "config.json").write_text("{}")
    save_snapshot(empty_snapshot("tiny-random"), root / "adapters" / "base")
    cfg = EvalConfig(clip_weights=str(root / "models" / "clip.safetensors"),
                     dino_model=str(root / "models" / "dino"))
    return eval_inputs_key(root / "adapters" / "base", cfg, ["star"])


def test_eval_key_is_the_same_in_a_moved_project(tmp_path):
    key = project_copy(tmp_path / "a", b"weights")
    shutil.move(tmp_path / "a", tmp_path / "elsewhere")
    assert project_copy(tmp_path / "b", b"weights") == key


def test_eval_key_changes_with_the_weights_content(tmp_path):
    assert project_copy(tmp_path / "a", b"weights") != project_copy(tmp_path / "b", b"other")


def test_content_hash_of_folder_covers_names_and_bytes(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("1")
    first = content_hash(tmp_path / "d")
    (tmp_path / "d" / "x").rename(tmp_path / "d" / "y")
    assert content_hash(tmp_path / "d") != first
    assert content_hash(tmp_path / "missing") == "missing:missing"
