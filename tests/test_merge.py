"""merge and the folded updates it shares with clora: folding computes what the adapter
computed, storage grows by one rank-r pair per concept, the next teacher is the merged model,
and a merged snapshot evaluates (tiny preset, a few steps)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lifelong_diffusion.backbone import Backbone
from lifelong_diffusion.evaluate import EvalConfig, evaluate_snapshot
from lifelong_diffusion.generation import PersonalizedModel
from lifelong_diffusion.folded import FOLDED, apply_folded, fold, folded_factors, lora_layers
from lifelong_diffusion.lora import STUDENT, TEACHER, add_lora, lora_settings, using_adapter
from lifelong_diffusion.methods import METHODS
from lifelong_diffusion.methods.merge import Merge
from lifelong_diffusion.snapshot import load_snapshot, read_train_log
from lifelong_diffusion.train import TrainConfig, train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE

C1, C2 = DEFAULT_SEQUENCE[:2]
CFG = TrainConfig(method="merge", steps=3, batch_size=1, device="cpu", lr=1e-2)
RANK = CFG.lora_rank


@pytest.mark.parametrize("under_adapters", [False, True])
def test_folded_update_computes_what_the_adapter_computed(lora_unet, unet_eps, under_adapters):
    """base + B_cat A_cat == base with the adapter active (Linear and Conv2d layers); applied
    to the plain layer or to the base_layer under an (identity) peft adapter."""
    unet = lora_unet(0)
    with_adapter = unet_eps(unet)
    folded = Backbone.load("tiny-random", "cpu").unet
    base = unet_eps(folded)
    if under_adapters:
        add_lora(folded, lora_settings(4, 8.0, ["to_q", "to_v"]), TEACHER, None)
    apply_folded(folded, fold({}, unet, STUDENT))
    assert not torch.allclose(with_adapter, base, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(unet_eps(folded), with_adapter, atol=1e-5, rtol=1e-4)


def test_each_fold_appends_one_rank_r_pair_and_its_norm(lora_unet):
    first, second = lora_unet(0), lora_unet(1)
    once = fold({}, first, STUDENT)
    twice = fold(once, second, STUDENT, weight=0.5)
    layers = lora_layers(second, STUDENT)
    for path, (b, a) in folded_factors(twice).items():
        delta = layers[path].get_delta_weight(STUDENT).detach().flatten(1)  # conv: (out, in*k*k)
        assert a.shape == (2 * 4, delta.shape[1]) and b.shape == (delta.shape[0], 2 * 4)
        assert torch.equal(a[:4], once[f"{FOLDED}{path}/A"])  # earlier factors untouched
        torch.testing.assert_close(b[:, 4:] @ a[4:], 0.5 * delta)
    expected = sum(float(l.get_delta_weight(STUDENT).detach().norm() ** 2) for l in layers.values())
    assert twice["folded_norms"].shape == (2,)
    assert twice["folded_norms"][1].item() == pytest.approx(0.5 * expected ** 0.5, rel=1e-5)


def test_folding_into_a_layer_without_a_weight_matrix_is_a_clear_error():
    unet = Backbone.load("tiny-random", "cpu").unet
    state = {f"{FOLDED}conv_norm_out/A": torch.zeros(4, 4), f"{FOLDED}conv_norm_out/B": torch.zeros(32, 4)}
    with pytest.raises(ValueError, match="conv_norm_out is a GroupNorm.*Linear and Conv2d"):
        apply_folded(unet, state)


def test_a_folded_update_of_another_base_model_is_a_clear_error(lora_unet):
    state = fold({}, lora_unet(0), STUDENT)
    path = next(k for k in state if k.endswith("conv1/A"))
    state[path] = torch.zeros(4, 7)
    state[path[:-1] + "B"] = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="trained on another base model"):
        apply_folded(Backbone.load("tiny-random", "cpu").unet, state)


@pytest.fixture(scope="module")
def run(world_concepts, tiny_start, unet_eps):
    """S_0 -> merge S_1 -> merge S_2 (recording the step-2 teacher), and naive S_1."""
    processed, out = world_concepts / "processed", tiny_start("merge")
    seen = {}

    class TeacherProbe(Merge):
        def prepare(self, student, prev, concept, latents):
            super().prepare(student, prev, concept, latents)
            with using_adapter(student.unet, TEACHER, restore=STUDENT):
                seen["teacher"] = unet_eps(student.unet)
            seen["student"] = unet_eps(student.unet)

    train_concept(out / "base", processed / C1, out / C1, CFG, progress=False)
    train_concept(out / "base", processed / C1, out / "naive", replace(CFG, method="naive"),
                  progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(METHODS, "merge", TeacherProbe)
        train_concept(out / C1, processed / C2, out / C2, CFG, progress=False)
    return out, seen


def test_snapshots_keep_growing_factors_and_no_adapter(run):
    out, _ = run
    s1, s2 = load_snapshot(out / C1), load_snapshot(out / C2)
    assert s1.adapter == {} and s2.adapter == {}
    f1, f2 = folded_factors(s1.state), folded_factors(s2.state)
    unet = Backbone.load("tiny-random", "cpu").unet
    add_lora(unet, lora_settings(RANK, CFG.lora_alpha, CFG.lora_targets), STUDENT, None)
    assert f1.keys() == f2.keys() == lora_layers(unet, STUDENT).keys()  # every LoRA target layer
    for path, (b, a) in f2.items():
        assert a.shape[0] == 2 * RANK and b.shape[1] == 2 * RANK and f1[path][0].shape[1] == RANK
        assert torch.equal(b[:, :RANK], f1[path][0]) and torch.equal(a[:RANK], f1[path][1])
    assert any(b[:, RANK:].abs().sum() > 0 for b, _ in f2.values())  # step 2 learned something


def test_merged_snapshot_evaluates_as_the_trained_student(run, unet_eps):
    """merge's first step trains exactly like naive's (fresh adapter, no regularizer): the
    merged model must compute what naive's adapter computes."""
    out, _ = run
    merged = PersonalizedModel(load_snapshot(out / C1)).backbone.unet
    student = PersonalizedModel(load_snapshot(out / "naive")).backbone.unet
    torch.testing.assert_close(unet_eps(merged), unet_eps(student), atol=1e-5, rtol=1e-4)


