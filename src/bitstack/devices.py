"""Checking a user's ``device`` argument before anything is loaded onto it."""

from __future__ import annotations

import torch

from bitstack.errors import InputError


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a :class:`torch.device` that exists on this machine.

    ``None`` means CUDA if available, else the CPU.  Raises :class:`InputError` for an
    unparseable name, a device type bitstack does not run on, or a GPU that is not there.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        try:
            resolved = torch.device(device)
        except (RuntimeError, ValueError) as err:
            raise InputError(f"cannot parse device {device!r}: use cpu, cuda or cuda:N") from err
    else:
        raise InputError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} is not available: this machine has no usable CUDA GPU; use cpu")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise InputError(f"device {device!r} does not exist: this machine has {count} CUDA device(s)")
        return resolved
    if resolved.type == "mps" and torch.backends.mps.is_available():
        return resolved
    raise InputError(f"device {device!r} is not supported: use cpu, cuda or cuda:N")
