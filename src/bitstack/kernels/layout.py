"""Former path of :mod:`bitstack.kernels.avd.layout`, kept only while ``bitstack.runtime.linear`` and
``tests/runtime`` import these names from it; delete this module once they import the new path."""

from bitstack.kernels.avd.layout import (  # noqa: F401
    DEFAULT_GROUP,
    PackedBitStack,
    bitplane_from_standard,
    repack,
    standard_from_bitplane,
    unpack_bitplane,
)
