"""``BitStackLinear``: a linear layer whose weight is a stack of residual blocks.

With blocks B_0 … B_{j-1} loaded, the layer computes

    y = (x ⊙ input_scale) · Ŵᵀ + bias,     Ŵ = the sum of the blocks' terms (its codec's)

(``input_scale`` = 1/s when the activation scale could not be folded into a previous op).  No
dense weight is kept.  What a block is, how Ŵ is rebuilt, the packed form and the products are
the codec's (:mod:`bitstack.codecs`); this module holds what every codec shares:

* **Pure PyTorch** (CPU, no Triton, float32 compute, or ``BITSTACK_KERNELS=0``): each call
  rebuilds Ŵ transiently from the blocks (``Codec.dense_weight``), unless the codec has a faster
  product for the call (``Codec.fast_linear``; e.g. planes' lookup tables on the CPU for at most
  ``lut_max_tokens`` tokens).  This is the reference semantics.
* **Kernel mode** (CUDA with Triton installed, or ``kernels=True`` under ``TRITON_INTERPRET=1``,
  for a weight the codec's kernels take: ``Codec.kernel_supported``): the blocks are stored in
  the codec's packed form (``self.packed``; ``self.blocks`` are its views), which the Triton
  kernels read (``Codec.fast_linear``).  The packed form has exactly the stored blocks' byte size,
  and :func:`bitstack.memory_bytes` counts each storage once, so the resident bytes equal the
  manifest's prefix bytes exactly.

Changing the blocks
-------------------
The live stack (:mod:`bitstack.runtime.stack`, also for a load) appends stored blocks to (or pops
blocks from) ``self.blocks`` and then calls :meth:`BitStackLinear.blocks_changed`, which in kernel
mode repacks **this one weight** (``Codec.pack``; the transient it holds is
``Codec.repack_transient``, and the loader and the live stack keep that much free:
:func:`bitstack.runtime.budget.repack_reserve`).  ``forward`` also repacks if it finds
``self.blocks`` out of sync with the packed form (a safety net for code that edits the list
directly, in eager mode; no reserve covers that, nor :func:`set_kernels`, which packs every block).

Compiled models
---------------
In kernel mode the forward calls the codec's custom operator (``bitstack::planes_linear``,
``bitstack::avd_linear``: :mod:`bitstack.kernels.ops`), which ``torch.compile`` traces without a
graph break; the packed tensors are validated once per repack, not per call.  A resize replaces
the packed tensors: the compiled graph is re-specialised where a block count (a shape) changed,
and CUDA graphs are re-recorded (the packed tensors are static inputs whose address changed), so
the next call computes with the new blocks.

Transient memory that is not weight memory (not counted by ``memory_bytes``): the kernels'
scratch buffers (split-K partial sums for decode; a ≤ 64 MiB rebuilt-row scratch per (dtype, K)
for the chunked prefills, cached by ``bitstack.kernels``).
"""

from __future__ import annotations

import operator
import os
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from bitstack.codecs import get_codec
from bitstack.codecs.base import Block, Codec
from bitstack.kernels import triton_available
from bitstack.kernels._checks import interpret_mode
from bitstack.kernels.dispatch import DEFAULT_TABLE

KERNELS_ENV = "BITSTACK_KERNELS"  # "0", "off", "false" or "no": never use the Triton kernels
# a module's default cap on a codec's CPU lookup-table products (planes): none below the dispatch table's own thresholds
LUT_MAX_TOKENS = max(DEFAULT_TABLE.lut_max_tokens, DEFAULT_TABLE.native_max_tokens)


def kernels_disabled_by_env() -> bool:
    """True when ``BITSTACK_KERNELS`` is set to 0/off/false/no."""
    return os.environ.get(KERNELS_ENV, "").strip().lower() in ("0", "off", "false", "no")


