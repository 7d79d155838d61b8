"""Where a project's MLflow store is, whether a tracking server answers, and the project's own
store (mlflow.db + mlruns/) working on when the project is copied or moved.

Light on purpose (no MLflow import): `lifelong run` checks the store before it starts anything.

MLflow records absolute artifact URIs (file:///<project>/mlruns/...) in its database, so a
copied project would read and write the original folder's artifacts. Before the store is
used, every such URI is rewritten to the folder the project is in now. Only the local SQLite
store of a project is touched; a shared tracking server (MLFLOW_TRACKING_URI) is left alone.
"""
from __future__ import annotations

import os
import sqlite3
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

ARTIFACTS = "mlruns"


def default_tracking_uri(project_root: Path) -> str:
    """An explicit MLFLOW_TRACKING_URI (e.g. a shared server) wins; otherwise a SQLite
    store in the project, because the model registry needs a database backend."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = Path(project_root).resolve() / "mlflow.db"
    relocate_store(db)  # a copied or moved project uses its own artifacts, never the old folder's
    return f"sqlite:///{db}"


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer; raised before any work depends on it."""


SERVER_CHECK_TIMEOUT_S = 5.0


def check_tracking_server(tracking_uri: str, timeout: float = SERVER_CHECK_TIMEOUT_S) -> None:
    """An http(s) tracking URI must answer /health within seconds: without this check a
    stopped server costs minutes of MLflow's own retries at registration, after training."""
    if not tracking_uri.startswith(("http://", "https://")):
        return  # a local store: nothing to reach
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout) as answer:
            if answer.status == 200:
                return
            problem = f"HTTP {answer.status}"
    except OSError as exc:  # refused, timed out, DNS: all URLError/socket errors
        problem = str(getattr(exc, "reason", exc))
    raise TrackingUnavailable(
        f"the MLflow tracking server {tracking_uri} (MLFLOW_TRACKING_URI) does not answer "
        f"({problem}); start it, or unset MLFLOW_TRACKING_URI to use the project's mlflow.db.")


def relocate_store(db_path: Path) -> str | None:
    """Rewrite the store's artifact URIs from the folder it was made in to the folder
    `db_path` is in now; returns the old folder's URI, None when nothing had to change."""
    if not db_path.exists():
        return None
    new = (db_path.resolve().parent / ARTIFACTS).as_uri()
    with sqlite3.connect(db_path) as db:
        old = _recorded_root(db)
        if old is None or old == new:
            return None
        # URIs (file:///old/mlruns/...) and plain paths (/old/mlruns/...) alike
        for before, after in ((old, new), (unquote(urlparse(old).path), unquote(urlparse(new).path))):
            for table, column in _text_columns(db):
                db.execute(f"UPDATE \"{table}\" SET \"{column}\" = ? || substr(\"{column}\", ?) "
                           f"WHERE \"{column}\" LIKE ? ESCAPE '\\'",
                           (after, len(before) + 1, _like_prefix(before)))
    return old


def _recorded_root(db: sqlite3.Connection) -> str | None:
    """The artifact root the project's experiments were created with (tracking.py puts
    them at <project>/mlruns)."""
    try:  # experiment 0 is MLflow's Default, made wherever the first client ran
        rows = db.execute("SELECT artifact_location FROM experiments WHERE experiment_id != 0").fetchall()
    except sqlite3.OperationalError:  # not an MLflow database (yet)
        return None
    roots = {loc for (loc,) in rows
             if loc and loc.startswith("file://") and loc.rsplit("/", 1)[-1] == ARTIFACTS}
    return roots.pop() if len(roots) == 1 else None


def _text_columns(db: sqlite3.Connection) -> list[tuple[str, str]]:
    tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return [(t, col[1]) for t in tables for col in db.execute(f'PRAGMA table_info("{t}")')
            if any(kind in (col[2] or "").upper() for kind in ("CHAR", "TEXT", "CLOB"))]


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"
