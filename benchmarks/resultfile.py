"""One schema for every committed benchmark result, so that docs/results.md is generated, never typed.

A result file is ``benchmarks/results/<topic>/<name>.json``::

    {"schema": 1, "title": str, "topic": str, "machine": str, "command": str, "commit": str,
     "date": "YYYY-MM-DD", "columns": [str, ...], "rows": [[cell, ...], ...], "notes": str,
     "extra": {...}}

``machine`` (CPU model and cores, GPU name, torch/triton versions), ``commit`` (``git rev-parse
HEAD``, with ``-dirty`` when the tree had uncommitted changes to tracked files) and ``command``
(the script's own command line) are filled in by :func:`write_result`.  ``rows`` hold what the
table shows (ratios next to their baselines); ``extra`` holds raw numbers a table does not show.

Benchmark scripts are run as modules from the repository root, e.g.
``python -m benchmarks.cpu.decode --help``, and call :func:`write_result` with ``--out``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = 1


def git_commit(root: Path = ROOT) -> str:
    """``HEAD``'s hash, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine() -> str:
    """A one-line description of this machine: CPU model and cores, GPU, torch and triton versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    return "; ".join(parts)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, as ``python -m benchmarks.X ...`` when run as a module."""
    argv = list(sys.argv if argv is None else argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return shlex.join(["python", "-m", spec.name, *argv[1:]])
    return shlex.join(["python", *argv])


def write_result(path: str | Path, *, title: str, topic: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                 notes: str = "", extra: dict[str, Any] | None = None, command: str | None = None,
                 machine_line: str | None = None) -> Path:
    """Write one result file atomically (temp file, then rename) and return its path.

    ``machine_line``: pass it when the numbers were measured elsewhere (e.g. a result measured
    on a GPU machine and written here); by default this machine is described.
    """
    path = Path(path)
    if any(len(row) != len(columns) for row in rows):
        raise ValueError(f"every row must have {len(columns)} cells")
    data = {"schema": SCHEMA, "title": title, "topic": topic, "machine": machine_line or machine(),
            "command": command or command_line(), "commit": git_commit(), "date": datetime.date.today().isoformat(),
            "columns": list(columns), "rows": [list(r) for r in rows], "notes": notes, "extra": extra or {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_result(path: str | Path) -> dict[str, Any]:
    """A result file's contents; ValueError if it does not follow the schema."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    required = {"schema", "title", "topic", "machine", "command", "commit", "date", "columns", "rows", "notes"}
    if not isinstance(data, dict) or not required <= set(data) or data["schema"] != SCHEMA:
        raise ValueError(f"{path} is not a benchmark result file of schema {SCHEMA}")
    return data
