"""Every token-count and block-count threshold that picks a compute path, in one table.

:class:`DispatchTable` (frozen) holds the thresholds and :data:`DEFAULT_TABLE` the measured
defaults; the functions that pick a path take a table as an argument, default
:data:`DEFAULT_TABLE` (:mod:`bitstack.kernels.api` for the GPU kernels; the runtime's CPU path
reads ``lut_max_tokens`` and ``native_max_tokens``).  Nothing here changes at run time: to try
other thresholds, pass ``dataclasses.replace(DEFAULT_TABLE, ...)``.

The module constants below are hard limits of the kernels' code (what they can compute at all),
not tunable; a table's thresholds are checked against them.  Measurements: H100 80GB HBM3, Triton
3.6, CUDA-graph replay with the L2 flushed (benchmarks/kernels/NOTES.md, docs/results.md);
CPU: the 2-core development machine (docs/cpu.md, benchmarks/results/cpu/).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from bitstack.kernels._checks import next_pow2

KERNEL_MAX_BLOCKS = 16  # planes kernels: block i's sign bit is mantissa bit 22 - i of a float32 code (16 words per code)
BATCH_MAX_TOKENS = 16  # planes few-token kernel: a call's tokens are padded to one 16-wide tensor-core operand
AVD_DECODE_WIDTH_LIMIT = 256  # avd decode kernel: (padded rank) x (padded tokens) is the MMA's N, at most 256


@dataclass(frozen=True)
class DispatchTable:
    """Thresholds that pick a path by the number of tokens (rows of x) or loaded blocks.

    Attributes (each with the measurement behind its default):
        avd_decode_max_width: codec avd on the GPU: the decode kernel while (padded rank) x
            (tokens) <= this (rank 16: up to 4 tokens), the chunked prefill above.  At 16 tokens
            the chunked prefill was faster from J = 2 blocks on 14336x4096 and 4096x14336; 5 to
            15 tokens were not measured (NOTES.md, "What is left").
        planes_gemv_max_tokens: codec planes on the GPU: up to this many tokens, the one-token
            kernel once per token (where it applies: J <= 8, group >= 32).  2 tokens: 55-68 µs that
            way against 70-90 µs for the few-token kernel at J = 3-4 (NOTES.md, "Tokens 2 to 16",
            "The few-token kernel").
        planes_decode_max_tokens: codec planes on the GPU: up to this many tokens the decode
            kernels (one-token, few-token; Ŵ never formed), the chunked prefill above.  3 to 16
            tokens: 70-90 µs against 121-139 µs for the chunked prefill at J = 3-4 on the large
            shapes (docs/kernels.md).  At most ``BATCH_MAX_TOKENS``.
        planes_max_blocks: codec planes on the GPU: weights with more loaded blocks take the
            pure-PyTorch path.  The kernels' limit, ``KERNEL_MAX_BLOCKS``.
        lut_max_tokens: codec planes on the CPU without the native library (the PyTorch
            reference path): up to this many tokens the ``embedding_bag`` lookup tables (no Ŵ
            rebuilt), rebuilding Ŵ above.  Faster on every SmolLM2 shape up to 16 tokens; at 32
            tokens slower on one shape, at 64 on three.  0: never.
        native_max_tokens: codec planes on the CPU with the native library (bitstack.native):
            up to this many tokens its lookup-table kernel, above it the native rebuild of Ŵ and
            one F.linear.  On SmolLM2's four shapes with 3 planes (bfloat16, 2-core EPYC, two
            runs) the lookup tables took 1.1-1.6x and 1.2-1.3x less time than the rebuild at 32
            tokens, and at 64 were slower on one shape, then on all four
            (benchmarks/results/cpu/tokens.json, tokens_quiet.json; ``python -m
            benchmarks.cpu.tokens``).  A module's ``lut_max_tokens`` caps it too.  0: never.
    """

    avd_decode_max_width: int = 64
    planes_gemv_max_tokens: int = 2
    planes_decode_max_tokens: int = 16
    planes_max_blocks: int = KERNEL_MAX_BLOCKS
    lut_max_tokens: int = 16
    native_max_tokens: int = 32

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"DispatchTable.{f.name} must be a non-negative int, got {value!r}")
        for name, low, high in (("avd_decode_max_width", 1, AVD_DECODE_WIDTH_LIMIT),
                                ("planes_gemv_max_tokens", 0, BATCH_MAX_TOKENS),
                                ("planes_decode_max_tokens", 0, BATCH_MAX_TOKENS),
                                ("planes_max_blocks", 0, KERNEL_MAX_BLOCKS)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"DispatchTable.{name} must be in [{low}, {high}] (what the kernels take), "
                                 f"got {getattr(self, name)}")

    def avd_decode_max_tokens(self, rank: int) -> int:
        """Token counts up to this take the avd decode kernel for blocks of this rank (at least 1)."""
        return max(1, self.avd_decode_max_width // next_pow2(rank))


DEFAULT_TABLE = DispatchTable()
