"""The orchestration tax: the default sequence through `lifelong run` (DVC + Prefect + MLflow)
against the same work as plain library calls in one process.

    python -m benchmarks.orchestration                 # params.yaml as shipped (about 20 min)
    python -m benchmarks.orchestration --steps 20 --seeds 2   # a quick look
    python -m benchmarks.orchestration --rounds 2   # pipeline, plain, plain, pipeline

Both runs start from a fresh copy of the project (data/concepts, params.yaml, dvc.yaml) in a
temporary folder, one after the other, on the same cores. The plain run is a fresh Python
process that does what the stages do, in order, timed per phase: import the library
("startup"), write S_0, ingest every concept, evaluate the base, then per concept train and
evaluate, then the continual report; it registers nothing. The pipeline run's stages are
timed from DVC's "Running stage" lines; each stage's extra time is its wall time minus the
plain run's phase (process start, imports, Prefect flow and task bookkeeping), and
registration has no plain counterpart. The last stdout line is one JSON object:
{"ratio": .., "ratio_without_plain_imports": .., "ratio_training_matched": ..,
 "pipeline_seconds": .., "plain_seconds": ..,
 "server_start_seconds": ..,
 "extra_seconds": {"startup": .., "base": .., "ingest": .., "baseline": .., "train": ..,
                   "evaluate": .., "continual": .., "register": ..}, "cores_idle": ..,
 "extra_in_flow_seconds": {..}, "after_flow_seconds": {..}, "around_stage_seconds": {..}}
The last three split each stage's extra time, from the stage worker's own timings: in its flow
beyond the library call, in the clean-up after it, and around it (DVC, the stage command).
`ratio_without_plain_imports` leaves the plain run's imports out, as sessions 12-14 did.
`ratio_training_matched` puts the plain run's training-loop seconds (timing.json) in place of
the pipeline's: the same loops, whose speed drifts between two runs. `cpu_seconds` gives the
CPU time of each process of the pipeline run (servers, worker, DVC), `training_loop_seconds`
the loops' seconds in both runs. With `--rounds N` the figures are those of the mean run on
each side (the ratio of total seconds), and `ratio_by_round` gives each pair's ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from flows.worker import TIMES_ENV

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGE_LINE = re.compile(r"Running stage '([^'@]+)(?:@[^']*)?'")


def make_project(root: Path, overrides: dict) -> Path:
    root.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copytree(REPO / "data" / "concepts", root / "data" / "concepts")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    # the shipped evaluators, read from the repository
    for key in ("clip_weights", "attribute_classifier"):
        if params["evaluate"].get(key):
            params["evaluate"][key] = str(REPO / params["evaluate"][key])
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


# process kinds by command line, for the CPU seconds each takes during the pipeline run
KINDS = (("prefect_server", "prefect server start"), ("stage_worker", "flows.worker"),
         ("dvc", "dvc"), ("lifelong_run", "lifelong run"), ("stage_command", "lifelong"))
CLOCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: [state, ppid, ..., utime, stime, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> tuple[str | None, float, float] | None:
    """(kind, user and system CPU seconds so far) of one process, None if it is gone; kind
    None while its command line reads empty (a process that is exiting)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        fields = stat_fields(pid)
    except (OSError, IndexError):
        return None
    kind = next((k for k, needle in KINDS if needle in cmdline), "other") if cmdline else None
    return kind, int(fields[11]) / CLOCK, int(fields[12]) / CLOCK


class CpuSampler(threading.Thread):
    """CPU seconds per process kind in the process tree of one command (the servers, the
    worker, DVC), read from /proc twice a second: a process that ends between two reads loses
    at most half a second."""

    def __init__(self, root_pid: int):
        super().__init__(daemon=True)
        self.tree, self.last, self.done = {root_pid}, {}, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
            for pid in filter(self.ours, pids):
                if (seen := cpu_seconds(pid)) is not None:
                    kind, user, system = seen
                    self.last[pid] = (kind or self.last.get(pid, ("other",))[0], user, system)

    def ours(self, pid: int) -> bool:
        """In the tree: a parent is, read in pid order (children usually after parents)."""
        if pid not in self.tree:
            try:
                parent = int(stat_fields(pid)[1])
            except (OSError, IndexError):
                return False
            if parent in self.tree:
                self.tree.add(pid)
        return pid in self.tree

    def totals(self) -> dict[str, dict[str, float]]:
        """{kind: {"user": s, "system": s}}"""
        self.done.set()
        self.join()
        out: dict[str, dict[str, float]] = {}
        for kind, user, system in self.last.values():
            into = out.setdefault(kind, {"user": 0.0, "system": 0.0})
            into["user"] = round(into["user"] + user, 1)
            into["system"] = round(into["system"] + system, 1)
        return out


