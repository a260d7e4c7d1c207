"""Codec ``avd``: the BitStack paper's residual blocks, sign × rank-k magnitude (``codec.AvdCodec``)."""
