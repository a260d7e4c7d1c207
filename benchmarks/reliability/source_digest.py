"""The identity of the bitstack code a benchmark ran: a digest of the package's source files.

Long benchmarks (kill/resume, fuzzing) hash the package before and after a run; a difference
means the code changed under them and the run is void.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


def source_digest() -> tuple[str, str]:
    """(folder, sha256 over the relative paths and bytes of every .py file) of the bitstack package used."""
    folder = Path(importlib.util.find_spec("bitstack").origin).parent
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return str(folder), digest.hexdigest()
