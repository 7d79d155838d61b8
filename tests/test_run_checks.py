"""`lifelong run` checks params and every concept folder before DVC touches an output: bad
input gives one clear line and leaves stored data byte-identical (DVC deletes a stage's
outputs before running it)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from flows.cli import main

REPO = Path(__file__).resolve().parents[1]
FIRST = "striped-star"


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "p"
    shutil.copytree(REPO / "data" / "concepts" / FIRST, root / "data" / "concepts" / FIRST)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sequence"] = {FIRST: {"prev": "base"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stored = root / "adapters" / FIRST / "adapter.safetensors"  # what a bad run must not lose
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"trained weights")
    return root


def set_param(root: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.parametrize("bad", [
    lambda root: set_param(root, "train", "steps", -5),
    lambda root: set_param(root, "train", "steps", "abc"),
    lambda root: set_param(root, "train", "no_such_key", 1),
    lambda root: set_param(root, "ingest", "resolution", 0),
    lambda root: set_param(root, "ingest", "max_images", "ten"),
    lambda root: (root / "data" / "concepts" / FIRST / "notes.txt").write_text("stray"),
    lambda root: set_param(root, "sequence", "x;touch pwned-marker;echo", {"prev": FIRST}),
])
def test_bad_input_fails_before_anything_runs(project, bad, capsys):
    bad(project)
    assert main(["--project", str(project), "run"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("lifelong run: error:") and "Traceback" not in "\n".join(err)
    assert (project / "adapters" / FIRST / "adapter.safetensors").read_bytes() == b"trained weights"
    assert not (project / "pwned-marker").exists() and not (project / "dvc.lock").exists()


def test_stopped_tracking_server_fails_up_front_before_anything_runs(project, monkeypatch, capsys):
    """One /health request, not MLflow's retries at registration (280 s, after training)."""
    from flows.servers import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert main(["--project", str(project), "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lifelong run: error: the MLflow tracking server http://127.0.0.1:")
    assert "does not answer" in err[-1] and not (project / "dvc.lock").exists()


def test_a_read_only_output_folder_is_found_before_training(project, monkeypatch, capsys):
    """The probe is patched: as root (CI) chmod does not stop writes, a read-only mount would."""
    from lifelong_diffusion import project as project_module

    monkeypatch.setattr(project_module, "writable", lambda folder: folder.name != "adapters")
    assert main(["--project", str(project), "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lifelong run: error:") and "adapters is not writable" in err[-1]
    assert not (project / "dvc.lock").exists()


def test_writable_probe_on_a_real_folder(tmp_path):
    from lifelong_diffusion.project import writable

    assert writable(tmp_path) and not writable(tmp_path / "missing")
