"""tasks.mlflow_model: a step's snapshot logged as a pyfunc model and registered with an alias
generates, in a fresh process away from the repository (and, slow, behind `mlflow models
serve`), exactly the images PersonalizedModel generates from the snapshot."""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from flows.servers import background_server, free_port
from lifelong_diffusion.generation import PersonalizedModel
from lifelong_diffusion.snapshot import empty_snapshot, load_snapshot, save_snapshot
from lifelong_diffusion.train import TrainConfig, train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE
from tasks.mlflow_model import log_snapshot_model, registered_snapshot

# independent switches adapters by token: a prompt per concept and one without any
PROMPTS = ["a photo of <c1> star", "a photo of <c2> heart", "a photo of a star"]
PARAMS = {"seed": 3, "num_images": 2, "steps": 2, "guidance_scale": 4.0}
ALIAS = "step-2"
# a fresh interpreter in another directory: only the installed project and the registry
LOAD = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"prompt": json.loads(sys.argv[2])}), params=json.loads(sys.argv[3]))
open(sys.argv[4], "w").write(json.dumps(out))
"""


def train_sequence(method: str, world_concepts, out: Path) -> Path:
    """S_2 of a 2-concept tiny-random sequence of `method`; returns its folder."""
    cfg = TrainConfig(method=method, steps=2, batch_size=2, device="cpu")
    save_snapshot(empty_snapshot("tiny-random"), out / "base")
    prev = out / "base"
    for name in DEFAULT_SEQUENCE[:2]:
        train_concept(prev, world_concepts / "processed" / name, out / name, cfg, progress=False)
        prev = out / name
    return prev


def register(snapshot_dir, model_name: str, experiment_id: str) -> str:
    """Log and register like a step, pointing ALIAS at the version; returns the alias URI."""
    with mlflow.start_run(experiment_id=experiment_id):
        info = log_snapshot_model(snapshot_dir)
    version = mlflow.register_model(info.model_uri, model_name).version
    MlflowClient().set_registered_model_alias(model_name, ALIAS, version)
    return f"models:/{model_name}@{ALIAS}"


def decode(predictions: list[str]) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(p)))) for p in predictions]


def expected(snapshot_dir, prompts: list[str], params: dict) -> list[np.ndarray]:
    model = PersonalizedModel(load_snapshot(snapshot_dir))
    seeds = list(range(params["seed"], params["seed"] + params["num_images"]))
    return [np.asarray(image) for prompt in prompts
            for image in model.generate(prompt, seeds, params["steps"], params["guidance_scale"])]


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A throwaway SQLite store; returns an experiment whose artifacts stay in tmp_path (the
    default experiment's would go to ./mlruns of the current directory)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return MlflowClient().create_experiment("models", artifact_location=(tmp_path / "mlruns").as_uri())


@pytest.mark.parametrize("method", ["naive", "independent"])
def test_registered_model_generates_the_snapshots_images(method, world_concepts, tiny_start,
                                                         store, tmp_path):
    snapshot_dir = train_sequence(method, world_concepts, tiny_start(method))
    uri = register(snapshot_dir, f"lifelong-{method}", store)
    out = tmp_path / "predictions.json"
    # the environment carries MLFLOW_TRACKING_URI and LIFELONG_CACHE (the session's presets)
    subprocess.run([sys.executable, "-c", LOAD, uri, json.dumps(PROMPTS), json.dumps(PARAMS),
                    str(out)], cwd=tmp_path, env=dict(os.environ), check=True)
    got = decode(json.loads(out.read_text()))
    want = expected(snapshot_dir, PROMPTS, PARAMS)
    assert len(got) == len(PROMPTS) * PARAMS["num_images"]
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    if method == "independent":  # the adapters really differ per token
        assert not np.array_equal(got[0], got[2])


def test_relative_base_folder_is_recorded_absolute(store, tmp_path, monkeypatch):
    """A base folder named relative to the directory a step ran in resolves from anywhere."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-base").mkdir()
    save_snapshot(empty_snapshot("my-base"), tmp_path / "s0")
    uri = register(tmp_path / "s0", "lifelong-local", store)
    monkeypatch.chdir(tmp_path / "my-base")
    snap = registered_snapshot(uri, os.environ["MLFLOW_TRACKING_URI"], tmp_path / "download")
    assert snap.base_model == str((tmp_path / "my-base").resolve()) and snap.step == 0


@pytest.mark.slow
def test_served_model_answers_pngs(world_concepts, tiny_start, store, tmp_path):
    snapshot_dir = train_sequence("naive", world_concepts, tiny_start("served"))
    uri = register(snapshot_dir, "lifelong-served", store)
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]
    # the server execs `uvicorn` from PATH: this venv's (make test puts it first, pytest alone may not)
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    url = f"http://127.0.0.1:{port}"
    body = {"inputs": {"prompt": [PROMPTS[0]]}, "params": {"seed": 0, "num_images": 2, "steps": 2}}
    with background_server(cmd, f"{url}/ping", env, tmp_path / "serve.log", timeout=120):
        request = urllib.request.Request(f"{url}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.loads(response.read())["predictions"]
    got = decode(predictions)
    assert [g.shape for g in got] == [(32, 32, 3)] * 2
    want = expected(snapshot_dir, PROMPTS[:1], {**body["params"], "guidance_scale": 5.0})
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
