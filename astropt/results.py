"""Provenance and self-checks of published result files (``docs/results/*.json``).

Every command that publishes a result file stamps it with :func:`stamp`: the
command that produced it, the code commit (``git rev-parse HEAD`` and whether
the work tree had uncommitted changes), a sha256 of the run outputs it
summarises, and a ``digest`` of the file's own content. :func:`check_result`
(run over every result file by ``python bench/report.py --check``, which
``make test`` runs) recomputes the digest and, for formats that store their
per-fold or per-seed rows, every interval, tally and outcome from those rows
(:data:`CHECKERS`), so a hand edit anywhere in the file fails.

    data = {...}                                      # the publisher's own content
    stamp(data, "python -m astropt.quickstart --publish", [run / "probes" / "split_scores.csv"])
    write_result("docs/results/NAME.json", data)
"""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path

#: Where published result files live, relative to the repository root.
RESULTS_DIR = Path("docs/results")
CHECKOUT = Path(__file__).resolve().parent.parent  # the repository, when run from a checkout
#: Result format -> "module:function" returning the problems of a file's content (a list of
#: strings, empty when its tables agree with its rows). Publishers register their format here.
CHECKERS = {
    "astropt-probe-headline/2": "astropt.probe:check_headline",
    "astropt-finetune-sweep/1": "astropt.finetune.sweep:check_sweep",
}


def git_commit(repo: str | Path = CHECKOUT) -> dict:
    """``{"commit": sha, "dirty": bool}`` of the checkout ``repo`` (``"unknown"`` outside git)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": True}
    return {"commit": commit, "dirty": dirty}


def hash_files(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """sha256 over the names (relative to ``root``, else the bare file names) and bytes
    of ``paths``, in sorted name order: the same outputs give the same hash anywhere."""
    digest = hashlib.sha256()
    named = []
    for path in map(Path, paths):
        name = path.relative_to(root).as_posix() if root is not None else path.name
        named.append((name, path))
    for name, path in sorted(named):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def content_digest(data: dict) -> str:
    """sha256 of a result's canonical JSON (sorted keys), its ``digest`` field left out."""
    body = {key: value for key, value in data.items() if key != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def stamp(
    data: dict,
    command: str,
    outputs: Iterable[str | Path],
    root: str | Path | None = None,
    repo: str | Path = CHECKOUT,
) -> dict:
    """Add ``provenance`` (command, commit, dirty flag, hash of ``outputs``) and ``digest``
    to ``data`` (in place; returned). Stamp last: any later change breaks the digest."""
    outputs = list(outputs)
    data["provenance"] = {
        "command": command,
        **git_commit(repo),
        "outputs": sorted(
            Path(p).relative_to(root).as_posix() if root else Path(p).name for p in outputs
        ),  # fmt: skip
        "outputs_sha256": hash_files(outputs, root),
    }
    data["digest"] = content_digest(data)
    return data


def write_result(path: str | Path, data: dict) -> Path:
    """Write a stamped result file (indented JSON, a final newline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def is_stamped(data: dict) -> bool:
    return "digest" in data and "provenance" in data


def check_result(data: dict) -> list[str]:
    """What is wrong with a stamped result's content: a digest that no longer matches
    (a hand edit), a missing provenance field, or tables its rows do not give."""
    if not is_stamped(data):
        return ["no provenance/digest (a legacy file: regenerate it with its command)"]
    problems = []
    if content_digest(data) != data["digest"]:
        problems.append("its digest does not match its content (edited after it was written)")
    missing = {"command", "commit", "dirty", "outputs_sha256"} - set(data["provenance"])
    if missing:
        problems.append(f"provenance lacks {sorted(missing)}")
    checker = CHECKERS.get(data.get("format", ""))
    if checker:
        module, _, function = checker.partition(":")
        problems += getattr(importlib.import_module(module), function)(data)
    return problems
