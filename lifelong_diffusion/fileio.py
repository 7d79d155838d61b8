"""Small file helpers shared by data ingestion and model snapshots.

Everything the pipeline stores (processed concept data, model snapshots) is
built in a temporary sibling folder and only swapped into place once complete,
so a crash or a validation error never leaves a half-written result behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CHUNK_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large files stay cheap."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty folder to fill; on success it replaces ``final``.

    The folder is a hidden sibling ``.<name>.tmp-<random>`` (same filesystem,
    so the final move is a rename). On any exception it is deleted and
    ``final`` is left untouched. It is made with ``mkdir`` rather than
    ``tempfile.mkdtemp`` so the result gets normal permissions, not 0700.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        yield tmp
        replace_dir_atomically(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir_atomically(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing any old ``final``.

    ``tmp`` must be on the same filesystem as ``final`` (ideally a sibling), so
    each step is a rename. The old ``final`` is first renamed aside, then
    ``tmp`` is renamed into place, then the old copy is deleted. If the second
    rename fails, the old copy is renamed back and the error re-raised, so the
    caller still owns ``tmp`` and ``final`` is unchanged. Between the two
    renames ``final`` briefly does not exist; after a hard crash in that window
    the previous version survives as ``.<name>.old-<random>`` next to it.
    """
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.rename(tmp, final)
        return
    aside = final.parent / f".{final.name}.old-{secrets.token_hex(6)}"
    os.rename(final, aside)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(aside, final)
        raise
    _remove_old_copy(aside)


def _remove_old_copy(aside: Path) -> None:
    """Delete a replaced folder; the new one is already in place, so only warn."""
    try:
        shutil.rmtree(aside)
    except OSError as exc:
        warnings.warn(f"could not delete replaced folder {aside}: {exc}", stacklevel=3)


class LockedError(RuntimeError):
    """Another process holds the lock: e.g. a second run of the same project."""


@contextmanager
def exclusive_lock(path: Path, holder: str) -> Iterator[None]:
    """Hold an advisory lock on `path` for the block, or raise LockedError at once. The
    kernel drops the lock when the process dies, so a killed run never blocks the next."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{holder} is already running ({path} is locked by another "
                              "process); wait for it to finish, then run again.") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