def pipeline_run(root: Path) -> dict:
    """`lifelong run` in a fresh DVC repository; per-stage wall times from its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    times = root / "stage_times.jsonl"  # the stage worker's own timing of each stage
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PREFECT_HOME=str(root / ".prefect"),
               **{TIMES_ENV: str(times)})
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=root, check=True, env=env)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots", dirs_exist_ok=True)
    start = time.perf_counter()
    process = subprocess.Popen([str(BIN / "lifelong"), "run"], cwd=root, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = CpuSampler(process.pid)
    sampler.start()
    marks, server_ready = [], None
    for line in process.stdout:
        now = time.perf_counter() - start
        if line.startswith("Prefect API:"):
            server_ready = now
        if match := STAGE_LINE.search(line):
            marks.append((match.group(1), now))
    if process.wait():
        raise SystemExit(f"lifelong run failed in {root}")
    total = time.perf_counter() - start
    cpu = sampler.totals()
    stages: dict[str, float] = {}
    for (stage, at), (_, until) in zip(marks, [*marks[1:], ("end", total)]):
        stages[stage] = stages.get(stage, 0.0) + until - at
    # before the first stage: DVC's start, the Prefect server's start, the up-front checks
    stages["startup"] = marks[0][1] if marks else total
    return {"seconds": total, "server_start_seconds": server_ready, "stages": stages,
            "in_worker": worker_times(times), "cpu": cpu, "training": training_seconds(root)}


def worker_times(path: Path) -> dict[str, dict[str, float]]:
    """Per DVC stage, the seconds the worker spent in its flows and after them (clean-up)."""
    out: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        stage = "baseline" if record["argv"] == ["evaluate", "base"] else record["argv"][0]
        into = out.setdefault(stage, {"flow": 0.0, "after": 0.0})
        into["flow"] += record["flow_seconds"]
        into["after"] += record["after_seconds"]
    return out


def plain_run(root: Path) -> dict:
    """The same sequence as library calls in this process, timed per phase. Run it in a fresh
    interpreter (`--plain ROOT`, as `plain_process` does): its one round of imports is the
    plain run's "startup", as a script of library calls would pay it."""
    start = time.perf_counter()
    from lifelong_diffusion.continual import continual_report
    from lifelong_diffusion.evaluate import evaluate_snapshot
    from lifelong_diffusion.ingest import ingest_concept
    from lifelong_diffusion.project import BASE, Project
    from lifelong_diffusion.snapshot import empty_snapshot, save_snapshot
    from lifelong_diffusion.train import train_concept

    project = Project(root)
    phases: dict[str, float] = {"startup": time.perf_counter() - start}

    def timed(phase: str, work):
        start = time.perf_counter()
        result = work()
        phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - start
        return result

    order, cfg, eval_cfg = project.sequence(), project.train_config(), project.eval_config()
    timed("base", lambda: save_snapshot(empty_snapshot(project.section("base")["model"]),
                                        project.snapshot_dir(BASE)))
    for name in order:
        timed("ingest", lambda: ingest_concept(project.concept_dir(name), project.processed_dir(name),
                                               taken_tokens=project.taken_tokens(name),
                                               **project.section("ingest")))
    words = project.class_words()
    base = timed("baseline", lambda: evaluate_snapshot(project.snapshot_dir(BASE), project.processed_dir(),
                                                       project.eval_dir(BASE), eval_cfg, words))
    steps = []
    for name in order:
        timed("train", lambda: train_concept(project.snapshot_dir(project.previous(name)),
                                             project.processed_dir(name), project.snapshot_dir(name),
                                             cfg, progress=False))
        steps.append(timed("evaluate", lambda: evaluate_snapshot(
            project.snapshot_dir(name), project.processed_dir(), project.eval_dir(name), eval_cfg)))
    timed("continual", lambda: continual_report(base, steps, project.summary_file.parent))
    return {"seconds": time.perf_counter() - start, "phases": phases}


def training_seconds(root: Path) -> float:
    """The steps' own training seconds (preparation and optimizer loop, from timing.json): the
    same figure in both runs, so a gap here is torch running slower, not bookkeeping around it."""
    from lifelong_diffusion.project import Project
    from lifelong_diffusion.snapshot import read_timing

    project = Project(root)
    return sum(read_timing(project.snapshot_dir(name)).get("training_seconds", 0.0)
               for name in project.sequence())


