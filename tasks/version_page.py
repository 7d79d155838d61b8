"""What a registered model version tells the person browsing the registry: the concepts it
knows (tokens, class words, example prompts), how good it is (this step's R row, A and F so
far, with 95% intervals), and how to use it (pyfunc, plain diffusers, `lifelong generate`).

Plain functions of snapshot.json, metrics.json and the continual figures so far; no MLflow
call happens here (tracking.py writes the result)."""
from __future__ import annotations

from dataclasses import dataclass

from lifelong_diffusion.cl_metrics import SAMPLES, SCORES, format_figure, mean_interval

# MLflow's UI renders descriptions as Markdown and swallows anything like an HTML tag, so
# no "<t>" here.
MODEL_DESCRIPTION = (
    "Lifelong few-shot personalization of a text-to-image diffusion model, one version per "
    "learned step: alias `step-N` is the model after step N, `latest-step` the newest. Each "
    "version's description lists the concepts it knows, its scores and how to load it."
)
SHOWN = ("attr_acc", "pattern_acc", "clip_i", "clip_t", "dino")  # scores in the version table


@dataclass
class VersionPage:
    description: str  # Markdown
    tags: dict[str, str]


def version_page(snapshot: dict, eval_metrics: dict, so_far: dict | None, model_name: str) -> VersionPage:
    """`so_far`: the continual figures of steps 1..t (cl_metrics: {score: {A, F, A_ci, ...}}),
    None when unknown."""
    step = snapshot["step"]
    alias = f"step-{step}"
    sections = [
        f"**Step {step}** of a `{snapshot['method']}` sequence on base model "
        f"`{snapshot['base_model']}`: knows {len(snapshot['concepts'])} concept(s).",
        _concepts_table(snapshot["concepts"]),
        _scores_table(snapshot["concepts"], eval_metrics),
    ]
    if so_far:
        sections.append(_figures_line(so_far))
    sections.append(_how_to_use(snapshot, model_name, alias))
    return VersionPage("\n\n".join(sections), _tags(snapshot, eval_metrics, so_far))


def _concepts_table(concepts: list[dict]) -> str:
    rows = ["| concept | token | class word | example prompt |", "|---|---|---|---|"]
    rows += [f"| {c['name']} | `{c['token']}` | {c['class_word']} | "
             f"`a photo of {c['token']} {c['class_word']}` |" for c in concepts]
    return "### Concepts\n\n" + "\n".join(rows)


def _scores_table(concepts: list[dict], eval_metrics: dict) -> str:
    """This step's row of R: each concept's scores over the evaluation seeds, with 95%
    bootstrap intervals where the per-seed values are kept."""
    per_concept = eval_metrics.get("per_concept", {})
    keys = [k for k in SHOWN if any(k in per_concept.get(c["name"], {}) for c in concepts)]
    rows = ["| concept | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for c in concepts:
        scores = per_concept.get(c["name"], {})
        cells = [format_figure(scores.get(k), mean_interval(scores.get(SAMPLES, {}).get(k)), ".2f")
                 if k in scores else "" for k in keys]
        rows.append(f"| {c['name']} | " + " | ".join(cells) + " |")
    seeds = len(next(iter(per_concept.values()), {}).get(SAMPLES, {}).get("clip_i", []))
    note = f"over {seeds} seeds" if seeds else "mean over the evaluation seeds"
    return f"### Scores after this step ({note})\n\n" + "\n".join(rows)


def _figures_line(so_far: dict) -> str:
    lines = [f"- `{score}`: A = {format_figure(f.get('A'), f.get('A_ci'))}, "
             f"F = {format_figure(f.get('F'), f.get('F_ci'))}"
             for score in SCORES if (f := so_far.get(score))]
    return "### The sequence so far (A: final average, F: forgetting)\n\n" + "\n".join(lines)


def _how_to_use(snapshot: dict, model_name: str, alias: str) -> str:
    token, word = snapshot["concepts"][-1]["token"], snapshot["concepts"][-1]["class_word"]
    prompt = f"a photo of {token} {word}"
    return (
        "### Use it\n\n"
        "```python\nimport mlflow\n"
        f"model = mlflow.pyfunc.load_model(\"models:/{model_name}@{alias}\")\n"
        f"images = model.predict([\"{prompt}\"], params={{\"seed\": 0, \"num_images\": 4}})"
        "  # base64 PNGs\n```\n\n"
        f"`lifelong generate \"{prompt}\" --model models:/{model_name}@{alias} -n 8 -o grid.png`\n\n"
        "Plain diffusers / ComfyUI / A1111: the run's artifacts hold `snapshot/diffusers/` "
        "(`pytorch_lora_weights.safetensors`, one textual-inversion file per token, a README "
        "with the loading code) and `snapshot/kohya/`. The run's `grid.png` shows samples of "
        "every concept and class prompt after this step."
    )


def _tags(snapshot: dict, eval_metrics: dict, so_far: dict | None) -> dict[str, str]:
    """Filterable facts: the tokens, the new concept's scores, A and F so far."""
    concept = snapshot["concepts"][-1]
    tags = {
        "step": str(snapshot["step"]),
        "concepts": ",".join(c["name"] for c in snapshot["concepts"]),
        "tokens": ",".join(c["token"] for c in snapshot["concepts"]),
        "method": snapshot["method"],
        "base_model": snapshot["base_model"],
        "fingerprint": snapshot["fingerprint"],
    }
    own = eval_metrics.get("per_concept", {}).get(concept["name"], {})
    tags.update({f"score.{k}": f"{own[k]:.3f}" for k in SHOWN if isinstance(own.get(k), float)})
    for score, figures in (so_far or {}).items():
        for key in ("A", "F"):
            if isinstance(figures, dict) and isinstance(figures.get(key), float):
                tags[f"{score}.{key}"] = f"{figures[key]:.3f}"
    return tags