class BitStackLinear(nn.Module):
    """Drop-in replacement of ``nn.Linear`` (``in_features`` → ``out_features``).

    Args:
        codec: the weight's codec (a name or a :class:`~bitstack.codecs.base.Codec`).
        params: its codec parameters (the manifest's ``params`` of the weight).
        bias, input_scale: whether the layer has them (their values come with the base).

    Attributes:
        blocks: loaded residual blocks (:class:`~bitstack.codecs.base.Block`), in load order:
            stored blocks on the pure path, views of ``packed`` in kernel mode.  Managed by the
            live stack, which calls :meth:`blocks_changed` after editing it.
        packed: the codec's packed form in kernel mode, else None.
        kernels: None (auto: kernel mode on CUDA when Triton is importable and ``BITSTACK_KERNELS``
            does not disable it), True (also on CPU under ``TRITON_INTERPRET=1``, for tests) or
            False (never).  Set it with :func:`set_kernels`.
        lut_max_tokens: the most tokens of a call for which a codec's CPU lookup-table product
            is used (default ``LUT_MAX_TOKENS``; 0: always rebuild Ŵ).
        bias: Parameter (out,) or None.
        input_scale: buffer (in,) in the compute dtype, or None.
        The codec's base buffers (``Codec.base_buffers``, e.g. planes' ``plane_offset`` and
        ``plane_step``) are buffers of the same names, which keep their dtype whatever the
        module's.
    """

    def __init__(self, in_features: int, out_features: int, *, codec: str | Codec, params: Mapping[str, Any],
                 bias: bool, input_scale: bool, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.codec = get_codec(codec) if isinstance(codec, str) else codec
        self.params = dict(params)
        self._base_names = tuple(self.codec.base_buffers(self))
        for name, (buffer_dtype, shape) in self.codec.base_buffers(self).items():
            self.register_buffer(name, torch.empty(shape, device=device, dtype=buffer_dtype))
        self.blocks: list[Block] = []
        self.packed = None
        self._views: tuple[Block, ...] = ()  # the views of ``packed`` (identity checks)
        self.kernels: bool | None = None
        self.lut_max_tokens = LUT_MAX_TOKENS
        factory = {"device": device, "dtype": dtype}
        self.bias = nn.Parameter(torch.empty(out_features, **factory), requires_grad=False) if bias else None
        if input_scale:
            self.register_buffer("input_scale", torch.empty(in_features, **factory))
        else:
            self.input_scale = None

    @classmethod
    def for_weight(cls, weight: Any, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> "BitStackLinear":
        """The (empty) layer of a manifest ``WeightEntry``."""
        return cls(weight.in_features, weight.out_features, codec=weight.codec, params=weight.params, bias=weight.bias,
                   input_scale=weight.input_scale, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, codec={self.codec.name} "
                f"({self.codec.describe(self.params)}), blocks={len(self.blocks)}, bias={self.bias is not None}, "
                f"input_scale={self.input_scale is not None}, packed={self.packed is not None}")

    @property
    def block_bytes(self) -> int:
        return sum(b.nbytes for b in self.blocks)

    def codec_base(self) -> dict[str, torch.Tensor]:
        """{part: buffer} of the codec's base buffers."""
        return {name: self._buffers[name] for name in self._base_names}

    # ---- storage (the codecs change it through these two) ---------------------------------
    def set_blocks(self, blocks) -> None:
        """Blocks not (or no longer) backed by a packed form."""
        self.packed, self._views, self.blocks = None, (), list(blocks)

    def set_packed(self, packed: Any, views) -> None:
        """The packed form and its views, which become the blocks."""
        self._views = tuple(views)
        self.packed, self.blocks = packed, list(self._views)

    def in_sync(self) -> bool:
        """Whether ``blocks`` are exactly the views of ``packed``."""
        views = self._views
        return len(self.blocks) == len(views) and all(map(operator.is_, self.blocks, views))

    # ---- kernel mode ------------------------------------------------------------------------
    def packs_on(self, device: torch.device | str) -> bool:
        """Whether blocks on ``device`` are stored packed (kernel mode), so that changing them
        repacks this weight (the live stack keeps room for that: ``Codec.repack_transient``)."""
        if self.kernels is False or (self.kernels is None and kernels_disabled_by_env()):
            return False
        if not self.codec.kernel_supported(self):
            return False
        device = torch.device(device)
        if device.type != "cuda" and self.kernels is not True:
            return False
        if not triton_available():
            return False
        return device.type == "cuda" or interpret_mode()

    @property
    def pack_group(self) -> int:
        """This weight's packed layout as ``Codec.repack_transient`` reads it (``Codec.pack_layout``:
        avd, the sign group of its bit-plane layout; planes, 0)."""
        return self.codec.pack_layout(self)

    def blocks_changed(self) -> None:
        """Bring the storage in line with ``self.blocks`` after blocks were appended or popped.

        Kernel mode: repack this weight (``Codec.pack``).  Pure-PyTorch mode: back to fresh
        stored-layout tensors (``Codec.unpack``) if the module left kernel mode (e.g. moved to the
        CPU) or holds views of a packed layout.
        """
        want = bool(self.blocks) and self.packs_on(self.blocks[0].tensors[0].device)
        if want and self.packed is not None and self.in_sync():
            return
        if want:
            self._check_blocks()  # a helper: a loop variable here would hold the last block
            self.codec.pack(self)
        elif self.packed is not None or not all(b.stored_layout for b in self.blocks):
            self.codec.unpack(self)

    def _check_blocks(self) -> None:
        """ValueError unless every block has the parts (names, shapes) of this layer's codec."""
        expected = tuple((name, tuple(shape)) for name, _, shape in self.codec.block_parts(self))
        for i, block in enumerate(self.blocks):
            parts = tuple((name, tuple(t.shape)) for name, t in block.parts.items())
            if parts != expected:
                raise ValueError(f"block {i} has parts {parts}; this layer's blocks have {expected}")

    # ---- compute ----------------------------------------------------------------------------
    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Ŵ of the loaded blocks (zeros if none), shape (out, in) — for checks, not kept."""
        if not self.blocks:
            device = self.bias.device if self.bias is not None else None
            return torch.zeros(self.out_features, self.in_features, dtype=dtype, device=device)
        return self.codec.dense_weight(self, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The safety net below is eager-only: under torch.compile the blocks are the live stack's,
        # which calls blocks_changed itself (no per-block guards in the compiled graph).
        if self.packed is not None and not torch.compiler.is_compiling() and not self.in_sync():
            self.blocks_changed()  # someone edited self.blocks without telling us
        if self.input_scale is not None:
            x = x * self.input_scale
        y = self.codec.fast_linear(self, x) if self.blocks else None
        if y is not None:
            return y
        return F.linear(x, self.dense_weight(x.dtype).to(x.device), self.bias)

    def _apply(self, fn, recurse: bool = True):
        # Blocks and base buffers move with the module but keep their storage dtypes (uint8 signs,
        # float16 factors and grids): only the device of ``fn``'s result is used, never its dtype
        # (a float16 -> bfloat16 -> float16 round trip would change the values).
        base = {name: self._buffers.pop(name) for name in self._base_names if name in self._buffers}
        super()._apply(fn, recurse)

        def move(t: torch.Tensor) -> torch.Tensor:
            if t.device.type == "meta":
                return t
            target = fn(torch.empty(0, dtype=torch.float16, device=t.device)).device
            return t if t.device == target else t.to(target)

        for name, buffer in base.items():
            self._buffers[name] = move(buffer)
        if self.packed is not None and self.in_sync():
            self.codec.move_packed(self, move)
        else:
            self.blocks = [b.map(move) for b in self.blocks]
        self.blocks_changed()  # pack on CUDA, unpack elsewhere
        return self


def packed_groups(modules: dict[str, BitStackLinear], device: torch.device | str) -> dict[str, int]:
    """{name: packed layout} of the modules whose blocks on ``device`` are stored packed (kernel
    mode; :attr:`BitStackLinear.pack_group`), the ``packed`` argument of
    :func:`bitstack.runtime.budget.blocks_for_budget`; empty on the pure-PyTorch path."""
    return {name: module.pack_group for name, module in modules.items() if module.packs_on(device)}


def append_blocks(modules: dict[str, BitStackLinear], staged) -> None:
    """Append each ``(stack entry, block)`` of ``staged`` to ``modules[entry.tensor].blocks``.

    A function of its own so that no caller's loop variable keeps the last block alive: the
    modules then own every new block, and a kernel-mode repack frees each as it goes."""
    for entry, block in staged:
        modules[entry.tensor].blocks.append(block)


def set_kernels(model: nn.Module, enabled: bool | None) -> int:
    """Choose the compute path of every :class:`BitStackLinear` of ``model`` and repack/unpack now.

    ``enabled``: True (kernels wherever possible: CUDA, or CPU under ``TRITON_INTERPRET=1``),
    False (pure PyTorch, stored layout), None (automatic, the default).  Weights are converted one
    at a time, under the model's stack lock when it has one.  Returns how many layers are packed.
    """
    state = getattr(model, "bitstack", None)
    lock = getattr(state, "lock", None)
    modules = [m for m in model.modules() if isinstance(m, BitStackLinear)]
    if lock is not None:
        lock.acquire()
    try:
        for module in modules:
            module.kernels = enabled
            module.blocks_changed()
    finally:
        if lock is not None:
            lock.release()
    return sum(m.packed is not None for m in modules)
