"""Codec ``avd`` (the paper's sign x rank-k magnitude blocks): layout, references and Triton
kernels.  Importing this package never imports Triton: the kernel modules
(``decode``, ``rebuild``, ``signs``) are imported when a kernel runs.

* :mod:`.layout`: ``PackedBitStack``, ``repack`` (the bit-plane layout), argument checks.
* :mod:`.reference`: float32 PyTorch references of the kernels (any device).
* :mod:`.decode`: decode kernel (few tokens, no weight rebuilt).
* :mod:`.rebuild`: rows of Ŵ rebuilt on the GPU; the prefill (chunks of rows, then cuBLAS).
* :mod:`.signs`: Triton helpers turning sign bits into ±1 operands.

Entry points, and which kernel serves a call: :mod:`bitstack.kernels.api`.
"""
