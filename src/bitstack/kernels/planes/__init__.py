"""Codec ``planes`` (bit planes on per-group grids): layout, references and Triton
kernels.  Importing this package never imports Triton: the kernel modules (``codes``,
``gemv``, ``batch``, ``decode``, ``rebuild``) are imported when a kernel runs.

* :mod:`.layout`: ``PackedPlanes``, ``pack_planes``, argument checks.
* :mod:`.reference`: float32 PyTorch references of the kernels (any device).
* :mod:`.codes`: the Triton helpers the kernels share (sign words, codes, bit transposes, tiles).
* :mod:`.gemv`: one-token kernel (x in registers, rows streamed).
* :mod:`.batch`: few-token kernel (Ŵ tiles rebuilt on chip, tensor cores).
* :mod:`.decode`: decode kernel (1 to 8 tokens; single tokens the one-token kernel does not take).
* :mod:`.rebuild`: rows of Ŵ rebuilt on the GPU; the prefill (chunks of rows, then cuBLAS).

Entry points, and which kernel serves a call: :mod:`bitstack.kernels.api`.
"""
