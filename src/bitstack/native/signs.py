"""The joint-sign search of the planes codec on the CPU through the native kernel.

:func:`joint_signs_block` decides one block of columns for every row
(``torch.ops.bitstack.joint_signs_block``, :mod:`bitstack.native.csrc` ``joint_signs.h``), equal
bit for bit to :func:`bitstack.codecs.planes.signs.joint_block_reference`, which runs instead on
other devices, when ``BITSTACK_NATIVE`` disables the native kernels, or (after one warning line)
when they cannot be built.
"""

from __future__ import annotations

import torch

from bitstack.codecs.planes.signs import joint_block_reference
from bitstack.native.planes import native_isa


def joint_signs_block(w: torch.Tensor, centre: torch.Tensor, step: torch.Tensor, u: torch.Tensor, owner: torch.Tensor,
                      lam: torch.Tensor, coefficient: torch.Tensor, *, native: bool | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~bitstack.codecs.planes.signs.joint_block_reference` (same arguments, layouts and
    results), natively for float32 CPU tensors.  ``native`` as in :mod:`bitstack.native.planes`."""
    if w.device.type == "cpu" and w.dtype == torch.float32 and native_isa(native) is not None:
        return torch.ops.bitstack.joint_signs_block(w, centre, step, u, owner, lam, coefficient)
    return joint_block_reference(w, centre, step, u, owner, lam, coefficient)
