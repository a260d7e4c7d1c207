"""The library's exception types.

Every error a user can cause (bad input, a bad artifact, an unsupported model, a budget that
cannot be met) is a :class:`BitstackError`; the CLI turns it into a one-line message and exit
code 2.  Anything else escaping the library is a bug.
"""

from __future__ import annotations


class BitstackError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(BitstackError, ValueError):
    """An argument is malformed: an unparseable size, a missing file, a bad option value."""


class BudgetError(BitstackError, ValueError):
    """A memory budget cannot be met (below the artifact's floor)."""


class UnsupportedModelError(BitstackError):
    """The model's structure is not recognised (no decoder layers or no linear projections)."""


class ArtifactError(BitstackError):
    """An artifact is malformed, corrupted, truncated or of an unknown format version."""


class RemoteError(BitstackError):
    """A remote artifact cannot be fetched: not found, access denied, no HTTP Range support, the network failing."""
