"""Former path of :mod:`bitstack.kernels.planes.layout` (and of ``KERNEL_MAX_BLOCKS``, now in
:mod:`bitstack.kernels.dispatch`), kept only while ``bitstack.runtime.linear`` and ``tests/runtime``
import these names from it; delete this module once they import the new paths."""

from bitstack.kernels.dispatch import KERNEL_MAX_BLOCKS  # noqa: F401
from bitstack.kernels.planes.layout import PackedPlanes, planes_group_supported  # noqa: F401
