"""Per-step training cost: our naive step against a bare diffusers + peft loop, and every
method against naive, in one run, interleaved.

    python -m benchmarks.step                                   # world preset, CPU
    python -m benchmarks.step --preset sd15 --resolution 64 --methods naive
    python -m benchmarks.step --device cuda --preset sd15 --resolution 512 --precision bf16

The bare loop is what a user would write from the diffusers LoRA example: the same UNet
folder, LoRA rank/alpha/targets, trainable token row, batch, timesteps, noise, min-SNR
weighted target, AdamW and precision, and nothing else. Our step adds the teacher adapter,
the method hooks and the backbone seam; `naive_vs_bare` is what those cost.

Timing: after a warm-up, rounds alternate the runs being compared (the order flips every
round), `--steps` optimizer steps each, and the median seconds per step over rounds is
reported, so a slow spell of the machine hits both sides alike. A method is timed against a
naive run in its own interleaved pairs, on step 2 of a sequence (so every regularizer is
active: S_1 was trained with that method); its one-off work (lfs_kd's teacher samples,
ewc's after-step Fisher pass) is reported apart. Ends with one JSON line of figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict

from lifelong_diffusion.backbone import Backbone, native_resolution
from lifelong_diffusion.diffusion import denoising_target, snr_weight
from lifelong_diffusion.ingest import ingest_concept
from lifelong_diffusion.methods import METHODS
from lifelong_diffusion.snapshot import empty_snapshot, load_snapshot, save_snapshot
from lifelong_diffusion.base_model import resolve_base_model
from lifelong_diffusion.train import (TrainConfig, encode_latents, prepare_training, read_processed_concept,
                                      train_concept, training_step)
from lifelong_diffusion.world import DEFAULT_SEQUENCE, concept_by_name, write_concept_folder

REPO = Path(__file__).resolve().parents[1]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class OursRun:
    """Our training step, exactly as train_concept runs it."""

    def __init__(self, prev_dir: Path, concept_dir: Path, cfg: TrainConfig):
        self.run = prepare_training(prev_dir, concept_dir, cfg)
        self.step_index = 0

    def step(self) -> None:
        r = self.run
        training_step(r.student, r.method, r.optimizer, r.scaler, r.latents, r.prompts,
                      r.generator, self.step_index)
        self.step_index += 1


class BareRun:
    """The loop a user writes with diffusers + peft alone (no project code in the step)."""

    def __init__(self, prev_dir: Path, concept_dir: Path, cfg: TrainConfig, token: str, class_word: str):
        prev = load_snapshot(prev_dir)  # the same starting weights as ours: S_1's adapter
        base = prev.base_model
        torch.manual_seed(cfg.seed)
        # Backbone only loads the folder (pipeline class, frozen weights, precision); the
        # step below touches the diffusers objects directly.
        backbone = Backbone.load(base, cfg.device, cfg.precision, resolution=cfg.resolution)
        pipe, self.dtype = backbone.pipe, backbone.dtype
        self.unet, self.text_encoder, self.scheduler = pipe.unet, pipe.text_encoder, pipe.scheduler
        self.unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                         target_modules=cfg.lora_targets, init_lora_weights=True))
        set_peft_model_state_dict(self.unet, prev.adapter)
        lora = [p for n, p in self.unet.named_parameters() if "lora_" in n]
        for p in lora:
            p.data = p.data.float()
        pipe.tokenizer.add_tokens([token])
        self.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
        table = self.text_encoder.get_input_embeddings().weight
        table.requires_grad_(True)
        mask = torch.zeros_like(table[:, :1])
        mask[pipe.tokenizer.convert_tokens_to_ids(token)] = 1.0
        table.register_hook(lambda grad: grad * mask)
        self.latents = encode_latents(backbone, read_processed_concept(concept_dir).images)
        prompts = [t.format(token=token, class_word=class_word) for t in cfg.prompt_templates]
        self.ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt").input_ids.to(backbone.device)
        self.optimizer = torch.optim.AdamW([{"params": lora, "lr": cfg.lr},
                                            {"params": [table], "lr": cfg.token_lr, "weight_decay": 0.0}],
                                           weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler(backbone.device.type, enabled=self.dtype == torch.float16)
        self.device, self.batch, self.gamma = backbone.device, cfg.batch_size, cfg.snr_gamma
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def step(self) -> None:
        gen, n = self.generator, len(self.latents)
        pick = torch.randint(0, n, (min(n, self.batch),), generator=gen)
        x0 = self.latents[pick]
        ids = self.ids[torch.randint(0, len(self.ids), (len(pick),), generator=gen)]
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(pick),), generator=gen)
        noisy = self.scheduler.add_noise(x0, noise, t)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            pred = self.unet(noisy, t.to(self.device), self.text_encoder(ids)[0]).sample
        per_sample = F.mse_loss(pred.float(), denoising_target(self.scheduler, x0, noise, t).float(),
                                reduction="none").mean((1, 2, 3))
        loss = (per_sample * snr_weight(self.scheduler, t, self.gamma).to(per_sample)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def interleaved(runs: dict, steps: int, rounds: int, device: str) -> dict[str, float]:
    """Median seconds per optimizer step of each run over `rounds` alternating rounds."""
    for run in runs.values():  # warm-up: first calls allocate, compile kernels, fill caches
        run.step()
    synchronize(device)
    times = {name: [] for name in runs}
    order = list(runs)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            started = time.perf_counter()
            for _ in range(steps):
                runs[name].step()
            synchronize(device)
            times[name].append((time.perf_counter() - started) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def sequence_start(work: Path, base: str, cfg: TrainConfig, method: str, resolution: int) -> tuple[Path, Path]:
    """S_1 of `method` (a few steps on the first concept) and the second concept's folder."""
    processed = {}
    for name in DEFAULT_SEQUENCE[:2]:
        raw = write_concept_folder(concept_by_name(name), work / "concepts", size=max(64, resolution))
        processed[name] = work / "processed" / name
        if not processed[name].exists():
            ingest_concept(raw, processed[name], resolution=resolution, min_size=min(32, resolution))
    if not (work / "base").exists():
        save_snapshot(empty_snapshot(base), work / "base")
    first = replace(cfg, method=method, steps=2)
    s1 = work / f"s1-{method}"
    train_concept(work / "base", processed[DEFAULT_SEQUENCE[0]], s1, first, progress=False)
    return s1, processed[DEFAULT_SEQUENCE[1]]


