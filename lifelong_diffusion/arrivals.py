"""New concepts arriving: `lifelong add PATH`, and folders dropped into data/inbox/.

A concept is checked in full (ingest's checks, under its final name) before anything of the
project changes; then it is copied to data/concepts/<name>/ and appended to params.yaml's
sequence after the current last concept. A bad inbox folder is moved to
data/inbox/rejected/<name>/ with an error.txt saying what to fix; nothing else changes.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .ingest import CONCEPT_NAME, ConceptDataError, check_concept
from .project import BASE, ParamsError, Project

INBOX = Path("data") / "inbox"
REJECTED = "rejected"
ERROR_FILE = "error.txt"


@dataclass
class InboxOutcome:
    added: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # folder name -> reason


def add_concept(project: Project, source: Path, name: str | None = None) -> str:
    """Check `source` as concept `name` (default: its folder name), copy it into the project
    and append it to the sequence; returns the name. Raises ConceptDataError or ParamsError
    and changes nothing when the concept is not acceptable."""
    source = Path(os.path.abspath(source))
    name = name or source.name
    if not source.is_dir():
        raise ConceptDataError(f"{source}: not a folder; fix: give a folder with concept.yaml and "
                               "its photos")
    if not CONCEPT_NAME.fullmatch(name) or name == BASE:
        raise ConceptDataError(f"{source}: {name!r} is not a concept name; fix: pass --name with "
                               "1-64 lowercase letters, digits, '_' or '-' (not 'base')")
    order = project.sequence() if project.params.get("sequence") else []
    target = project.concept_dir(name)
    if name in order or target.exists():
        raise ConceptDataError(f"{source}: a concept named '{name}' already exists "
                               f"({target}); fix: pass another --name")
    settings = project.section("ingest")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".arriving-") as staging:
        candidate = Path(staging) / name  # checked under its final name
        shutil.copytree(source, candidate, symlinks=False)
        try:
            check_concept(candidate, taken_tokens=project.taken_tokens(name) if order else {},
                          **settings)
        except ConceptDataError as exc:  # name the user's folder, not the staging copy
            raise ConceptDataError(*(str(a).replace(str(candidate), str(source))
                                     for a in exc.args)) from None
        candidate.rename(target)
    try:
        append_to_sequence(project, name, order[-1] if order else BASE)
    except BaseException:
        shutil.rmtree(target)  # no concept folder without its sequence entry
        raise
    return name


def append_to_sequence(project: Project, name: str, prev: str) -> None:
    """Add `name: {prev: <prev>}` as the sequence's last line, keeping params.yaml's comments
    and layout; the result is parsed back and must give the old order plus `name`."""
    path = project.root / project.params_file
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines)
                  if re.match(r"sequence:\s*(\{\s*\}|null|~)?\s*(#.*)?$", line)), None)
    if start is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append("sequence:\n")
        start = len(lines) - 1
    lines[start] = "sequence:\n"  # `sequence: {}` of a project without concepts yet
    end, indent = start + 1, None
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.strip() and not line.startswith((" ", "\t", "#")):
            break  # the next top-level key
        if line.strip() and not line.lstrip().startswith("#"):
            end = i + 1
            indent = indent or re.match(r"\s*", line).group()  # the entries' level: the first one's
    indent = indent or "  "
    if end <= len(lines) and lines[end - 1] and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    lines.insert(end, f"{indent}{name}: {{prev: {prev}}}\n")
    new_text = "".join(lines)
    before = project.sequence() if prev != BASE else []
    with tempfile.TemporaryDirectory() as tmp:  # check the edit before it replaces params.yaml
        check = Project(Path(tmp))
        (Path(tmp) / project.params_file).write_text(new_text)
        others = [{k: v for k, v in (yaml.safe_load(t) or {}).items() if k != "sequence"}
                  for t in (text, new_text)]
        if check.sequence() != [*before, name] or others[0] != others[1]:
            raise ParamsError(f"{path}: could not append '{name}' to `sequence` safely; add "
                              f"`{name}: {{prev: {prev}}}` to it by hand.")
    staged = path.with_name(f".{path.name}.new")
    staged.write_text(new_text)
    staged.replace(path)  # atomic: params.yaml is never half-written


def take_inbox(project: Project, inbox: Path | None = None) -> InboxOutcome:
    """Add every concept folder waiting in the inbox, in name order; each added folder leaves
    the inbox, each bad one moves to inbox/rejected/<name>/ with error.txt."""
    inbox = Path(inbox) if inbox else project.root / INBOX
    outcome = InboxOutcome()
    if not inbox.is_dir():
        return outcome
    for folder in sorted(p for p in inbox.iterdir() if p.is_dir() and p.name != REJECTED
                         and not p.name.startswith(".")):
        try:
            outcome.added.append(add_concept(project, folder))
        except ConceptDataError as exc:  # the folder's fault; a params.yaml problem fails the run
            outcome.rejected[folder.name] = str(exc)
            reject(folder, inbox / REJECTED, str(exc))
        else:
            shutil.rmtree(folder)
    return outcome


def reject(folder: Path, rejected_root: Path, reason: str, name: str | None = None) -> Path:
    """Move `folder` to rejected_root/<name> (default: its own name; numbered if taken) with
    error.txt beside its files."""
    rejected_root.mkdir(parents=True, exist_ok=True)
    name = name or folder.name
    target, n = rejected_root / name, 1
    while target.exists():
        n += 1
        target = rejected_root / f"{name}-{n}"
    folder.rename(target)
    (target / ERROR_FILE).write_text(f"{reason}\n\nFix the folder, delete this {ERROR_FILE} and "
                                     f"move the folder back into {rejected_root.parent} to try "
                                     "again.\n")
    return target
