"""The method contract, for every registered method (the registry, not a hand list) on both
backbone families: a 2-concept sequence trains; step 2 is identical without the first
concept's data (replay-free: lfs_kd/lfs distil on the teacher's own samples, lfs keeps its
banks in the snapshot, merge/clora keep folded updates, ewc/ewc_dc/dsc read only the current
concept, independent keeps adapters); a snapshot survives a save/load round trip; and S_2
evaluates through the method's generation hooks."""
from __future__ import annotations

import json
import shutil

import pytest

from lifelong_diffusion.evaluate import EvalConfig, evaluate_snapshot
from lifelong_diffusion.methods import METHODS
from lifelong_diffusion.snapshot import empty_snapshot, load_snapshot, save_snapshot
from lifelong_diffusion.train import TrainConfig, train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE, concept_by_name

C1, C2 = DEFAULT_SEQUENCE[:2]
KD = {"samples_per_prompt": 1, "batch_size": 1, "sampler_steps": 2}
FAST = {"lfs_kd": KD, "lfs": KD}  # the rest keep their defaults
EVAL = EvalConfig(seeds=[0, 1], steps=2, device="cpu")


@pytest.mark.parametrize("base", ["tiny-random", "tiny-sdxl"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_contract(method, base, world_concepts, tmp_path):
    cfg = TrainConfig(method=method, steps=3, batch_size=2, device="cpu", method_params=FAST)
    processed = world_concepts / "processed"
    save_snapshot(empty_snapshot(base), tmp_path / "base")
    train_concept(tmp_path / "base", processed / C1, tmp_path / C1, cfg, progress=False)
    fingerprint = train_concept(tmp_path / C1, processed / C2, tmp_path / C2, cfg, progress=False)

    # replay-free: only concept 2's processed folder and S_1 exist for the re-run
    alone = tmp_path / "alone"
    shutil.copytree(processed / C2, alone / C2)
    assert train_concept(tmp_path / C1, alone / C2, tmp_path / "again", cfg, progress=False) == fingerprint

    snap = load_snapshot(tmp_path / C2)
    assert snap.method == method and [c["name"] for c in snap.concepts] == [C1, C2]
    assert save_snapshot(snap, tmp_path / "copy") == fingerprint == snap.fingerprint()

    words = [concept_by_name(c).class_word for c in (C1, C2)]
    metrics = evaluate_snapshot(tmp_path / C2, processed, tmp_path / "eval", EVAL, words)
    assert set(metrics["per_concept"]) == {C1, C2} and set(metrics["class_prompts"]) == set(words)
    for scores in metrics["per_concept"].values():
        assert len(scores["samples"]["clip_i"]) == len(EVAL.seeds)
        assert -1.0 <= scores["clip_i"] <= 1.0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["method"] == method
    assert (tmp_path / "eval" / "grid.png").exists()
