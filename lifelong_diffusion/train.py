"""One lifelong step: learn concept t on top of snapshot S_{t-1} and write S_t.

The step every method shares (METHODS.md): load S_{t-1} as a frozen teacher adapter, start
the student from it (or fresh), add the new identifier token, train on the concept's few
images with L = L_denoise + method regularizer, save S_t. Only concept t's images are read.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .diffusion import denoising_target, snr_weight
from .base_model import image_resolution, load_pipeline, pick_device
from .folded import apply_folded
from .lora import (STUDENT, TEACHER, add_lora, add_tokens, adapter_parameters, adapter_weights,
                   initial_embedding, lora_settings, using_adapter)
from .methods import Method, StepContext, build_method
from .fileio import sha256_file
from .snapshot import Snapshot, load_snapshot, save_snapshot
from .stamps import fingerprint_of, inputs_key

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
    seed: int = 0
    device: str = "auto"

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
class Concept:
    name: str
    token: str
    class_word: str
    prompts: list[str] | None
    images: list[Image.Image]


def read_processed_concept(folder: Path) -> Concept:
    """Load an ingested concept (manifest.json + normalized PNGs written by ingest)."""
    manifest_file = Path(folder) / "manifest.json"
    if not manifest_file.exists():
        raise FileNotFoundError(f"{manifest_file} is missing: ingest the concept first "
                                "(`lifelong ingest <name>` or `dvc repro`).")
    m = json.loads(manifest_file.read_text())
    images = [Image.open(Path(folder) / item["file"]).convert("RGB") for item in m["images"]]
    return Concept(m["name"], m["token"], m["class_word"], m.get("prompts"), images)


class Student:
    """The pipeline with teacher (frozen S_{t-1}) and student adapters and token embeddings."""

    def __init__(self, pipe, prev: Snapshot, concept: Concept, cfg: TrainConfig, method: Method):
        self.pipe, self.unet, self.batch_size, self.snr_gamma = pipe, pipe.unet, cfg.batch_size, cfg.snr_gamma
        add_tokens(pipe.tokenizer, pipe.text_encoder, prev.tokens)
        init = initial_embedding(method.token_init, pipe.tokenizer, pipe.text_encoder,
                                 concept.class_word)
        (self.token_id,) = add_tokens(pipe.tokenizer, pipe.text_encoder, {concept.token: init})
        self.lora = self._lora_settings(prev, cfg)
        teacher_lora = prev.lora or self.lora
        add_lora(self.unet, teacher_lora, TEACHER, prev.adapter)
        add_lora(self.unet, self.lora, STUDENT, None if method.fresh_adapter else prev.adapter)
        self.unet.set_adapter(STUDENT)
        self._train_only_new_token()

    @staticmethod
    def _lora_settings(prev: Snapshot, cfg: TrainConfig) -> dict:
        wanted = lora_settings(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        if prev.lora and prev.lora != wanted:
            raise ValueError(f"train.lora_* in params.yaml ({wanted}) differ from the settings the "
                             f"sequence was started with ({prev.lora}); restore them or restart "
                             "the sequence from the first concept.")
        return wanted

    def _train_only_new_token(self) -> None:
        """Older tokens stay frozen: mask the gradient of every embedding row but ours."""
        table = self.pipe.text_encoder.get_input_embeddings().weight
        table.requires_grad_(True)
        mask = torch.zeros_like(table[:, :1])
        mask[self.token_id] = 1.0
        table.register_hook(lambda grad: grad * mask)

    def parameter_groups(self, cfg: TrainConfig) -> list[dict]:
        table = self.pipe.text_encoder.get_input_embeddings().weight
        return [{"params": adapter_parameters(self.unet, STUDENT), "lr": cfg.lr},
                {"params": [table], "lr": cfg.token_lr, "weight_decay": 0.0}]

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.pipe.text_encoder(input_ids)[0]

    @torch.no_grad()
    def embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings of a method's fixed prompts, without gradient: regularizers read
        them, they never train the token through them."""
        return self.encode_text(tokenize(self.pipe.tokenizer, prompts).to(self.unet.device))

    @torch.no_grad()
    def teacher_eps(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor):
        with using_adapter(self.unet, TEACHER, restore=STUDENT):
            return self.unet(noisy, timesteps, cond).sample

    def snapshot(self, prev: Snapshot, concept: Concept, method: Method, cfg: TrainConfig):
        table = self.pipe.text_encoder.get_input_embeddings().weight
        tokens = dict(prev.tokens, **{concept.token: table[self.token_id].detach().clone()})
        entry = {"name": concept.name, "token": concept.token, "class_word": concept.class_word}
        return Snapshot(
            step=prev.step + 1, name=concept.name, method=cfg.method,
            base_model=prev.base_model, concepts=prev.concepts + [entry], lora=self.lora,
            config=cfg.flat(), tokens=tokens,
            adapter=adapter_weights(self.unet, STUDENT) if method.keeps_adapter else {},
            state=method.state_after_step(self.unet, prev, concept),
        )