def test_second_teacher_is_the_first_merged_model_and_student_starts_there(run, unet_eps):
    out, seen = run
    merged = PersonalizedModel(load_snapshot(out / C1)).backbone.unet
    torch.testing.assert_close(seen["teacher"], unet_eps(merged), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(seen["student"], seen["teacher"], atol=1e-6, rtol=1e-5)
    base = Backbone.load("tiny-random", "cpu").unet
    assert not torch.allclose(seen["teacher"], unet_eps(base), atol=1e-4)  # S_1 is not the base


def test_update_norms_are_logged_per_step(run):
    out, _ = run
    log1, log2 = read_train_log(out / C1), read_train_log(out / C2)
    assert log1["update_norms"] == [log1["update_norm"]] and log1["update_norm"] > 0
    assert log2["update_norms"] == [log1["update_norm"], log2["update_norm"]]
    assert load_snapshot(out / C2).state["folded_norms"].tolist() == log2["update_norms"]


def test_two_step_merge_snapshot_evaluates(run, world_concepts):
    out, _ = run
    metrics = evaluate_snapshot(out / C2, world_concepts / "processed", out / "eval",
                                EvalConfig(seeds=[0], steps=2, device="cpu"))
    assert metrics["method"] == "merge" and set(metrics["per_concept"]) == {C1, C2}
    assert all(-1.0 <= v["clip_i"] <= 1.0 for v in metrics["per_concept"].values())
    assert (out / "eval" / "grid.png").exists()
