"""independent: one adapter per concept, chosen by token; earlier concepts are untouched."""
from __future__ import annotations

import pytest
import torch

from lifelong_diffusion.methods.independent import token_adapter
from lifelong_diffusion.snapshot import load_snapshot
from lifelong_diffusion.train import TrainConfig
from lifelong_diffusion.world import DEFAULT_SEQUENCE

C1, C2 = DEFAULT_SEQUENCE[:2]
CFG = TrainConfig(method="independent", steps=3, batch_size=1, device="cpu", lr=1e-2)


@pytest.fixture(scope="module")
def run(two_steps):
    return two_steps(CFG, "independent")


def test_each_concept_keeps_its_own_adapter(run):
    out, _ = run
    s1, s2 = load_snapshot(out / C1), load_snapshot(out / C2)
    kept = token_adapter(s2, s1.concepts[0]["token"])
    assert kept.keys() == s1.adapter.keys()
    assert all(torch.equal(kept[k], s1.adapter[k]) for k in kept)  # nothing of concept 1 changed
    own = token_adapter(s2, s2.concepts[1]["token"])
    assert all(torch.equal(own[k], s2.adapter[k]) for k in own)
    assert any(not torch.equal(own[k], kept[k]) for k in own)  # a separate adapter, not a copy


def test_scores_of_earlier_concepts_never_change(run):
    _, evals = run
    assert evals[C2]["per_concept"][C1] == evals[C1]["per_concept"][C1]  # R[2][1] == R[1][1]


def test_class_prompts_use_the_base_model(run):
    _, evals = run
    assert evals[C2]["class_prompts"] == evals["base"]["class_prompts"]  # zero drift by design
