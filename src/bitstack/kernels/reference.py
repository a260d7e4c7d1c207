"""Former path of :mod:`bitstack.kernels.avd.reference`, kept only while ``bitstack.runtime.linear``
imports ``dense_weight`` from it; delete this module once it imports the new path."""

from bitstack.kernels.avd.reference import dense_weight  # noqa: F401
