"""Folded LoRA updates: the running weights of methods that merge each step's adapter.

`merge` and `clora` train a fresh adapter per concept and afterwards *fold* it into the
running weights, so S_t = base + sum_{tau<=t} dW_tau with dW_tau = s_tau B_tau A_tau per LoRA
layer (s: peft's scaling alpha/r, times a merge coefficient). The snapshot keeps the sum as
concatenated low-rank factors per layer, in the method state:

    folded/<module path>/A   (r_total, in)
    folded/<module path>/B   (out, r_total)   scaling already multiplied in

so B @ A is the whole folded update (for a Conv2d layer A is flattened to (r_total, in*kh*kw)
and B @ A is reshaped to the kernel, which is how peft composes its conv LoRA), plus
`folded_norms`: per step, the Frobenius norm of its update over all layers,
sqrt(sum_l ||dW_l||_F^2) (C-LoRA's loss of plasticity shows as a falling curve; kept in the
state so every step's train_log.json can show the whole history).

Why factors, not dense deltas: storage grows by one rank-r pair per concept (about 3 MB at
rank 4 on SD-1.5's attention projections) where dense deltas of those projections are about
370 MB per snapshot. The factors outgrow the dense matrix only after min(in, out) / (2 r)
concepts at the earliest (40 for a 320-wide layer at rank 4), beyond a personal sequence.
"""
from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

FOLDED = "folded/"
FOLDED_NORMS = "folded_norms"


def base_layer(layer: torch.nn.Module, path: str) -> torch.nn.Linear | torch.nn.Conv2d:
    """The frozen Linear or Conv2d under a peft LoRA layer (or the layer itself before
    adapters exist)."""
    base = layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer
    if not isinstance(base, (torch.nn.Linear, torch.nn.Conv2d)):
        raise ValueError(f"LoRA target {path} is a {type(base).__name__}: folding adapters "
                         "(merge, clora) supports Linear and Conv2d layers only; restrict "
                         "train.lora_targets to those.")
    return base


def lora_layers(unet, adapter: str) -> dict[str, BaseTunerLayer]:
    """Every peft LoRA layer of `unet` holding `adapter`, by module path; raises a clear
    error when one wraps anything but a Linear."""
    layers = {path: m for path, m in unet.named_modules()
              if isinstance(m, BaseTunerLayer) and adapter in getattr(m, "lora_A", {})}
    for path, layer in layers.items():
        base_layer(layer, path)
    return layers


def scaled_factors(layer: BaseTunerLayer, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(s B, A) of one LoRA layer as matrices, with gradient: the update is their product.
    A conv LoRA's B is a 1x1 conv (out, r, 1, 1) and its A a conv (r, in, kh, kw)."""
    b, a = layer.lora_B[adapter].weight, layer.lora_A[adapter].weight
    return b.flatten(1) * layer.scaling[adapter], a.flatten(1)


def layer_update(layer: BaseTunerLayer, adapter: str) -> torch.Tensor:
    """The dense update s B A this adapter adds to the layer's weight, with gradient."""
    scaled_b, a = scaled_factors(layer, adapter)
    return scaled_b @ a


def folded_factors(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(B, A) per module path of the updates folded so far; empty before the first fold."""
    paths = {k[len(FOLDED):].rsplit("/", 1)[0] for k in state if k.startswith(FOLDED)}
    return {p: (state[f"{FOLDED}{p}/B"], state[f"{FOLDED}{p}/A"]) for p in sorted(paths)}


def folded_deltas(state: dict[str, torch.Tensor], device="cpu") -> dict[str, torch.Tensor]:
    """The dense folded update per module path, float32, computed on `device`."""
    return {p: b.to(device, torch.float32) @ a.to(device, torch.float32)
            for p, (b, a) in folded_factors(state).items()}


def _frobenius_sq(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """||B A||_F^2 = sum((B^T B) * (A A^T)): r x r products instead of the dense matrix."""
    return ((b.T @ b) * (a @ a.T)).sum()


def fold(state: dict[str, torch.Tensor], unet, adapter: str,
         weight: float = 1.0) -> dict[str, torch.Tensor]:
    """A copy of `state` with `weight` times the adapter's update appended to the folded
    factors and its norm to `folded_norms`."""
    out, total = dict(state), torch.zeros((), dtype=torch.float64)
    for path, layer in lora_layers(unet, adapter).items():
        scaled_b, a = (f.detach().float().cpu() for f in scaled_factors(layer, adapter))
        scaled_b = scaled_b * weight
        total += _frobenius_sq(scaled_b.double(), a.double())
        for name, new, dim in (("B", scaled_b, 1), ("A", a, 0)):
            key = f"{FOLDED}{path}/{name}"
            out[key] = torch.cat([state[key], new], dim) if key in state else new
    norms = state.get(FOLDED_NORMS, torch.zeros(0))
    out[FOLDED_NORMS] = torch.cat([norms, total.sqrt().float().reshape(1)])
    return out


def update_norms(state: dict[str, torch.Tensor]) -> list[float]:
    """Frobenius norm (over all layers) of each step's folded update, in step order."""
    return state.get(FOLDED_NORMS, torch.zeros(0)).tolist()


@torch.no_grad()
def apply_folded(unet, state: dict[str, torch.Tensor]) -> None:
    """Add the folded update to the base weights: W <- W + B A for every folded layer.
    Works before adapters are attached and after (on the LoRA layer's base_layer); a
    snapshot without folded factors leaves the UNet untouched."""
    for path, delta in folded_deltas(state, unet.device).items():
        weight = base_layer(unet.get_submodule(path), path).weight
        if weight.flatten(1).shape != delta.shape:
            raise ValueError(f"the snapshot's folded update of {path} is {tuple(delta.shape)} "
                             f"but the base model's weight is {tuple(weight.shape)}: the "
                             "snapshot was trained on another base model.")
        weight += delta.reshape(weight.shape).to(weight.dtype)
