"""The project's own MLflow store (mlflow.db + mlruns/) keeps working when the project is
copied or moved.

MLflow records absolute artifact URIs (file:///<project>/mlruns/...) in its database, so a
copied project would read and write the original folder's artifacts. Before the store is
used, every such URI is rewritten to the folder the project is in now. Only the local SQLite
store of a project is touched; a shared tracking server (MLFLOW_TRACKING_URI) is left alone.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

ARTIFACTS = "mlruns"


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
