"""ewc / ewc_dc: Fisher keyed like the adapter, non-negative and mean-normalised, accumulated
online with gamma (recomputed here), a penalty that is zero at the anchor and quadratic in
the distance, absent on the first step, and two gradient sources giving two Fishers."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lifelong_diffusion.backbone import Backbone
from lifelong_diffusion.lora import STUDENT, named_adapter_parameters, set_adapter_weights
from lifelong_diffusion.methods.ewc import FISHER, Ewc, stored_fisher
from lifelong_diffusion.snapshot import load_snapshot, read_timing, read_train_log
from lifelong_diffusion.train import (Student, TrainConfig, encode_latents, read_processed_concept,
                                      train_concept)
from lifelong_diffusion.world import DEFAULT_SEQUENCE

C1, C2 = DEFAULT_SEQUENCE[:2]
GAMMA = 0.5
EWC = TrainConfig(method="ewc", steps=4, batch_size=1, device="cpu", lr=1e-2,
                  method_params={"ewc": {"gamma": GAMMA, "draws": 1, "weight": 1e4},
                                 "ewc_dc": {"draws": 1}})


@pytest.fixture(scope="module")
def run(world_concepts, tiny_start):
    """S_1 by ewc and by ewc_dc, then S_2 by ewc (strong penalty) and by naive."""
    processed, out = world_concepts / "processed", tiny_start("ewc")
    train_concept(out / "base", processed / C1, out / "ewc1", EWC, progress=False)
    train_concept(out / "base", processed / C1, out / "dc1", replace(EWC, method="ewc_dc"), progress=False)
    train_concept(out / "ewc1", processed / C2, out / "ewc2", EWC, progress=False)
    train_concept(out / "ewc1", processed / C2, out / "naive2", replace(EWC, method="naive"), progress=False)
    return out, processed


def student_for(prev_dir, processed, method):
    """The student of step C2 on top of `prev_dir`, as train_concept builds it, prepared."""
    prev = load_snapshot(prev_dir)
    backbone = Backbone.load(prev.base_model, "cpu")
    concept = read_processed_concept(processed / C2)
    student = Student(backbone, prev, concept, EWC, method)
    method.prepare(student, prev, concept, encode_latents(backbone, concept.images))
    return student, concept


def test_fisher_is_keyed_like_the_adapter_non_negative_and_mean_normalised(run):
    out, _ = run
    s1 = load_snapshot(out / "ewc1")
    fisher = stored_fisher(s1.state)
    assert set(s1.state) == {FISHER + k for k in s1.adapter}
    assert all(f.shape == s1.adapter[k].shape and (f >= 0).all() for k, f in fisher.items())
    entries = torch.cat([f.flatten() for f in fisher.values()])
    assert float(entries.mean()) == pytest.approx(1.0, rel=1e-5)
    assert float((entries > 0).float().mean()) > 0.5  # gradients reached most of the adapter
    assert read_timing(out / "ewc1")["fisher_seconds"] > 0


def test_first_step_has_no_penalty(run):
    out, _ = run
    log = read_train_log(out / "ewc1")
    assert log["loss"] == log["denoise"]


def test_fisher_accumulates_online_with_gamma(run):
    out, processed = run
    s1, s2 = load_snapshot(out / "ewc1"), load_snapshot(out / "ewc2")
    method = Ewc(**EWC.method_params["ewc"])
    student, concept = student_for(out / "ewc1", processed, method)
    set_adapter_weights(student.unet, STUDENT, s2.adapter)  # the student as the step left it
    with torch.no_grad():
        student.backbone.add_tokens({concept.token: s2.tokens[concept.token]})
    fresh = method.fisher_pass(student.unet)
    f1, f2 = stored_fisher(s1.state), stored_fisher(s2.state)
    for key, f in f2.items():
        assert torch.allclose(f, GAMMA * f1[key] + fresh[key], rtol=1e-4, atol=1e-6), key
    assert not torch.allclose(fresh[key], f1[key])  # a new concept, a new Fisher


def test_penalty_is_zero_at_the_anchor_and_quadratic_in_the_distance(run):
    out, processed = run
    method = Ewc(weight=2.0)
    student, _ = student_for(out / "ewc1", processed, method)
    assert method.regularizer(None).item() == 0.0  # the student starts at phi* = S_1's adapter
    total_fisher = sum(float(f.sum()) for f in stored_fisher(load_snapshot(out / "ewc1").state).values())
    for distance in (0.01, 0.02):  # every parameter moved by `distance` from its anchor
        with torch.no_grad():
            for p in named_adapter_parameters(student.unet, STUDENT).values():
                p.add_(0.01)
        expected = 2.0 / 2 * distance ** 2 * total_fisher
        assert method.regularizer(None).item() == pytest.approx(expected, rel=1e-3)


def test_penalty_holds_the_adapter_near_the_anchor(run):
    out, _ = run
    s1, ewc, naive = (load_snapshot(out / n) for n in ("ewc1", "ewc2", "naive2"))

    def moved(snap) -> float:
        return sum(float((snap.adapter[k] - s1.adapter[k]).norm()) for k in s1.adapter)

    assert moved(ewc) < 0.5 * moved(naive)
    log = read_train_log(out / "ewc2")
    assert log["loss"][0] == pytest.approx(log["denoise"][0], abs=1e-7)  # zero at the anchor
    assert any(total > d for total, d in zip(log["loss"][1:], log["denoise"][1:]))


def test_ewc_and_ewc_dc_fishers_differ(run):
    out, _ = run
    ewc, dc = load_snapshot(out / "ewc1"), load_snapshot(out / "dc1")
    assert all(torch.equal(ewc.adapter[k], dc.adapter[k]) for k in ewc.adapter)  # same training
    a, b = (torch.cat([f.flatten() for f in stored_fisher(s.state).values()]) for s in (ewc, dc))
    assert set(stored_fisher(dc.state)) == set(stored_fisher(ewc.state))
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] < 0.99
    assert float((a - b).abs().mean()) > 0.1  # both have mean 1
