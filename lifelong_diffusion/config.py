"""The train and evaluate sections of params.yaml as typed values, checked on creation.

Kept apart from train.py and evaluate.py (torch, diffusers, open_clip): `lifelong run` checks
params.yaml before it starts anything, and importing those took 7-9 s of its start-up.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_TEMPLATES = ("a photo of {token} {class_word}", "a rendering of {token} {class_word}",
                     "{token} {class_word}", "a picture of a {token} {class_word}")


@dataclass
class TrainConfig:
    method: str = "naive"
    # Per method name, that method's parameters; only the selected method's entry is used, so
    # `dvc exp run -S train.method=lfs_kd` switches method without editing anything else.
    method_params: dict[str, dict] = field(default_factory=dict)
    steps: int = 200
    batch_size: int = 4
    lr: float = 1e-3
    token_lr: float = 5e-3
    lora_rank: int = 4
    lora_alpha: float = 4.0
    # Min-SNR-gamma loss weights (null: plain MSE). Unweighted, the nearly-clean timesteps
    # dominate the gradient on a few photos and the concept's colours and pattern, decided
    # at high noise, were not learnt in 300 steps (measured on the world preset).
    snr_gamma: float | None = 5.0
    # Attention projections and the resnets' 3x3 convs (names as in SD's UNet). A pattern is
    # drawn at the finest level; the world's UNet has no attention there, and with attention
    # targets alone the striped star was never learnt (pattern read 0/8 vs 8/8 with the convs).
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0",
                                                             "conv1", "conv2"])
    # Also train on the photos' mirror images. Off: a mirror changes what makes many concepts
    # personal (lettering, a logo's side, the direction of stripes); on the world preset the
    # mirrored diagonal stripes are another pattern, and the adapter learnt a blend of both.
    mirror: bool = False
    prompt_templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    # fp32 | bf16 | fp16 | auto (bf16 on a GPU, fp32 on CPU): the frozen UNet's weights and the
    # forward passes; LoRA weights, token rows and optimizer state stay fp32 (backbone.py)
    precision: str = "auto"
    # Recompute activations in the backward pass: less memory (SD-1.5 at 512 px, SDXL at
    # 1024 px on one GPU), about a third more time per step
    gradient_checkpointing: bool = False
    # Image size to train at (params.yaml: base.resolution); null = the base model's own
    resolution: int | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        """Bad values fail here, before anything is loaded or overwritten (`steps: -5` once
        retrained every concept with 0 steps)."""
        checks = {"steps": (int, 0), "batch_size": (int, 1), "lora_rank": (int, 1),
                  "lr": (float, 0.0), "token_lr": (float, 0.0), "lora_alpha": (float, 0.0)}
        for key, (kind, low) in checks.items():
            value = getattr(self, key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or (kind is int and not isinstance(value, int)) or value < low:
                raise ValueError(f"params.yaml: train.{key} is {value!r}; it must be "
                                 f"{'an integer' if kind is int else 'a number'} >= {low}")

    def flat(self) -> dict:
        """Scalar view for tracking (lists joined, method params prefixed)."""
        out = {k: v for k, v in vars(self).items() if isinstance(v, (int, float, str))}
        out["lora_targets"] = ",".join(self.lora_targets)
        out.update({f"method.{k}": v for k, v in self.selected_method_params.items()})
        return out

    @property
    def selected_method_params(self) -> dict:
        return self.method_params.get(self.method) or {}


@dataclass
class EvalConfig:
    seeds: list[int] = field(default_factory=lambda: list(range(16)))
    steps: int = 20
    guidance_scale: float = 5.0
    prompt: str = "a photo of {token} {class_word}"
    text_prompt: str = "a photo of a {class_word}"  # CLIP-T text, and the class prompt
    clip_model: str = "ld-tiny-clip"
    clip_weights: str | None = None
    # Weights of an attribute classifier (world preset): exact read-out of shape and pattern
    # for concepts whose concept.yaml carries `world:` ground truth. null = CLIP scores only.
    attribute_classifier: str | None = None
    # A local DINO ViT folder (transformers save_pretrained, e.g. facebook/dino-vits16): adds
    # the `dino` score, DreamBooth's image similarity. null = no DINO score.
    dino_model: str | None = None
    # fp32 | bf16 | fp16 | auto (bf16 on a GPU, fp32 on CPU), as train.precision
    precision: str = "auto"
    # Image size to sample at (params.yaml: base.resolution); null = the base model's own
    resolution: int | None = None
    device: str = "auto"
