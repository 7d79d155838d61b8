"""clora: the overlap penalty against the folded past update, zero at the first step and
positive once the second step's adapter moves; random token init; update norms per step."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from lifelong_diffusion.backbone import Backbone
from lifelong_diffusion.folded import fold, folded_factors, lora_layers
from lifelong_diffusion.lora import STUDENT
from lifelong_diffusion.methods.clora import Clora
from lifelong_diffusion.snapshot import empty_snapshot, load_snapshot, read_train_log
from lifelong_diffusion.train import TrainConfig, train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE

C1, C2 = DEFAULT_SEQUENCE[:2]
CFG = TrainConfig(method="clora", steps=3, batch_size=1, device="cpu", lr=1e-2,
                  method_params={"clora": {"weight": 1e3}})


def prepared(unet, state: dict) -> Clora:
    method = Clora(weight=2.0)
    prev = replace(empty_snapshot("tiny-random"), state=state)
    method.prepare(SimpleNamespace(unet=unet), prev, None, None)  # reads only student.unet
    return method


@torch.no_grad()
def overlap(past_layer, layer) -> float:
    """||P ⊙ dW||_F^2 from peft's own dense updates s B A, independent of folded.py."""
    return float(((past_layer.get_delta_weight(STUDENT) * layer.get_delta_weight(STUDENT)) ** 2).sum())


def test_penalty_is_the_overlap_of_past_and_current_update(lora_unet):
    past, current = lora_unet(0), lora_unet(1)
    method = prepared(current, fold({}, past, STUDENT))
    pairs = zip(lora_layers(past, STUDENT).values(), lora_layers(current, STUDENT).values())
    expected = sum(overlap(p, c) for p, c in pairs)
    assert expected > 0
    assert method.penalty().item() == pytest.approx(expected, rel=1e-5)
    reg = method.regularizer(None)  # the penalty reads no batch
    assert reg.item() == pytest.approx(2.0 * expected, rel=1e-5)
    reg.backward()  # the gradient reaches the current adapter
    assert all(l.lora_B[STUDENT].weight.grad.abs().sum() > 0
               for l in lora_layers(current, STUDENT).values())


def test_first_step_has_no_penalty(lora_unet):
    method = prepared(lora_unet(1), {})
    assert method.penalty() is None and method.regularizer(None) is None


def test_random_token_init_has_the_scale_of_a_word():
    backbone = Backbone.load("tiny-random", "cpu")
    (table,) = backbone.embedding_tables
    torch.manual_seed(0)
    random = backbone.initial_embedding("random", "star")
    assert Clora.token_init == "random"
    assert not torch.allclose(random, backbone.word_embedding("star"))
    assert 0.5 < float(random.std() / table.std()) < 2.0
    with pytest.raises(ValueError, match="unknown token_init 'zeros'"):
        backbone.initial_embedding("zeros", "star")


@pytest.fixture(scope="module")
def run(world_concepts, tiny_start):
    """S_0 -> clora S_1 -> clora S_2, and S_1 with no training (its token is the init)."""
    processed, out = world_concepts / "processed", tiny_start("clora")
    train_concept(out / "base", processed / C1, out / C1, CFG, progress=False)
    train_concept(out / "base", processed / C1, out / "zero", replace(CFG, steps=0), progress=False)
    train_concept(out / C1, processed / C2, out / C2, CFG, progress=False)
    return out


def test_penalty_is_zero_at_step_one_and_positive_at_step_two(run):
    log1, log2 = read_train_log(run / C1), read_train_log(run / C2)
    assert log1["loss"] == log1["denoise"]  # nothing folded yet: no regularizer at all
    assert log2["loss"][0] == pytest.approx(log2["denoise"][0], abs=1e-7)  # fresh B = 0
    assert all(total > d + 1e-6 for total, d in zip(log2["loss"][1:], log2["denoise"][1:]))


def test_training_starts_from_a_random_token(run):
    class_word = Backbone.load("tiny-random", "cpu").word_embedding("star")
    assert not torch.allclose(load_snapshot(run / "zero").tokens["<c1>"], class_word, atol=1e-3)


def test_update_norm_of_each_step_is_logged(run):
    log1, log2 = read_train_log(run / C1), read_train_log(run / C2)
    assert log2["update_norms"] == [log1["update_norm"], log2["update_norm"]]
    rank = CFG.lora_rank
    step2 = sum(float((b[:, rank:] @ a[rank:]).norm() ** 2)
                for b, a in folded_factors(load_snapshot(run / C2).state).values())
    assert log2["update_norm"] == pytest.approx(step2 ** 0.5, rel=1e-5) and step2 > 0
    assert load_snapshot(run / C2).adapter == {}
