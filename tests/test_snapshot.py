"""Snapshots S_t: exact round trip, content fingerprint, atomic writes (snapshot.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lifelong_diffusion import snapshot as snapshot_module
from lifelong_diffusion.snapshot import (FORMAT, Snapshot, SnapshotError, empty_snapshot,
                                         load_snapshot, read_timing, read_train_log,
                                         save_snapshot)


def make_snapshot(step: int = 2, seed: int = 0) -> Snapshot:
    g = torch.Generator().manual_seed(seed)
    return Snapshot(
        step=step, name="dotted-heart", method="naive", base_model="tiny-random",
        concepts=[{"name": "striped-star", "token": "<c1>", "class_word": "star"},
                  {"name": "dotted-heart", "token": "<c2>", "class_word": "heart"}],
        lora={"rank": 4, "alpha": 4.0, "targets": ["to_q", "to_k", "to_v", "to_out.0"]},
        config={"steps": 4, "lr": 0.001, "method": "naive"},
        adapter={"down.lora_A.weight": torch.randn(4, 32, generator=g),
                 "down.lora_B.weight": torch.randn(32, 4, generator=g)},
        tokens={"<c1>": torch.randn(32, generator=g), "<c2>": torch.randn(32, generator=g)},
        state={"fisher": torch.rand(3, 5, generator=g).double()},
    )


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def test_round_trip(tmp_path):
    snap = make_snapshot()
    log, timing = {"loss": [0.5, 0.25], "steps": 2}, {"seconds": 1.5}
    fp = save_snapshot(snap, tmp_path / "s", train_log=log, inputs="abc", timing=timing)
    loaded = load_snapshot(tmp_path / "s")
    for field in ("step", "name", "method", "base_model", "concepts", "lora", "config"):
        assert getattr(loaded, field) == getattr(snap, field), field
    assert_same_tensors(loaded.adapter, snap.adapter)
    assert_same_tensors(loaded.tokens, snap.tokens)
    assert_same_tensors(loaded.state, snap.state)
    assert loaded.fingerprint() == fp == snap.fingerprint()
    meta = json.loads((tmp_path / "s" / "snapshot.json").read_text())
    assert meta["format"] == FORMAT
    assert meta["fingerprint"] == fp
    assert meta["inputs"] == "abc"
    assert read_train_log(tmp_path / "s") == log
    assert read_timing(tmp_path / "s") == timing
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "adapter.safetensors", "snapshot.json", "state.safetensors", "timing.json",
        "tokens.safetensors", "train_log.json"]
    (tmp_path / "s" / "timing.json").unlink()  # as DVC restores it from its cache
    assert read_timing(tmp_path / "s") == {}


def test_empty_snapshot_round_trip(tmp_path):
    snap = empty_snapshot("tiny-random")
    assert (snap.step, snap.name, snap.method, snap.concepts, snap.lora) == (0, "base", "none", [], None)
    fp = save_snapshot(snap, tmp_path / "base")
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["snapshot.json"]
    loaded = load_snapshot(tmp_path / "base")
    assert loaded == snap  # dataclass equality: no tensors to compare
    assert loaded.fingerprint() == fp


def test_fingerprint_is_content_hash():
    a, b = make_snapshot(), make_snapshot()
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64
    b.tokens["<c1>"] = b.tokens["<c1>"].clone()
    b.tokens["<c1>"][3] += 1e-6
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize("group", ["adapter", "tokens", "state"])
def test_fingerprint_changes_with_one_value(tmp_path, group):
    snap = make_snapshot()
    fp = save_snapshot(snap, tmp_path / "s")
    loaded = load_snapshot(tmp_path / "s")
    assert loaded.fingerprint() == fp
    tensors = getattr(loaded, group)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += 1
    assert loaded.fingerprint() != fp


def test_fingerprint_covers_meaning_not_bookkeeping():
    base = make_snapshot()
    other_concepts = make_snapshot()
    other_concepts.concepts[1]["token"] = "<c9>"
    assert other_concepts.fingerprint() != base.fingerprint()
    other_method = make_snapshot()
    other_method.method = "ewc"
    assert other_method.fingerprint() != base.fingerprint()
    renamed = make_snapshot()
    renamed.config = {"steps": 999}
    assert renamed.fingerprint() == base.fingerprint()  # config is tracked, not hashed


def test_load_missing_folder_names_file(tmp_path):
    missing = tmp_path / "adapters" / "striped-star"
    with pytest.raises(SnapshotError) as info:
        load_snapshot(missing)
    msg = str(info.value)
    assert str(missing / "snapshot.json") in msg
    assert "previous step" in msg


def test_load_wrong_format(tmp_path):
    save_snapshot(make_snapshot(), tmp_path / "s")
    meta_file = tmp_path / "s" / "snapshot.json"
    meta = json.loads(meta_file.read_text())
    meta["format"] = FORMAT + 1
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(SnapshotError, match=f"format {FORMAT + 1} is not {FORMAT}"):
        load_snapshot(tmp_path / "s")


def test_save_replaces_existing_snapshot(tmp_path):
    folder = tmp_path / "s"
    save_snapshot(make_snapshot(seed=0), folder, train_log={"loss": [1.0]})
    fp = save_snapshot(empty_snapshot("tiny-random"), folder)
    loaded = load_snapshot(folder)
    assert loaded.fingerprint() == fp
    assert loaded.adapter == {} and loaded.tokens == {}
    assert sorted(p.name for p in folder.iterdir()) == ["snapshot.json"]  # stale files gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_failing_save_leaves_existing_snapshot_untouched(tmp_path, monkeypatch):
    folder = tmp_path / "adapters" / "s"
    save_snapshot(make_snapshot(seed=0), folder, train_log={"loss": [1.0]})
    before = folder_bytes(folder)
    calls = []

    def failing_save_file(tensors, filename, *args, **kwargs):
        calls.append(Path(filename).name)
        if len(calls) == 2:  # the first file is written, the second fails
            raise OSError("disk full")
        return real_save_file(tensors, filename, *args, **kwargs)

    real_save_file = snapshot_module.save_file
    monkeypatch.setattr(snapshot_module, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_snapshot(make_snapshot(seed=1), folder, train_log={"loss": [2.0]})
    assert len(calls) == 2
    assert folder_bytes(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["s"]  # no temp folders left
    monkeypatch.undo()
    assert load_snapshot(folder).fingerprint() == make_snapshot(seed=0).fingerprint()


def test_failing_first_save_leaves_nothing(tmp_path, monkeypatch):
    def failing_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(snapshot_module, "save_file", failing_save_file)
    with pytest.raises(OSError):
        save_snapshot(make_snapshot(), tmp_path / "s")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SnapshotError):
        load_snapshot(tmp_path / "s")


def test_tampered_weights_are_refused_naming_the_folder(tmp_path):
    save_snapshot(make_snapshot(), tmp_path / "s")
    tensors = snapshot_module.load_file(tmp_path / "s" / "adapter.safetensors")
    tensors["down.lora_A.weight"][0, 0] += 1.0
    snapshot_module.save_file(tensors, tmp_path / "s" / "adapter.safetensors")
    with pytest.raises(SnapshotError, match=r"s: its weights .*changed after the step wrote them"):
        load_snapshot(tmp_path / "s")


def test_edited_meaning_is_refused(tmp_path):
    save_snapshot(make_snapshot(), tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "snapshot.json").read_text())
    meta["concepts"][0]["token"] = "<c9>"
    (tmp_path / "s" / "snapshot.json").write_text(json.dumps(meta))
    with pytest.raises(SnapshotError, match="fingerprint"):
        load_snapshot(tmp_path / "s")


@pytest.mark.parametrize("damage", ["json", "safetensors", "field"])
def test_damaged_files_are_named(tmp_path, damage):
    save_snapshot(make_snapshot(), tmp_path / "s")
    if damage == "json":
        (tmp_path / "s" / "snapshot.json").write_text('{"format": 1, "step": ')
        bad = "snapshot.json"
    elif damage == "safetensors":
        (tmp_path / "s" / "tokens.safetensors").write_bytes(b"\xff" * 20)
        bad = "tokens.safetensors"
    else:
        meta = json.loads((tmp_path / "s" / "snapshot.json").read_text())
        del meta["concepts"]
        (tmp_path / "s" / "snapshot.json").write_text(json.dumps(meta))
        bad = "snapshot.json"
    with pytest.raises(SnapshotError, match=bad) as info:
        load_snapshot(tmp_path / "s")
    assert "re-run its step" in str(info.value)