def plain_process(root: Path) -> dict:
    """plain_run in a fresh interpreter, so that its imports are timed as the pipeline's are."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.orchestration", "--plain", str(root)],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the plain run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def load_average() -> float:
    return os.getloadavg()[0]


def one_round(tmp: Path, index: int, overrides: dict) -> tuple[dict, dict]:
    """The pipeline run and the plain run from fresh copies of the project. Odd rounds run the
    plain one first (pipeline, plain, plain, pipeline, ...): this machine's speed drifted by
    30% within an hour (session 17), and a drift then favours neither side."""
    kinds = ("pipeline", "plain") if index % 2 == 0 else ("plain", "pipeline")
    runs = {}
    for kind in kinds:
        root = make_project(tmp / f"{kind}-{index}", overrides)
        if kind == "pipeline":
            runs[kind] = pipeline_run(root)
            print(f"pipeline: {runs[kind]['seconds']:.0f} s {runs[kind]['stages']}", flush=True)
        else:
            runs[kind] = {**plain_process(root), "training": training_seconds(root)}
            print(f"plain: {runs[kind]['seconds']:.0f} s {runs[kind]['phases']}", flush=True)
    return runs["pipeline"], runs["plain"]


def mean_of(values: list):
    """The mean of numbers, or key by key of (nested) dicts of numbers; None stays None."""
    if isinstance(values[0], dict):
        keys = dict.fromkeys(k for v in values for k in v)
        return {k: mean_of([v[k] for v in values if k in v]) for k in keys}
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)


def figures(pipeline: dict, plain: dict) -> dict:
    """The published figures of one pipeline run against one plain run (or their means)."""
    extra = {stage: round(seconds - plain["phases"].get(stage, 0.0), 1)
             for stage, seconds in pipeline["stages"].items()}
    return {
        "ratio": round(pipeline["seconds"] / plain["seconds"], 3),
        # sessions 12-14 timed the plain run after its imports (the ratio they published)
        "ratio_without_plain_imports": round(pipeline["seconds"] / (plain["seconds"] - plain["phases"]["startup"]), 3),
        # torch's speed drifts by several percent between two runs minutes apart on one
        # machine (the same training loops: 364 s in the pipeline, 374 s plain); with the
        # plain run's loop seconds in place of the pipeline's, what is left is orchestration
        "ratio_training_matched": round((pipeline["seconds"] - pipeline["training"] + plain["training"])
                                        / plain["seconds"], 3),
        "pipeline_seconds": round(pipeline["seconds"], 1), "plain_seconds": round(plain["seconds"], 1),
        "server_start_seconds": pipeline["server_start_seconds"] and round(pipeline["server_start_seconds"], 1),
        "extra_seconds": extra,
        "stage_seconds": {k: round(v, 1) for k, v in pipeline["stages"].items()},
        "phase_seconds": {k: round(v, 1) for k, v in plain["phases"].items()},
        # where each stage's extra goes: in its flow beyond the library call (Prefect, MLflow),
        # in the clean-up after it, and around it (DVC, the stage command, the hand-over)
        "extra_in_flow_seconds": {k: round(v["flow"] - plain["phases"].get(k, 0.0), 1)
                                  for k, v in pipeline["in_worker"].items()},
        "after_flow_seconds": {k: round(v["after"], 1) for k, v in pipeline["in_worker"].items()},
        "around_stage_seconds": {k: round(pipeline["stages"][k] - v["flow"] - v["after"], 1)
                                 for k, v in pipeline["in_worker"].items() if k in pipeline["stages"]},
        # CPU seconds (user, system) per process of the pipeline run: torch's share is the
        # worker's; the servers' and DVC's take cores from it on a 2-core machine
        "cpu_seconds": {kind: {k: round(v, 1) for k, v in cpu.items()} for kind, cpu in pipeline["cpu"].items()},
        "training_loop_seconds": {"pipeline": round(pipeline["training"], 1),
                                  "plain": round(plain["training"], 1)},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="train.steps (default: params.yaml's)")
    parser.add_argument("--seeds", type=int, help="evaluation seeds (default: params.yaml's)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="pairs of runs, alternating which goes first (2: pipeline, plain, plain, pipeline)")
    parser.add_argument("--plain", metavar="ROOT", help=argparse.SUPPRESS)  # plain_process's child
    args = parser.parse_args(argv)
    if args.plain:
        print(json.dumps(plain_run(Path(args.plain))))
        return {}
    overrides = {"train": {}, "evaluate": {}}
    if args.steps:
        overrides["train"]["steps"] = args.steps
    if args.seeds:
        overrides["evaluate"]["seeds"] = list(range(args.seeds))
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        pairs = [one_round(Path(tmp), index, overrides) for index in range(args.rounds)]
    # the figures of the mean run on each side: the ratio of the total seconds
    result = figures(mean_of([p for p, _ in pairs]), mean_of([q for _, q in pairs]))
    by_round = [figures(p, q) for p, q in pairs]
    result.update(
        rounds=args.rounds,
        ratio_by_round=[r["ratio"] for r in by_round],
        ratio_training_matched_by_round=[r["ratio_training_matched"] for r in by_round],
        # a load average near 0 before the start means the cores were otherwise idle
        load_before=round(load_before, 2), cores_idle=load_before < 0.5)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
