"""A copied or moved project keeps using its own MLflow store: artifact URIs recorded with
absolute paths are rewritten to the new folder, and the original folder is never read."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

from mlflow import MlflowClient

from tasks.store import default_tracking_uri, relocate_store
from tasks.tracking import _ensure_experiment

# in a fresh process, as a moved project is used (MLflow caches artifact stores per run)
USE_MOVED = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mlflow import MlflowClient
    from tasks.store import default_tracking_uri
    moved, run = Path(sys.argv[1]), sys.argv[2]
    uri = default_tracking_uri(moved)
    client = MlflowClient(uri, uri)
    assert client.get_run(run).info.artifact_uri.startswith((moved / "mlruns").as_uri())
    got = client.download_artifacts(run, "snapshot/note.txt", str(moved / "dl"))
    assert open(got).read() == "from the original folder"
    (moved / "more.txt").write_text("new")
    client.log_artifact(run, str(moved / "more.txt"))
""")


def test_moved_project_reads_and_writes_its_own_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original, moved = tmp_path / "original", tmp_path / "moved"
    original.mkdir()
    uri = default_tracking_uri(original)
    client = MlflowClient(uri, uri)
    run = client.create_run(_ensure_experiment(client, "lifelong-diffusion")).info.run_id
    (original / "note.txt").write_text("from the original folder")
    client.log_artifact(run, str(original / "note.txt"), "snapshot")
    shutil.copytree(original, moved)
    shutil.rmtree(original)  # reading or writing the old folder would now fail or recreate it

    subprocess.run([sys.executable, "-c", USE_MOVED, str(moved), run], check=True)
    assert not original.exists()
    assert list((moved / "mlruns").glob("*/artifacts/more.txt"))
    assert relocate_store(moved / "mlflow.db") is None  # already here: nothing to rewrite