@torch.no_grad()
def encode_latents(pipe, images: list[Image.Image], mirror: bool = False) -> torch.Tensor:
    """VAE latents of the images (then their mirror images, if asked), encoded once per step."""
    arrays = [np.asarray(img, dtype=np.float32) / 127.5 - 1.0 for img in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if mirror:
        pixels = torch.cat([pixels, pixels.flip(-1)])
    pixels = pixels.to(pipe.device, pipe.vae.dtype)
    return pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor


def training_step(student: Student, method: Method, optimizer, latents, prompt_ids, gen, step):
    """One optimizer step: sample a batch, noise it, predict, add the regularizer, update."""
    scheduler = student.pipe.scheduler
    n = latents.shape[0]
    pick = torch.randint(0, n, (min(n, student.batch_size),), generator=gen)
    x0 = latents[pick]
    ids = prompt_ids[torch.randint(0, len(prompt_ids), (len(pick),), generator=gen)]
    noise = torch.randn(x0.shape, generator=gen).to(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(pick),), generator=gen)
    noisy = scheduler.add_noise(x0, noise, t)
    cond = student.encode_text(ids.to(x0.device))
    with method.conditioning(pick):  # lfs: the concept's other photos as in-context examples
        pred = student.unet(noisy, t.to(x0.device), cond).sample
    per_sample = F.mse_loss(pred.float(), denoising_target(scheduler, x0, noise, t).float(),
                            reduction="none").mean((1, 2, 3))
    denoise = (per_sample * snr_weight(scheduler, t, student.snr_gamma).to(per_sample)).mean()
    ctx = StepContext(student.unet, noisy, t, cond, pred, student.teacher_eps, step)
    reg = method.regularizer(ctx)
    loss = denoise if reg is None else denoise + reg
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item(), denoise.item()


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def train_inputs_key(prev_dir: Path, concept_dir: Path, cfg: TrainConfig) -> str:
    return inputs_key(fingerprint_of(prev_dir), sha256_file(Path(concept_dir) / "manifest.json"), cfg)


def train_concept(prev_dir: Path, concept_dir: Path, out_dir: Path, cfg: TrainConfig,
                  progress: bool = True) -> str:
    """Train concept t from S_{t-1} in `prev_dir` and write S_t to `out_dir`; returns its
    fingerprint. Reads only `concept_dir` (this concept's images) and the previous snapshot."""
    started = time.perf_counter()
    prev = load_snapshot(prev_dir)
    concept = read_processed_concept(concept_dir)
    known = {c["token"]: c["name"] for c in prev.concepts}
    if concept.token in known:
        raise ValueError(f"{concept_dir}/manifest.json: token {concept.token} was already learned "
                         f"by '{known[concept.token]}'; give this concept another token.")
    pipe = load_pipeline(prev.base_model, pick_device(cfg.device))
    apply_folded(pipe.unet, prev.state)  # merge, clora: S_{t-1} = base + its folded updates
    resolution = image_resolution(pipe)
    if concept.images[0].size != (resolution, resolution):
        raise ValueError(f"{concept_dir} holds {concept.images[0].size} images but the base model "
                         f"works at {resolution}px: set ingest.resolution: {resolution} in "
                         "params.yaml and ingest again.")
    method = build_method(cfg.method, cfg.selected_method_params)
    torch.manual_seed(cfg.seed)  # after loading: fresh LoRA weights must not depend on the cache
    student = Student(pipe, prev, concept, cfg, method)
    latents = encode_latents(pipe, concept.images, cfg.mirror)
    training_started = time.perf_counter()  # per-step cost: the method's preparation and the loop
    method.prepare(student, prev, concept, latents)
    templates = concept.prompts or cfg.prompt_templates
    prompt_ids = tokenize(pipe.tokenizer, [t.format(token=concept.token, class_word=concept.class_word)
                                           for t in templates])
    optimizer = torch.optim.AdamW(student.parameter_groups(cfg), weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses, denoise_losses = [], []
    # mininterval keeps logs short when stderr is a file (DVC, Prefect workers, CI)
    bar = tqdm(range(cfg.steps), desc=f"train {concept.name}", disable=not progress,
               mininterval=1.0 if sys.stderr.isatty() else 15.0)
    for step in bar:
        loss, denoise = training_step(student, method, optimizer, latents, prompt_ids, gen, step)
        losses.append(loss)
        denoise_losses.append(denoise)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # the bar itself decides when to redraw
    # Per-step cost excludes what a method does after training (a Fisher pass), which its
    # own train_log reports.
    training_seconds = time.perf_counter() - training_started
    snap = student.snapshot(prev, concept, method, cfg)
    log = {"loss": losses, "denoise": denoise_losses, "seconds": time.perf_counter() - started,
           "training_seconds": training_seconds, "steps": cfg.steps, **method.train_log()}
    return save_snapshot(snap, out_dir, train_log=log,
                         inputs=train_inputs_key(prev_dir, concept_dir, cfg))
