"""The library's exception types.

Every error a user can cause (bad input, a bad artifact, an unsupported model, a budget that
cannot be met, a full or read-only disk) is a :class:`BitstackError`; the CLI turns it into a
one-line message and exit code 2.  Anything else escaping the library is a bug.
"""

from __future__ import annotations

import errno


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


class StorageError(BitstackError, OSError):
    """The operating system refused a file operation: no space, no permission, a read-only disk.

    Also an :class:`OSError` (``errno`` and ``filename`` are those of the cause), so code that
    catches ``OSError`` keeps working.
    """

    def __str__(self) -> str:
        return str(self.strerror)


_FIXES = {
    errno.ENOSPC: "no space left on the device: free some space",
    errno.EDQUOT: "disk quota exceeded: free some space",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "operation not permitted: choose a folder you can write to",
    errno.EROFS: "read-only file system: choose a writable folder",
    errno.ENOENT: "no such file or folder: check the path",
}


def storage_error(err: OSError, doing: str, then: str = "") -> StorageError:
    """A one-line :class:`StorageError` for ``err``: what was being done, the path, the cause and
    its fix, then ``then`` (e.g. how to resume)."""
    path = "" if err.filename is None else f" {err.filename}" + ("" if err.filename2 is None else f" -> {err.filename2}") + ":"
    cause = _FIXES.get(err.errno, err.strerror or str(err))
    message = f"{doing}:{path} {cause}" + (f", then {then}" if then else "")
    out = StorageError(err.errno, message)
    out.filename = err.filename
    return out


class RemoteError(BitstackError):
    """A remote artifact cannot be fetched: not found, access denied, no HTTP Range support, the network failing."""
