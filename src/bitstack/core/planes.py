"""Former path of :mod:`bitstack.codecs.planes.grid`, kept only while ``bitstack.kernels`` and its
tests import these names from it; delete this module once they import the new path."""

from bitstack.codecs.planes.grid import planes_reconstruct, sign_only_blocks  # noqa: F401
