"""Pure tensor math of BitStack: sign packing, truncated SVD, AVD, activation scales, ordering.

Nothing here does I/O or keeps state; drivers pass every input explicitly.
"""
