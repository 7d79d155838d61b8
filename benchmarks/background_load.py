"""What a small background load costs the training loop on 2 cores, and whether its
scheduling priority changes that (the question behind flows/servers.py's SCHED_IDLE server).

    python -m benchmarks.background_load                  # 300 steps, 3 rounds (about 10 min)
    python -m benchmarks.background_load --steps 100 --rounds 1   # a quick look

Trains the default sequence's first concept from the base, once per condition and round, in
this process, from a fresh copy of the project in a temporary folder. Beside each run, a
second process wakes every ~0.1 s and spins for 8 ms (like a server's polling loops and
request handling, at about 8% of one core): "none" runs without it, "normal" at normal
priority, "nice" at nice 19, "idle" under SCHED_IDLE. Conditions alternate within each round,
so a drift in the machine's speed spreads over all of them. The last stdout line is one JSON
object: {"loop_seconds": {condition: mean}, "load_cpu_seconds": {condition: mean},
"slowdown": {condition: mean loop / mean "none" loop - 1}, "steps": .., "rounds": ..,
"load_before": .., "cores_idle": ..}
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.orchestration import cpu_seconds, load_average, make_project

CONDITIONS = ("none", "normal", "nice", "idle")
SPIN = """import time
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < 0.008:
        pass
    time.sleep(0.092)
"""


def lower(condition: str):
    """preexec_fn that gives the load process its priority."""
    return {"normal": None, "nice": lambda: os.nice(19),
            "idle": lambda: os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))}[condition]


def timed_training(root: Path, out: Path, steps: int, condition: str) -> tuple[float, float]:
    """(the loop's seconds from timing.json, the load's CPU seconds) of one training run."""
    from lifelong_diffusion.project import BASE, Project
    from lifelong_diffusion.train import train_concept

    project = Project(root)
    name = project.sequence()[0]
    cfg = dataclasses.replace(project.train_config(), steps=steps)
    load = None if condition == "none" else subprocess.Popen(
        [sys.executable, "-c", SPIN], preexec_fn=lower(condition))
    try:
        train_concept(project.snapshot_dir(BASE), project.processed_dir(name), out, cfg, progress=False)
        load_cpu = sum(cpu_seconds(load.pid)[1:]) if load else 0.0  # user + system
    finally:
        if load:
            load.kill()
            load.wait()
    return json.loads((out / "timing.json").read_text())["training_seconds"], load_cpu


def prepare(root: Path) -> None:
    """S_0 and the first concept's processed photos, as the pipeline's first stages write them."""
    from lifelong_diffusion.ingest import ingest_concept
    from lifelong_diffusion.project import BASE, Project
    from lifelong_diffusion.snapshot import empty_snapshot, save_snapshot

    make_project(root, {})
    project = Project(root)
    name = project.sequence()[0]
    save_snapshot(empty_snapshot(project.section("base")["model"]), project.snapshot_dir(BASE))
    ingest_concept(project.concept_dir(name), project.processed_dir(name),
                   taken_tokens=project.taken_tokens(name), **project.section("ingest"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per condition")
    args = parser.parse_args(argv)
    load_before = load_average()
    loops: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    cpu: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        prepare(root)
        timed_training(root, Path(tmp) / "warmup", 20, "none")  # first-call costs, not timed
        for index in range(args.rounds):
            for condition in CONDITIONS:
                seconds, load_cpu = timed_training(root, Path(tmp) / f"{condition}{index}",
                                                   args.steps, condition)
                loops[condition].append(seconds)
                cpu[condition].append(load_cpu)
                print(f"round {index} {condition}: loop {seconds:.1f} s, load {load_cpu:.2f} CPU s",
                      flush=True)
    mean = {c: sum(v) / len(v) for c, v in loops.items()}
    result = {"loop_seconds": {c: round(v, 2) for c, v in mean.items()},
              "load_cpu_seconds": {c: round(sum(v) / len(v), 2) for c, v in cpu.items()},
              "slowdown": {c: round(v / mean["none"] - 1, 3) for c, v in mean.items()},
              "steps": args.steps, "rounds": args.rounds,
              "load_before": round(load_before, 2), "cores_idle": load_before < 0.5}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
