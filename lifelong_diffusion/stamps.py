"""Input keys: a hash of everything an output was computed from, stored inside the output.

DVC has its own bookkeeping; these keys let the Prefect flow resume a crashed sequence by
re-running it, skipping every step whose stored key still matches its inputs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path

from .fileio import sha256_file


def inputs_key(*parts) -> str:
    plain = [asdict(p) if is_dataclass(p) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def stored_key(json_file: Path) -> str | None:
    """The `inputs` key a finished output recorded, or None if there is no finished output."""
    try:
        return json.loads(Path(json_file).read_text()).get("inputs")
    except (OSError, ValueError):
        return None


def fingerprint_of(snapshot_dir: Path) -> str:
    return json.loads((Path(snapshot_dir) / "snapshot.json").read_text())["fingerprint"]


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files with their relative names; a path that does
    not exist keys as its name (the stage that reads it then fails with a clear error)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return f"missing:{path.name}"
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return inputs_key([[f.relative_to(path).as_posix(), sha256_file(f)] for f in files])
