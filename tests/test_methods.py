"""Method registry (methods/__init__.py) and the naive baseline."""

from __future__ import annotations

import pytest
import torch

from lifelong_diffusion.methods import METHODS, Method, StepContext, build_method
from lifelong_diffusion.methods.naive import Naive


def test_build_naive():
    method = build_method("naive")
    assert isinstance(method, Naive) and isinstance(method, Method)
    assert method.name == "naive"
    assert method.fresh_adapter is False  # continues S_{t-1}'s adapter
    assert build_method("naive", {}).name == "naive"
    assert build_method("naive", None).name == "naive"


def test_naive_adds_nothing():
    method = build_method("naive")
    unet = torch.nn.Linear(2, 2)
    x = torch.zeros(1, 2)
    ctx = StepContext(unet=unet, noisy_latents=x, timesteps=torch.zeros(1), conditioning=x,
                      prediction=x, student=lambda *a: x, teacher=lambda *a: x, step=0)
    assert method.regularizer(ctx) is None
    assert method.state_after_step(unet, None, None) == {}


def test_registry_is_keyed_by_method_name():
    assert "naive" in METHODS
    for name, cls in METHODS.items():
        assert cls.name == name
        assert issubclass(cls, Method)


def test_unknown_method_lists_available():
    with pytest.raises(ValueError) as info:
        build_method("ewc-typo")
    msg = str(info.value)
    assert "'ewc-typo'" in msg
    assert "train.method" in msg
    assert "params.yaml" in msg
    assert f"choose one of: {', '.join(sorted(METHODS))}" in msg
    assert "naive" in msg


def test_unknown_method_param_is_an_error():
    with pytest.raises(TypeError):
        build_method("naive", {"no_such_param": 1})
