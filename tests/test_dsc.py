"""dsc: nothing on the first step, zero while the student equals the teacher, a pull towards
the teacher once it moves, and nothing but the regularizer differing from naive."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lifelong_diffusion.backbone import Backbone
from lifelong_diffusion.lora import STUDENT, adapter_parameters
from lifelong_diffusion.methods import StepContext
from lifelong_diffusion.methods.dsc import Dsc
from lifelong_diffusion.snapshot import load_snapshot, read_train_log
from lifelong_diffusion.train import (Student, TrainConfig, encode_latents, read_processed_concept,
                                      train_concept)
from lifelong_diffusion.world import DEFAULT_SEQUENCE

C1, C2 = DEFAULT_SEQUENCE[:2]
NAIVE = TrainConfig(steps=6, batch_size=1, device="cpu", lr=1e-2)


def dsc(**params) -> TrainConfig:
    return replace(NAIVE, method="dsc", method_params={"dsc": params})


@pytest.fixture(scope="module")
def steps(world_concepts, tiny_start):
    """S_1 by dsc, then S_2 by naive, by dsc with zero weights and by dsc with large ones."""
    processed, out = world_concepts / "processed", tiny_start("dsc")
    train_concept(out / "base", processed / C1, out / "s1", dsc(), progress=False)
    configs = {"naive": NAIVE, "zero": dsc(weight=0.0, beta=0.0), "dsc": dsc(weight=10.0, beta=1e3)}
    for name, cfg in configs.items():
        train_concept(out / "s1", processed / C2, out / name, cfg, progress=False)
    return out, processed


def test_first_step_has_no_regularizer(steps):
    out, _ = steps
    log = read_train_log(out / "s1")
    assert log["loss"] == log["denoise"]


def test_zero_while_student_equals_teacher_then_a_gradient_once_it_moves(steps):
    out, processed = steps
    prev = load_snapshot(out / "s1")
    backbone = Backbone.load(prev.base_model, "cpu")
    concept = read_processed_concept(processed / C2)
    method = Dsc(prompts_per_step=3)
    student = Student(backbone, prev, concept, NAIVE, method)
    method.prepare(student, prev, concept, encode_latents(backbone, concept.images))
    assert len(method.embeddings) == 3  # class prompts of both concepts, C1's identifier prompt
    ctx = StepContext(backbone.unet, None, None, None, None, student.student_eps, student.teacher_eps, 0)
    assert method.regularizer(ctx).item() == pytest.approx(0.0, abs=1e-9)
    params = adapter_parameters(backbone.unet, STUDENT)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    loss = method.regularizer(ctx)
    loss.backward()
    assert loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_zero_weights_train_exactly_like_naive(steps):
    out, _ = steps
    naive, zero = load_snapshot(out / "naive"), load_snapshot(out / "zero")
    assert zero.method == "dsc" and zero.state == {}  # the teacher snapshot is all it keeps
    assert all(torch.equal(naive.adapter[k], zero.adapter[k]) for k in naive.adapter)


def test_consolidation_keeps_the_adapter_near_the_teacher(steps):
    out, _ = steps
    s1, naive, kept = (load_snapshot(out / n) for n in ("s1", "naive", "dsc"))

    def moved(snap) -> float:
        return sum(float((snap.adapter[k] - s1.adapter[k]).norm()) for k in s1.adapter)

    assert moved(kept) < moved(naive)
    log = read_train_log(out / "dsc")
    assert log["loss"][0] == pytest.approx(log["denoise"][0], abs=1e-7)
    assert any(total > d + 1e-6 for total, d in zip(log["loss"][1:], log["denoise"][1:]))


def test_a_distribution_needs_two_prompts():
    with pytest.raises(ValueError, match="at least 2 prompts"):
        Dsc(prompts_per_step=1)
