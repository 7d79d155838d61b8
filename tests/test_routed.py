"""routed: a concept's units and gate are frozen after its step, so earlier concepts and class
prompts never change; the hooks compute what the adapter computed; a full pool stops claiming
units; each concept exports as its own LoRA (tiny preset, a few steps)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lifelong_diffusion.backbone import Backbone
from lifelong_diffusion.folded import fold, folded_factors
from lifelong_diffusion.lora import STUDENT
from lifelong_diffusion.methods.routed import GATE, Routed, Router, concept_gate, pool_size
from lifelong_diffusion.snapshot import load_snapshot, read_train_log
from lifelong_diffusion.train import TrainConfig
from lifelong_diffusion.world import DEFAULT_SEQUENCE

C1, C2 = DEFAULT_SEQUENCE[:2]
CFG = TrainConfig(method="routed", steps=3, batch_size=1, device="cpu", lr=1e-2)
RANK = CFG.lora_rank


@pytest.fixture(scope="module")
def run(two_steps):
    return two_steps(CFG, "routed")


def test_earlier_concepts_and_class_prompts_never_change(run):
    _, evals = run
    assert evals[C2]["per_concept"][C1] == evals[C1]["per_concept"][C1]  # R[2][1] == R[1][1]
    assert evals[C2]["class_prompts"] == evals["base"]["class_prompts"]  # the bare base


def test_the_pool_grows_by_each_concepts_units_and_earlier_ones_stay(run):
    out, _ = run
    s1, s2 = load_snapshot(out / C1), load_snapshot(out / C2)
    assert pool_size(s1.state) == RANK and pool_size(s2.state) == 2 * RANK
    for path, (b, a) in folded_factors(s1.state).items():
        b2, a2 = folded_factors(s2.state)[path]
        assert torch.equal(b2[:, :RANK], b) and torch.equal(a2[:RANK], a)
    t1, t2 = (c["token"] for c in s2.concepts)
    assert torch.equal(s2.state[f"{GATE}{t1}"], torch.ones(RANK))
    borrowed = s2.state[f"{GATE}{t2}"][:RANK]
    assert borrowed.abs().sum() > 0 and torch.equal(s2.state[f"{GATE}{t2}"][RANK:], torch.ones(RANK))
    assert torch.equal(concept_gate(s2, t1), torch.cat([torch.ones(RANK), torch.zeros(RANK)]))
    log = read_train_log(out / C2)
    assert log["own_units"] == RANK and log["pool_units"] == 2 * RANK
    assert log["borrowed"] == pytest.approx(borrowed.tolist())


def test_routing_computes_what_the_adapter_computed(lora_unet, unet_eps):
    unet = lora_unet(0)
    with_adapter = unet_eps(unet)
    plain = Backbone.load("tiny-random", "cpu").unet
    base = unet_eps(plain)
    router = Router(plain, folded_factors(fold({}, unet, STUDENT)), torch.ones(RANK))
    torch.testing.assert_close(unet_eps(plain), with_adapter, atol=1e-5, rtol=1e-4)
    router.remove()
    torch.testing.assert_close(unet_eps(plain), base)  # the hooks are gone


def test_a_full_pool_claims_no_units(two_steps):
    cfg = replace(CFG, method_params={"routed": {"max_units": RANK}})
    out, _ = two_steps(cfg, "routed-full", evaluate=False)
    s2 = load_snapshot(out / C2)
    assert pool_size(s2.state) == RANK and read_train_log(out / C2)["own_units"] == 0
    gate = s2.state[f"{GATE}{s2.concepts[1]['token']}"]
    assert len(gate) == RANK and gate.abs().sum() > 0  # it learnt to borrow, nothing else


def test_each_concept_exports_its_own_lora(run):
    out, _ = run
    s2 = load_snapshot(out / C2)
    unet = Backbone.load("tiny-random", "cpu").unet
    exports = Routed.lora_exports(s2, unet)
    assert [e.token for e in exports] == [c["token"] for c in s2.concepts]
    assert [e.rank for e in exports] == [RANK, 2 * RANK]  # the second borrows the first's units


@pytest.mark.parametrize("bad", [-1, 2.5, "many"])
def test_bad_max_units_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="max_units"):
        Routed(max_units=bad)
