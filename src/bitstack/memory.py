"""Memory sizes and budgets: parsing ``"120MB"`` / ``"1.5GiB"`` / ``"123456"`` / ``"3.5bits"``
and printing them back.

Decimal units (kB, MB, GB, TB) are powers of 1000, binary units (KiB, MiB, GiB, TiB) powers of
1024, as in the SI/IEC convention.  A bare number is a byte count.  A budget may also be given in
bits per decomposed parameter (``"3.5bits"``, ``"3.5 bits/param"``, ``"3.5bpp"``): an artifact turns
it into bytes (:meth:`BitsPerParam.to_bytes`), as ``bitstack info`` reports bits/param.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

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

_BITS = ("bit", "bits", "bpp", "bits/param", "bits/parameter")

_SIZE = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z/]*)\s*$")


@dataclass(frozen=True)
class BitsPerParam:
    """A budget in bits per decomposed parameter, e.g. ``parse_budget("3.5bits")``."""

    bits: float

    def to_bytes(self, base_bytes: int, params: int) -> int:
        """Resident bytes of this budget: the non-decomposed bytes plus ``bits`` per decomposed
        parameter (the inverse of the bits/param that ``info`` and ``memory_report`` print)."""
        return base_bytes + int(self.bits * params / 8)

    def __str__(self) -> str:
        return f"{self.bits:g} bits/param"


def parse_budget(size: str | int | float) -> "int | BitsPerParam":
    """A memory budget: a byte count (see :func:`parse_memory`) or, for a string with the unit
    ``bits`` (``bit``, ``bpp``, ``bits/param``), a :class:`BitsPerParam`."""
    value, unit = _parse(size)
    if unit in _BITS:
        return BitsPerParam(value)
    return int(value * _UNITS[unit])


def parse_memory(size: str | int | float) -> int:
    """Return the byte count of ``size``.

    Accepts an int (bytes), or a string such as ``"120MB"``, ``"1.5GiB"``, ``"300 kB"``,
    ``"123456"``.  Fractional byte counts are rounded down.  Raises :class:`InputError` for
    negative, non-finite or unparseable sizes, and for bits per parameter (only an artifact's
    budget takes them: :func:`parse_budget`).
    """
    value, unit = _parse(size)
    if unit in _BITS:
        raise InputError(f"{size!r} is in bits per parameter, which only a model's budget (--memory) takes: give bytes, e.g. '512MB'")
    return int(value * _UNITS[unit])


def _parse(size: str | int | float) -> tuple[float, str]:
    """(value, lower-case unit) of a size; InputError if it is not a finite, non-negative amount."""
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
        if unit not in _UNITS and unit not in _BITS:
            raise InputError(
                f"unknown unit {match.group(2)!r} in memory size {size!r}: "
                "use B, kB, MB, GB, TB, KiB, MiB, GiB, TiB, or bits (per parameter)"
            )
    else:
        raise InputError(f"memory size must be a number of bytes or a string like '120MB', got {size!r}")
    if not math.isfinite(value) or value < 0:
        raise InputError(f"memory size must be a finite, non-negative amount, got {size!r}")
    return value, unit


def format_bytes(n: int) -> str:
    """Human-readable decimal size, e.g. ``format_bytes(123_456_789) == '123.46 MB'``."""
    for unit, scale in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def format_sizes(*sizes: int) -> list[str]:
    """``format_bytes`` of each size, or exact byte counts when two different sizes would print
    the same (e.g. a budget 1 byte below a floor)."""
    texts = [format_bytes(n) for n in sizes]
    if len(set(texts)) < len(set(sizes)):
        return [f"{n} bytes" for n in sizes]
    return texts
