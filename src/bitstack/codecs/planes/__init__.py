"""Codec ``planes``: bit-plane residual blocks on per-(row, group) grids (``codec.PlanesCodec``)."""
