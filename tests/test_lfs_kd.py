"""lfs_kd: relevant prompts, distillation that starts at zero and pulls towards the teacher,
and nothing but the regularizer differing from naive (tiny preset, a few steps)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lifelong_diffusion.methods.lfs_kd import relevant_prompts
from lifelong_diffusion.snapshot import load_snapshot, read_train_log
from lifelong_diffusion.train import TrainConfig, train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE

C1, C2 = DEFAULT_SEQUENCE[:2]
NAIVE = TrainConfig(steps=6, batch_size=1, device="cpu", lr=1e-2)
KD = {"samples_per_prompt": 2, "batch_size": 1, "sampler_steps": 2}


def lfs_kd(**params) -> TrainConfig:
    return replace(NAIVE, method="lfs_kd", method_params={"lfs_kd": {**KD, **params}})


def test_relevant_prompts_are_class_prompts_then_earlier_identifiers():
    earlier = [{"name": "a", "token": "<c1>", "class_word": "star"},
               {"name": "b", "token": "<c2>", "class_word": "heart"}]
    prompts = relevant_prompts(earlier, "star", "a photo of a {class_word}", "a photo of {token} {class_word}")
    assert prompts == ["a photo of a star", "a photo of a heart", "a photo of <c1> star",
                       "a photo of <c2> heart"]
    assert relevant_prompts([], "dog", "a {class_word}", "{token} {class_word}") == ["a dog"]


@pytest.fixture(scope="module")
def steps(world_concepts, tiny_start):
    """S_1 by naive, then S_2 by naive, by lfs_kd with weight 0 and by lfs_kd with a large weight."""
    processed, out = world_concepts / "processed", tiny_start("kd")
    train_concept(out / "base", processed / C1, out / "s1", NAIVE, progress=False)
    for name, cfg in {"naive": NAIVE, "zero": lfs_kd(weight=0.0), "kd": lfs_kd(weight=100.0)}.items():
        train_concept(out / "s1", processed / C2, out / name, cfg, progress=False)
    return out


def test_distillation_is_zero_while_student_equals_teacher(steps):
    log = read_train_log(steps / "kd")
    assert log["loss"][0] == pytest.approx(log["denoise"][0], abs=1e-7)  # S_2 starts as S_1
    assert any(total > d + 1e-6 for total, d in zip(log["loss"][1:], log["denoise"][1:]))


def test_weight_zero_trains_exactly_like_naive(steps):
    naive, zero = load_snapshot(steps / "naive"), load_snapshot(steps / "zero")
    assert zero.method == "lfs_kd" and zero.config["method.weight"] == 0.0
    for key in naive.adapter:
        assert torch.equal(naive.adapter[key], zero.adapter[key]), key


def test_distillation_keeps_the_adapter_near_the_teacher(steps):
    s1, naive, kd = (load_snapshot(steps / n) for n in ("s1", "naive", "kd"))

    def moved(snap) -> float:
        return sum(float((snap.adapter[k] - s1.adapter[k]).norm()) for k in s1.adapter)

    assert moved(kd) < moved(naive)
