"""A step's snapshot as an MLflow model: `mlflow.pyfunc.load_model`, `mlflow models serve` and
`lifelong generate --model` all generate through generation.PersonalizedModel, i.e. through
the snapshot's method's own generation hooks.

Layout of a logged model (besides MLflow's MLmodel, python_model.pkl, requirements.txt):
    artifacts/snapshot/   the step's snapshot folder, as snapshot.py wrote it
The base model is not copied: the snapshot names it. A preset resolves inside the installed
package; a local folder is recorded as an absolute path in the model config (`base_model`),
since a relative one would only resolve from the directory the step was trained in.

Input: prompts, a DataFrame column `prompt` (served: {"inputs": {"prompt": [...]}} or
{"inputs": [...]}). Params: seed, num_images, steps, guidance_scale. Output: one
base64-encoded PNG string per image, prompt by prompt, each with seeds seed ..
seed+num_images-1: plain strings, so a served model answers in JSON.
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import tempfile
from dataclasses import replace
from importlib.metadata import distribution, version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from packaging.requirements import Requirement

from lifelong_diffusion.base_model import pick_device
from lifelong_diffusion.generation import PersonalizedModel
from lifelong_diffusion.presets import PRESETS
from lifelong_diffusion.snapshot import Snapshot, SnapshotError, load_snapshot

SNAPSHOT = "snapshot"  # the artifact's name, and its folder under artifacts/
PROJECT = "lifelong-diffusion"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.string, "prompt")]),
    outputs=Schema([ColSpec(DataType.string)]),
    params=ParamSchema([
        ParamSpec("seed", DataType.long, 0),
        ParamSpec("num_images", DataType.long, 1),
        ParamSpec("steps", DataType.long, 20),
        ParamSpec("guidance_scale", DataType.double, 5.0),
    ]),
)
_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))")


class SnapshotModel(mlflow.pyfunc.PythonModel):
    """Holds nothing until load_context, so its pickle is a reference to this class alone."""

    def load_context(self, context):
        snap = _with_base(Path(context.artifacts[SNAPSHOT]), context.model_config)
        self.model = PersonalizedModel(snap, pick_device())

    def predict(self, context, model_input: pd.DataFrame, params: dict) -> list[str]:
        """MLflow has already made `model_input` a DataFrame with the `prompt` column (the
        server also from a bare list) and filled `params` with the signature's defaults. The
        DataFrame hint tells MLflow to validate by the signature, not by type hints."""
        seeds = list(range(params["seed"], params["seed"] + params["num_images"]))
        return [png_base64(image) for prompt in model_input["prompt"]
                for image in self.model.generate(prompt, seeds, params["steps"],
                                                 params["guidance_scale"])]


def png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def log_snapshot_model(snapshot_dir: Path, name: str = "model") -> mlflow.models.model.ModelInfo:
    """Log the snapshot folder as a pyfunc model `name` in the active run (without one, MLflow
    3 logs a model of no run); returns the ModelInfo, whose model_uri can be registered."""
    spec = load_snapshot(snapshot_dir).base_model
    local = spec not in PRESETS and Path(spec).expanduser().exists()
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / SNAPSHOT  # MLflow names a folder artifact after its basename
        shutil.copytree(snapshot_dir, staged)
        return mlflow.pyfunc.log_model(
            name=name, python_model=SnapshotModel(), artifacts={SNAPSHOT: str(staged)},
            signature=SIGNATURE, pip_requirements=project_requirements(),
            model_config={"base_model": str(Path(spec).expanduser().resolve()) if local else spec},
        )


def project_requirements() -> list[str]:
    """This install: the project from where it was installed, and its direct dependencies
    at their installed versions (MLflow's inference would load the model to find them)."""
    dist = distribution(PROJECT)
    origin = json.loads(dist.read_text("direct_url.json") or "null")
    project = f"{PROJECT} @ {origin['url']}" if origin else f"{PROJECT}=={dist.version}"
    deps = [Requirement(r) for r in dist.requires or []]
    return [project, *(f"{d.name}=={version(d.name)}" for d in deps if d.marker is None)]


def registered_snapshot(model_uri: str, tracking_uri: str, dst: Path) -> Snapshot:
    """The snapshot of a registered version, models:/<name>@<alias> or models:/<name>/<version>,
    downloaded into `dst`; a SnapshotError names what exists when the version does not."""
    match = _MODEL_URI.fullmatch(model_uri)
    if not match:
        raise SnapshotError(f"{model_uri!r} is not models:/<name>@<alias> or "
                            "models:/<name>/<version>")
    name, alias, number = match["name"], match["alias"], match["version"]
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        _raise_unless_missing(error)
        known = ", ".join(m.name for m in client.search_registered_models()) or "none"
        raise SnapshotError(f"no registered model {name!r} in {tracking_uri}; "
                            f"registered models: {known}") from None
    if alias and alias not in model.aliases:
        raise SnapshotError(f"{name} has no alias {alias!r}; its aliases: "
                            f"{', '.join(sorted(model.aliases)) or 'none'}")
    number = str(model.aliases[alias]) if alias else number
    try:
        # where the version's files are, not a models:/ URI: downloading one of those would
        # ask the process-wide registry, not `tracking_uri`
        location = client.get_model_version_download_uri(name, number)
    except MlflowException as error:
        _raise_unless_missing(error)
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise SnapshotError(f"{name} has no version {number}; its versions: "
                            f"{', '.join(map(str, versions)) or 'none'}") from None
    folder = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=location, dst_path=str(dst), tracking_uri=tracking_uri))
    if (folder / "snapshot.json").exists():  # registered before versions became pyfunc models
        return load_snapshot(folder)
    flavor = Model.load(folder).flavors["python_function"]
    return _with_base(folder / flavor["artifacts"][SNAPSHOT]["path"], flavor["config"])


def _raise_unless_missing(error: MlflowException) -> None:
    if error.error_code != "RESOURCE_DOES_NOT_EXIST":
        raise error


def _with_base(folder: Path, model_config: dict) -> Snapshot:
    return replace(load_snapshot(folder), base_model=model_config["base_model"])
