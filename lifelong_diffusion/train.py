"""One lifelong step: learn concept t on top of snapshot S_{t-1} and write S_t.

The step every method shares (docs/methods.md#shared-step): load S_{t-1} as a frozen teacher adapter, start
the student from it (or fresh), add the new identifier token, train on the concept's few
images with L = L_denoise + method regularizer, save S_t. Only concept t's images are read.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .backbone import Backbone, Conditioning
from .base_model import pick_device
from .config import TrainConfig
from .diffusion import denoising_target, snr_weight
from .export import export_standard_files
from .lora import STUDENT, TEACHER, add_lora, adapter_parameters, adapter_weights, lora_settings, using_adapter
from .methods import Method, StepContext, build_method, snapshot_method
from .fileio import sha256_file
from .snapshot import Snapshot, load_snapshot, save_snapshot
from .stamps import fingerprint_of, inputs_key


class ConfigError(ValueError):
    """params.yaml's train values cannot continue the stored sequence (e.g. a changed LoRA rank)."""


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
    """The backbone with teacher (frozen S_{t-1}) and student adapters and token embeddings;
    what a method sees of it is methods.base.TrainingView."""

    def __init__(self, backbone: Backbone, prev: Snapshot, concept: Concept, cfg: TrainConfig,
                 method: Method):
        self.backbone, self.unet, self.snr_gamma = backbone, backbone.unet, cfg.snr_gamma
        self.batch_size = cfg.batch_size
        backbone.add_tokens(prev.tokens)
        init = backbone.initial_embedding(method.token_init, concept.class_word)
        backbone.add_tokens({concept.token: init})
        self.token = concept.token
        self.lora = self._lora_settings(prev, cfg)
        teacher_lora = prev.lora or self.lora
        add_lora(self.unet, teacher_lora, TEACHER, prev.adapter)
        add_lora(self.unet, self.lora, STUDENT, None if method.fresh_adapter else prev.adapter)
        self.unet.set_adapter(STUDENT)
        # LoRA weights and their AdamW state in fp32 whatever the base's precision
        for param in adapter_parameters(self.unet, STUDENT):
            param.data = param.data.float()
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.unet.train()  # diffusers checkpoints only in training mode
        self._train_only_new_token()

    @staticmethod
    def _lora_settings(prev: Snapshot, cfg: TrainConfig) -> dict:
        wanted = lora_settings(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        if prev.lora and prev.lora != wanted:
            raise ConfigError(f"train.lora_* in params.yaml ({wanted}) differ from the settings the "
                             f"sequence was started with ({prev.lora}); restore them or restart "
                             "the sequence from the first concept.")
        return wanted

    def _train_only_new_token(self) -> None:
        """Older tokens stay frozen: mask the gradient of every embedding row but ours, in
        every text encoder."""
        for table, token_id in zip(self.backbone.embedding_tables, self.backbone.token_ids(self.token)):
            table.requires_grad_(True)
            mask = torch.zeros_like(table[:, :1])
            mask[token_id] = 1.0
            table.register_hook(lambda grad, mask=mask: grad * mask)

    def parameter_groups(self, cfg: TrainConfig) -> list[dict]:
        return [{"params": adapter_parameters(self.unet, STUDENT), "lr": cfg.lr},
                {"params": self.backbone.embedding_tables, "lr": cfg.token_lr, "weight_decay": 0.0}]

    @torch.no_grad()
    def embed_prompts(self, prompts: list[str]) -> Conditioning:
        """Conditioning of a method's fixed prompts, without gradient: regularizers read
        them, they never train the token through them."""
        return self.backbone.encode(prompts)

    def student_eps(self, noisy: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        with self.backbone.autocast():
            return self.backbone.predict(noisy, t, cond)

    @torch.no_grad()
    def teacher_eps(self, noisy: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        with using_adapter(self.unet, TEACHER, restore=STUDENT), self.backbone.autocast():
            return self.backbone.predict(noisy, t, cond)

    def snapshot(self, prev: Snapshot, concept: Concept, method: Method, cfg: TrainConfig):
        tokens = dict(prev.tokens, **{concept.token: self.backbone.token_embedding(concept.token)})
        entry = {"name": concept.name, "token": concept.token, "class_word": concept.class_word}
        return Snapshot(
            step=prev.step + 1, name=concept.name, method=cfg.method,
            base_model=prev.base_model, concepts=prev.concepts + [entry], lora=self.lora,
            config=cfg.flat(), tokens=tokens,
            adapter=adapter_weights(self.unet, STUDENT) if method.keeps_adapter else {},
            state=method.state_after_step(self.unet, prev, concept),
        )


@torch.no_grad()
def encode_latents(backbone: Backbone, images: list[Image.Image], mirror: bool = False) -> torch.Tensor:
    """VAE latents of the images (then their mirror images, if asked), encoded once per step."""
    arrays = [np.asarray(img, dtype=np.float32) / 127.5 - 1.0 for img in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if mirror:
        pixels = torch.cat([pixels, pixels.flip(-1)])
    vae = backbone.vae
    pixels = pixels.to(backbone.device, vae.dtype)
    return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


def training_step(student: Student, method: Method, optimizer, scaler, latents, prompts, gen, step):
    """One optimizer step: sample a batch, noise it, predict, add the regularizer, update."""
    scheduler = student.backbone.scheduler
    n = latents.shape[0]
    pick = torch.randint(0, n, (min(n, student.batch_size),), generator=gen)
    x0 = latents[pick]
    picked = [prompts[i] for i in torch.randint(0, len(prompts), (len(pick),), generator=gen)]
    noise = torch.randn(x0.shape, generator=gen).to(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(pick),), generator=gen)
    noisy = scheduler.add_noise(x0, noise, t)
    cond = student.backbone.encode(picked)  # with grad: trains the token
    with method.conditioning(pick):  # lfs: the concept's other photos as in-context examples
        pred = student.student_eps(noisy, t.to(x0.device), cond)
    per_sample = F.mse_loss(pred.float(), denoising_target(scheduler, x0, noise, t).float(),
                            reduction="none").mean((1, 2, 3))
    denoise = (per_sample * snr_weight(scheduler, t, student.snr_gamma).to(per_sample)).mean()
    ctx = StepContext(student.unet, noisy, t, cond, pred, student.student_eps, student.teacher_eps, step)
    reg = method.regularizer(ctx)
    loss = denoise if reg is None else denoise + reg
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # fp16: loss scaling; otherwise the scaler does nothing
    scaler.step(optimizer)
    scaler.update()
    return loss.item(), denoise.item()


def train_inputs_key(prev_dir: Path, concept_dir: Path, cfg: TrainConfig) -> str:
    return inputs_key(fingerprint_of(prev_dir), sha256_file(Path(concept_dir) / "manifest.json"), cfg)


@dataclass
class TrainingRun:
    """One lifelong step set up and ready for its first optimizer step."""

    prev: Snapshot
    concept: Concept
    backbone: Backbone
    method: Method
    student: Student
    latents: torch.Tensor
    prompts: list[str]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    prepare_seconds: float  # the method's preparation (lfs_kd: the teacher's samples)


def prepare_training(prev_dir: Path, concept_dir: Path, cfg: TrainConfig) -> TrainingRun:
    """Load S_{t-1} and concept t, check they fit, build teacher, student and optimizer."""
    prev = load_snapshot(prev_dir)
    concept = read_processed_concept(concept_dir)
    known = {c["token"]: c["name"] for c in prev.concepts}
    if concept.token in known:
        raise ValueError(f"{concept_dir}/manifest.json: token {concept.token} was already learned "
                         f"by '{known[concept.token]}'; give this concept another token.")
    backbone = Backbone.load(prev.base_model, pick_device(cfg.device), cfg.precision,
                             resolution=cfg.resolution)
    snapshot_method(prev).fold_into_base(backbone.unet, prev)  # merge, clora: S_{t-1}'s base
    size = backbone.resolution
    if concept.images[0].size != (size, size):
        raise ValueError(f"{concept_dir} holds {concept.images[0].size} images but the base model "
                         f"works at {size}px: set ingest.resolution: {size} in params.yaml and "
                         "ingest again.")
    method = build_method(cfg.method, cfg.selected_method_params)
    torch.manual_seed(cfg.seed)  # after loading: fresh LoRA weights must not depend on the cache
    student = Student(backbone, prev, concept, cfg, method)
    latents = encode_latents(backbone, concept.images, cfg.mirror)
    started = time.perf_counter()
    method.prepare(student, prev, concept, latents)
    prepare_seconds = time.perf_counter() - started
    prompts = [t.format(token=concept.token, class_word=concept.class_word)
               for t in concept.prompts or cfg.prompt_templates]
    groups = student.parameter_groups(cfg)
    if own := method.trainable_parameters():
        groups.append({"params": own, "lr": cfg.lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(backbone.device.type, enabled=backbone.dtype == torch.float16)
    return TrainingRun(prev, concept, backbone, method, student, latents, prompts, optimizer,
                       scaler, torch.Generator().manual_seed(cfg.seed), prepare_seconds)


def train_concept(prev_dir: Path, concept_dir: Path, out_dir: Path, cfg: TrainConfig,
                  progress: bool = True, on_step: Callable[[int, float, float], None] | None = None) -> str:
    """Train concept t from S_{t-1} in `prev_dir` and write S_t to `out_dir`; returns its
    fingerprint. Reads only `concept_dir` (this concept's images) and the previous snapshot.
    `on_step(step, loss, denoise)` sees every optimizer step (e.g. a tracker's live curve)."""
    started = time.perf_counter()
    run = prepare_training(prev_dir, concept_dir, cfg)
    loop_started = time.perf_counter()
    losses, denoise_losses = [], []
    # mininterval keeps logs short when stderr is a file (DVC, Prefect workers, CI)
    bar = tqdm(range(cfg.steps), desc=f"train {run.concept.name}", disable=not progress,
               mininterval=1.0 if sys.stderr.isatty() else 15.0)
    for step in bar:
        loss, denoise = training_step(run.student, run.method, run.optimizer, run.scaler,
                                      run.latents, run.prompts, run.generator, step)
        losses.append(loss)
        denoise_losses.append(denoise)
        if on_step:
            on_step(step, loss, denoise)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # the bar itself decides when to redraw
    # Per-step cost: the method's preparation and the loop, not what a method does after
    # training (a Fisher pass), which its own train_log reports.
    training_seconds = run.prepare_seconds + time.perf_counter() - loop_started
    snap = run.student.snapshot(run.prev, run.concept, run.method, cfg)
    log = {"loss": losses, "denoise": denoise_losses, "steps": cfg.steps, **run.method.train_log()}
    timing = {"seconds": time.perf_counter() - started, "training_seconds": training_seconds,
              **run.method.timing()}
    return save_snapshot(snap, out_dir, train_log=log, timing=timing,
                         inputs=train_inputs_key(prev_dir, concept_dir, cfg),
                         extras=lambda tmp: export_standard_files(snap, tmp))
