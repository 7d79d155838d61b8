"""The registered version's page as a person sees it: the MLflow UI on 127.0.0.1 rendered by
headless Chromium (Debian's `chromium`; .ci/run installs it) must show the concepts, their
tokens, the aliases and a score."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tasks.tracking import register_step
from tests.test_tracking import EXPERIMENT, MODEL, SEQUENCE, make_step, mlflow_server  # noqa: F401

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_text(url: str) -> str:
    """The page's DOM after its scripts ran (the UI is a single-page app)."""
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=20000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_version_page_shows_concepts_tokens_aliases_and_scores(tmp_path, mlflow_server, use_tracking_uri):  # noqa: F811
    use_tracking_uri(mlflow_server)
    for step in (1, 2):
        make_step(tmp_path, step)
        so_far = {"clip_i": {"A": 0.5, "F": 0.125, "A_ci": [0.4, 0.6], "F_ci": [0.0, 0.25]}}
        register_step(tmp_path / "adapters" / ["striped-star", "dotted-heart"][step - 1],
                      tmp_path / "eval" / ["striped-star", "dotted-heart"][step - 1],
                      model_name=MODEL, experiment=EXPERIMENT, sequence_id=SEQUENCE,
                      is_last=step == 2, so_far=so_far)
    page = rendered_text(f"{mlflow_server}/#/models/{MODEL}/versions/2")
    for text in ("striped-star", "dotted-heart", "&lt;c1&gt;", "&lt;c2&gt;", "step-2",
                 "latest-step", "F = 0.125 [0.000, 0.250]", "mlflow.pyfunc.load_model"):
        assert text in page, text
