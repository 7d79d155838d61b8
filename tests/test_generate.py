"""`lifelong generate`: a snapshot's images as one PNG or a grid, equal to PersonalizedModel's
per seed; the same from a registered version; one-line errors for an unknown token, an
unknown registered model or alias, and a missing base model."""
from __future__ import annotations

from dataclasses import replace

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from flows.cli import main
from lifelong_diffusion.generation import PersonalizedModel
from lifelong_diffusion.grid import LABEL_WIDTH
from lifelong_diffusion.snapshot import load_snapshot, save_snapshot
from lifelong_diffusion.train import TrainConfig, train_concept
from lifelong_diffusion.world import DEFAULT_SEQUENCE
from tasks.mlflow_model import log_snapshot_model

PROMPT = "a photo of <c1> star"
FAST = ["--steps", "2"]


@pytest.fixture(scope="module")
def snapshot_dir(world_concepts, tiny_start):
    """S_1 of a tiny-random naive sequence: it knows <c1> (striped-star)."""
    out = tiny_start("generate")
    name = DEFAULT_SEQUENCE[0]
    cfg = TrainConfig(method="naive", steps=2, batch_size=2, device="cpu")
    train_concept(out / "base", world_concepts / "processed" / name, out / name, cfg, progress=False)
    return out / name


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A throwaway SQLite store with one experiment whose artifacts stay in tmp_path."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return MlflowClient().create_experiment("models", artifact_location=(tmp_path / "mlruns").as_uri())


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_snapshot_grid_and_single_images(snapshot_dir, tmp_path):
    grid = tmp_path / "out" / "grid.png"
    assert main(["generate", PROMPT, "--snapshot", str(snapshot_dir), "-n", "3", "--seed", "5",
                 "-o", str(grid), "--each", *FAST]) == 0
    cell = 96 + 4  # image_grid's default cell and gap
    assert Image.open(grid).size == (LABEL_WIDTH + 3 * cell, cell)
    singles = [pixels(tmp_path / "out" / f"grid-{seed}.png") for seed in (5, 6, 7)]
    # each image is the project's own for its seed (one seed at a time, as the CLI runs them:
    # on 2 threads a batch of 3 may differ from single images in the last bit of a few pixels)
    model = PersonalizedModel(load_snapshot(snapshot_dir))
    want = [model.generate(PROMPT, [seed], steps=2)[0] for seed in (5, 6, 7)]
    assert all(np.array_equal(got, np.asarray(w)) for got, w in zip(singles, want, strict=True))

    one = tmp_path / "one.png"  # an image depends on its seed alone
    assert main(["generate", PROMPT, "--snapshot", str(snapshot_dir), "--seed", "6", "-o", str(one),
                 *FAST]) == 0
    assert np.array_equal(pixels(one), singles[1]) and not np.array_equal(singles[0], singles[1])


def test_registered_version_generates_like_its_snapshot(snapshot_dir, store, tmp_path, monkeypatch):
    with mlflow.start_run(experiment_id=store):
        info = log_snapshot_model(snapshot_dir)
    version = mlflow.register_model(info.model_uri, "lifelong-naive").version
    MlflowClient().set_registered_model_alias("lifelong-naive", "latest-step", version)
    # the CLI finds the store as the project's mlflow.db, with no process-wide URI to lean on
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    for source in (["--model", "models:/lifelong-naive@latest-step"],
                   ["--model", f"models:/lifelong-naive/{version}"], ["--snapshot", str(snapshot_dir)]):
        assert main(["--project", str(tmp_path), "generate", PROMPT, *source, "--seed", "2",
                     "-o", str(tmp_path / f"{source[0][2:]}.png"), *FAST]) == 0
    assert np.array_equal(pixels(tmp_path / "model.png"), pixels(tmp_path / "snapshot.png"))


def test_unknown_token_names_the_known_ones(snapshot_dir, tmp_path, capsys):
    assert main(["generate", "a photo of <c9> star", "--snapshot", str(snapshot_dir),
                 "-o", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        "lifelong generate: error: <c9> is not a token of this model; it knows <c1> (striped-star)")
    assert not (tmp_path / "x.png").exists()


def test_unknown_model_or_alias_lists_what_exists(store, tmp_path, capsys):
    client = MlflowClient()
    client.create_registered_model("lifelong-naive")
    version = client.create_model_version("lifelong-naive", source=str(tmp_path)).version
    for alias in ("step-1", "latest-step"):
        client.set_registered_model_alias("lifelong-naive", alias, version)
    cases = {
        "models:/lifelong-naive@step-9":
            "lifelong-naive has no alias 'step-9'; its aliases: latest-step, step-1",
        "models:/lifelong-naive/7": "lifelong-naive has no version 7; its versions: 1",
        "models:/lifelong-lfs@latest-step": "no registered model 'lifelong-lfs' in "
                                            f"{client.tracking_uri}; registered models: lifelong-naive",
    }
    for uri, message in cases.items():
        assert main(["--project", str(tmp_path), "generate", PROMPT, "--model", uri]) == 2
        assert capsys.readouterr().err.strip() == f"lifelong generate: error: {message}"


def test_missing_base_model(snapshot_dir, tmp_path, capsys):
    moved = tmp_path / "moved"
    save_snapshot(replace(load_snapshot(snapshot_dir), base_model=str(tmp_path / "gone")), moved)
    assert main(["generate", PROMPT, "--snapshot", str(moved)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lifelong generate: error: the base model of this snapshot is missing: ")
    assert str(tmp_path / "gone") in err and len(err.strip().splitlines()) == 1