def one_off_seconds(run: OursRun) -> dict:
    """A method's work outside the optimizer steps: its preparation (teacher samples) and
    what it does after the step (ewc's Fisher pass)."""
    r = run.run
    started = time.perf_counter()
    r.method.state_after_step(r.student.unet, r.prev, r.concept)
    return {"prepare_s": r.prepare_seconds, "after_step_s": time.perf_counter() - started}


def train_config(args) -> TrainConfig:
    params = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    params.update(device=args.device, precision=args.precision, resolution=args.resolution,
                  batch_size=args.batch_size)
    return TrainConfig(**params)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="world", help="base model: a preset or a diffusers folder")
    parser.add_argument("--resolution", type=int, default=None, help="image size (default: the model's)")
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run and round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--methods", default="all", help="comma-separated, or all")
    args = parser.parse_args(argv)
    cfg = train_config(args)
    methods = sorted(METHODS) if args.methods == "all" else args.methods.split(",")
    load_before = os.getloadavg()[0]
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        resolution = args.resolution or native_resolution(resolve_base_model(args.preset))
        figures = compare(work, args, cfg, methods, resolution)
    figures.update(preset=args.preset, resolution=resolution, precision=args.precision,
                   device=args.device, batch_size=args.batch_size, steps_per_round=args.steps,
                   rounds=args.rounds, threads=torch.get_num_threads(),
                   load_before=round(load_before, 2), seconds=round(time.perf_counter() - started, 1))
    if args.device.startswith("cuda"):
        figures["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        figures["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(figures), flush=True)
    return figures


def compare(work: Path, args, cfg: TrainConfig, methods: list[str], resolution: int) -> dict:
    """naive against bare, then each other method against naive."""
    prev, concept_dir = sequence_start(work, args.preset, cfg, "naive", resolution)
    spec = concept_by_name(DEFAULT_SEQUENCE[1])
    naive = OursRun(prev, concept_dir, cfg)
    bare = BareRun(prev, concept_dir, cfg, spec.token, spec.class_word)
    base_times = interleaved({"naive": naive, "bare": bare}, args.steps, args.rounds, args.device)
    figures = {"naive_vs_bare": round(base_times["naive"] / base_times["bare"], 3),
               "step_s_naive": round(base_times["naive"], 4), "step_s_bare": round(base_times["bare"], 4),
               "it_s_naive": round(1 / base_times["naive"], 2)}
    del bare
    for method in (m for m in methods if m != "naive"):
        prev_m, _ = sequence_start(work, args.preset, cfg, method, resolution)
        run = OursRun(prev_m, concept_dir, replace(cfg, method=method))
        times = interleaved({"naive": naive, method: run}, args.steps, args.rounds, args.device)
        figures[f"ratio_{method}"] = round(times[method] / times["naive"], 3)
        figures[f"step_s_{method}"] = round(times[method], 4)
        figures.update({f"{k}_{method}": round(v, 2) for k, v in one_off_seconds(run).items()})
        del run
    return figures


if __name__ == "__main__":
    main()
