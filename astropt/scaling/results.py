"""The results file of a study: one JSON row per finished run, appended durably."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("astropt.scaling")


def read_results(path: str | os.PathLike) -> list[dict]:
    """Rows of a results JSONL file (missing file: no rows).

    A last line cut short by a crash mid-write is ignored with a warning; a
    bad line elsewhere is an error naming the file and line.
    """
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                log.warning("%s: ignoring truncated last line %d (%s)", p, i + 1, err)
                continue
            raise ValueError(f"{p}:{i + 1}: not a JSON row: {err}") from err
    return rows


def append_result(path: str | os.PathLike, row: dict) -> None:
    """Append one row as a single line, flushed to disk before returning."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, default=_json_default, allow_nan=True) + "\n"
    if p.exists() and p.stat().st_size > 0:
        data = p.read_bytes()
        if not data.endswith(b"\n"):
            # A crash mid-append left a partial row: drop it (its run has no
            # result, so it is trained again) rather than bury it mid-file.
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping a partial last line (%d bytes)", p, len(data) - keep)
            with open(p, "r+b") as fh:
                fh.truncate(keep)
    with open(p, "a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return str(obj)
