"""Memory sizes: parsing ``"120MB"`` / ``"1.5GiB"`` / ``"123456"`` and printing them back.

Decimal units (kB, MB, GB, TB) are powers of 1000, binary units (KiB, MiB, GiB, TiB) powers of
1024, as in the SI/IEC convention.  A bare number is a byte count.
"""

from __future__ import annotations

import math
import re

from bitstack.errors import InputError

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
}

_SIZE = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(size: str | int | float) -> int:
    """Return the byte count of ``size``.

    Accepts an int (bytes), or a string such as ``"120MB"``, ``"1.5GiB"``, ``"300 kB"``,
    ``"123456"``.  Fractional byte counts are rounded down.  Raises :class:`InputError` for
    negative, non-finite or unparseable sizes.
    """
    if isinstance(size, bool):
        raise InputError(f"memory size must be a number of bytes or a string like '120MB', got {size!r}")
    if isinstance(size, (int, float)):
        value, unit = float(size), ""
    elif isinstance(size, str):
        match = _SIZE.match(size)
        if match is None:
            raise InputError(
                f"cannot parse memory size {size!r}: use a number of bytes or a number with a unit, "
                "e.g. '120MB', '1.5GiB', '300000000'"
            )
        value, unit = float(match.group(1)), match.group(2).lower()
        if unit not in _UNITS:
            raise InputError(
                f"unknown unit {match.group(2)!r} in memory size {size!r}: "
                "use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"
            )
    else:
        raise InputError(f"memory size must be a number of bytes or a string like '120MB', got {size!r}")
    if not math.isfinite(value) or value < 0:
        raise InputError(f"memory size must be a finite, non-negative amount, got {size!r}")
    return int(value * _UNITS[unit])


def format_bytes(n: int) -> str:
    """Human-readable decimal size, e.g. ``format_bytes(123_456_789) == '123.46 MB'``."""
    for unit, scale in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
