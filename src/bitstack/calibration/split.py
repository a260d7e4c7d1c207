"""A deterministic split of a passage file into calibration and validation text.

Method choices (level weights, clip ratios, rotations …) are tuned on validation text that is
disjoint from both the calibration samples and the test set.  A text file of passages separated
by blank lines (``"\\n\\n"``, e.g. ``calibration_wikipedia.txt``) is split by position: the first
``fraction`` of its passages are the calibration part, the rest the validation part.  Nothing is
shuffled, so the split is the same on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from bitstack.errors import InputError

SEPARATOR = "\n\n"


def split_passages(text: str, fraction: float = 0.8) -> tuple[str, str]:
    """(calibration, validation): the first ``round(fraction · n)`` of the n non-empty passages of
    ``text`` and the others, each joined with ``"\\n\\n"``.  0 < fraction < 1; both parts non-empty."""
    if not 0 < fraction < 1:
        raise InputError(f"the calibration fraction must lie strictly between 0 and 1, got {fraction!r}")
    passages = [p for p in text.split(SEPARATOR) if p.strip()]
    cut = round(fraction * len(passages))
    if cut < 1 or cut >= len(passages):
        raise InputError(f"{len(passages)} passage(s) cannot be split {fraction:.2f} / {1 - fraction:.2f}: "
                         "give a text with more passages separated by blank lines")
    return SEPARATOR.join(passages[:cut]), SEPARATOR.join(passages[cut:])


def write_split(source: str | os.PathLike, folder: str | os.PathLike, fraction: float = 0.8) -> tuple[Path, Path]:
    """Write :func:`split_passages` of the UTF-8 file ``source`` as ``<stem>.calib.txt`` and
    ``<stem>.val.txt`` in ``folder`` (each written to a temporary name, then renamed)."""
    source, folder = Path(source), Path(folder)
    if not source.is_file():
        raise InputError(f"text file {source} does not exist")
    calib, val = split_passages(source.read_text(encoding="utf-8"), fraction)
    folder.mkdir(parents=True, exist_ok=True)
    paths = (folder / f"{source.stem}.calib.txt", folder / f"{source.stem}.val.txt")
    for path, text in zip(paths, (calib, val)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths
