"""``BitStackLinear``: a linear layer whose weight is a stack of residual blocks.

With blocks B_0 … B_{j-1} loaded, the layer computes

    y = (x ⊙ input_scale) · Ŵᵀ + bias,     Ŵ = Σ_{i<j} S_i ⊙ (u_i v_i)            (codec avd)
                                        Ŵ = C + Σ_{i<j} S_i ⊙ step·2^-i        (codec planes)

(``input_scale`` = 1/s when the activation scale could not be folded into a previous op; C and
step are the float16 group grids of :mod:`bitstack.core.planes`, buffers ``plane_offset`` and
``plane_step``).  No dense weight is kept.  Two ways to compute it:

* **Pure PyTorch** (CPU, no Triton, float32 compute, or ``BITSTACK_KERNELS=0``): each call
  rebuilds Ŵ transiently from the blocks.  This is the reference semantics.  Exception: a planes
  weight on the CPU with at most ``LUT_MAX_TOKENS`` tokens (decode) computes with byte lookup
  tables instead (:mod:`bitstack.core.planes_lut`; the same product, no Ŵ formed).
* **Triton kernels** (CUDA with Triton installed; the same rules for both codecs): codec avd
  stores the blocks of the module as one :class:`~bitstack.kernels.PackedBitStack` (the kernels'
  bit-plane layout, see :mod:`bitstack.kernels.layout`) and ``bitstack.kernels.bitstack_linear``
  computes the product without a dense Ŵ (decode kernel for ≤ 4 tokens at rank 16, chunked
  prefill otherwise); codec planes stores them as one :class:`~bitstack.kernels.PackedPlanes`
  (the signs stacked, stored layout unchanged, and the grid buffers) and
  ``bitstack.kernels.planes_linear`` computes it (≤ ``PLANES_DECODE_MAX_TOKENS`` = 16 tokens:
  the one- and few-token kernels, Ŵ never written to memory; chunked prefill otherwise).  Planes
  weights whose group size is not a power of two ≥ 8 stay on the pure path, and so does a
  forward with more than 16 blocks loaded (``KERNEL_MAX_BLOCKS``; they stay packed).

Storage in kernel mode ("packed")
---------------------------------
The packed tensors *are* the storage: ``self.packed`` holds signs uint8 (J, N, ceil(K/8)),
u float16 (J, N, k), v float16 (J, k, K), and ``self.blocks[i]`` is a :class:`PackedBlockView`
whose ``signs``/``u``/``v`` are the views ``packed.signs[i]``/``packed.u[i]``/``packed.v[i]``.
The signs of a view are in the bit-plane layout, not the stored one (``view.stored()`` converts;
``view.dense()`` is correct either way).  ``u`` and ``v`` are the stored factors unchanged:
``input_scale`` is *not* folded into ``v``; the module multiplies x by it (one elementwise op),
so the blocks stay exactly the artifact's values.  Codec planes: ``self.packed`` holds signs
uint8 (J, N, ceil(K/8)) in the stored layout and refers to the module's ``plane_offset`` and
``plane_step`` (not copied); ``self.blocks[i]`` is a :class:`~bitstack.core.avd.ResidualBlock`
whose signs are the view ``packed.signs[i]`` and whose u, v are empty (no storage).  The packed
layouts have exactly the stored blocks' byte size, and :func:`bitstack.memory_bytes` counts each
packed storage once, so the resident bytes still equal the manifest's prefix bytes exactly.

Changing the blocks
-------------------
The loader and :class:`~bitstack.runtime.stack.LiveStack` append stored blocks to (or pop views
from) ``self.blocks`` and then call :meth:`BitStackLinear.blocks_changed`, which repacks **this
one weight** into fresh packed tensors, one part at a time: first the signs (the views still
valid are copied, the new blocks' signs converted to the bit-plane layout), then u, then v.
After each part, ``self.blocks`` is rebuilt as views that take that part from its new tensor,
which releases the old tensor of that part (a stored block's buffer, whose signs, u and v are
views of it, goes with its last part).  Codec planes has one part: the signs are copied as they
are into a fresh (J, N, ceil(K/8)) tensor, and the views then replace the old blocks.

Transient memory of one repack (measured with ``tests/peak_meter.py``): with J blocks after it,
d = J - (blocks before) and s, u, v one block's bytes of each part, part t adds
J × (its bytes) + d × (the bytes of the parts before it), the largest of
J·s, J·u + d·s, J·v + d·(s + u); so at most J × max(s, u, v) + |d| × (s + u), where packing
the three tensors at once held the whole new weight, J × (s + u + v).  A grow or a load (d > 0)
also converts the new signs, adding uint8 scratch while the new signs tensor exists:
``bitplane_from_standard`` holds about 16 bytes (SmolLM2's shapes) to 26 bytes (tiny ones) per
byte of the sign rows converted at once (one block's, or ``_SIGN_CHUNK_BYTES`` of its rows if
smaller; :func:`sign_scratch_bytes` counts it).  Codec planes (u = v = 0, no conversion) holds
J·s, whatever d.  Callers repack weight by weight, so the
model-wide transient is that of the largest weight (:func:`repack_transient` computes it).  The
loader and the live stack keep that much free: in kernel mode they choose the longest prefix
whose bytes plus :func:`bitstack.runtime.budget.repack_reserve` fit the budget, so the peak of a
load or resize stays within it (the exceptions are stated there).  ``forward`` also repacks if
it finds ``self.blocks`` out of sync with the packed form (a safety net for code that edits the
list directly; no reserve covers that, nor :func:`set_kernels`, which packs every block).
Should a repack fail between parts, the blocks are valid views (``packed`` None: the
pure-PyTorch path) until the next ``blocks_changed``.

Transient memory that is not weight memory (not counted by ``memory_bytes``): the kernels'
scratch buffers (split-K partial sums for decode, :mod:`bitstack.kernels._splitk`; a ≤ 64 MiB
rebuilt-row scratch per (dtype, K) for the chunked prefills, cached by
:mod:`bitstack.kernels.rebuild`).
"""

from __future__ import annotations

import dataclasses
import operator
import os

import torch
import torch.nn.functional as F
from torch import nn

from bitstack.core.avd import ResidualBlock, reconstruct
from bitstack.core.planes import num_groups, planes_reconstruct, sign_only_blocks
from bitstack.core.planes_lut import planes_linear_lut, supports_lut
from bitstack.models.hadamard import rotate

KERNELS_ENV = "BITSTACK_KERNELS"  # "0", "off", "false" or "no": never use the Triton kernels
_KERNEL_DTYPES = (torch.float16, torch.bfloat16)
LUT_MAX_TOKENS = 16  # codec planes on the CPU: up to this many tokens, the lookup-table product (no Ŵ rebuilt)
_SIGN_CHUNK_BYTES = 8 << 20  # rows of stored signs converted to the bit-plane layout at a time


@dataclasses.dataclass(frozen=True)
class PackedBlockView(ResidualBlock):
    """Block ``i`` of a module's :class:`~bitstack.kernels.PackedBitStack`, as views.

    signs: uint8 (out, ceil(in/8)) in the kernels' **bit-plane** layout with ``group`` bytes per
    full group (see :mod:`bitstack.kernels.layout`).  u: float16 (out, k).  v: float16 (k, in)
    (the stored factors; ``input_scale`` is not folded in).
    """

    group: int = 32

    def stored(self) -> ResidualBlock:
        """The same block in the stored layout (fresh sign tensor; u and v are shared)."""
        from bitstack.kernels.layout import standard_from_bitplane

        return ResidualBlock(standard_from_bitplane(self.signs, self.v.shape[1], self.group), self.u, self.v)

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The block's dense contribution S ⊙ (u v), shape (out, in)."""
        from bitstack.kernels.layout import unpack_bitplane

        sign = unpack_bitplane(self.signs, self.v.shape[1], self.group).to(torch.float32) * 2 - 1
        return (sign * (self.u.to(torch.float32) @ self.v.to(torch.float32))).to(dtype)


def kernels_disabled_by_env() -> bool:
    """True when ``BITSTACK_KERNELS`` is set to 0/off/false/no."""
    return os.environ.get(KERNELS_ENV, "").strip().lower() in ("0", "off", "false", "no")


class BitStackLinear(nn.Module):
    """Drop-in replacement of ``nn.Linear`` (``in_features`` → ``out_features``).

    Attributes:
        blocks: loaded residual blocks, in load order.  Stored layout (uint8 signs, float16 u/v;
            see :class:`~bitstack.core.avd.ResidualBlock`) in the pure-PyTorch mode; views into
            ``packed`` in kernel mode (:class:`PackedBlockView`; codec planes: ResidualBlocks
            whose signs are views of the packed signs).  Managed by the loader and the live
            stack, which call :meth:`blocks_changed` after editing it.
        packed: the :class:`~bitstack.kernels.PackedBitStack` (codec avd) or
            :class:`~bitstack.kernels.PackedPlanes` (codec planes) that stores the blocks in
            kernel mode, else None.
        kernels: None (auto: kernel mode on CUDA when Triton is importable and ``BITSTACK_KERNELS``
            does not disable it), True (also on CPU under ``TRITON_INTERPRET=1``, for tests) or
            False (never).  Set it with :func:`set_kernels`.
        bias: Parameter (out,) or None.
        input_scale: buffer (in,) in the compute dtype, or None.
        input_rotation: buffer int8 (in,) of signs σ, or None: x is first rotated, x ↦ x diag(σ) H
            (:func:`bitstack.models.hadamard.rotate`; set by the loader when the artifact has it).
        group_size: 0 (codec avd) or the magnitude group size (codec planes, rank 0), whose
            buffers ``plane_offset`` and ``plane_step`` (float16 (out, ceil(in / group_size)))
            keep float16 whatever the module's dtype.
    """

    _PLANE_BUFFERS = ("plane_offset", "plane_step")

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool, input_scale: bool,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None, group_size: int = 0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.group_size = group_size
        if group_size:
            for name in self._PLANE_BUFFERS:
                self.register_buffer(name, torch.empty(out_features, num_groups(in_features, group_size),
                                                       device=device, dtype=torch.float16))
        self.blocks: list[ResidualBlock] = []
        self.packed = None  # PackedBitStack in kernel mode
        self._views: tuple[PackedBlockView, ...] = ()  # the views of ``packed`` (identity checks)
        self.kernels: bool | None = None
        self.lut_max_tokens = LUT_MAX_TOKENS  # pure path, codec planes on the CPU: see _lut_applies
        factory = {"device": device, "dtype": dtype}
        self.bias = nn.Parameter(torch.empty(out_features, **factory), requires_grad=False) if bias else None
        if input_scale:
            self.register_buffer("input_scale", torch.empty(in_features, **factory))
        else:
            self.input_scale = None
        self.register_buffer("input_rotation", None)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"group_size={self.group_size}, "
                f"blocks={len(self.blocks)}, bias={self.bias is not None}, input_scale={self.input_scale is not None}, "
                f"packed={self.packed is not None}")

    @property
    def block_bytes(self) -> int:
        return sum(b.nbytes for b in self.blocks)

    # ---- kernel mode ------------------------------------------------------------------------
    def _wants_packed(self) -> bool:
        """Whether the blocks should be stored packed (kernel mode) on their current device."""
        return bool(self.blocks) and self.packs_on(self.blocks[0].signs.device)

    def packs_on(self, device: torch.device | str) -> bool:
        """Whether blocks on ``device`` are stored packed (kernel mode), so that changing them
        repacks this weight (the loader and the live stack keep room for that: see
        :func:`repack_transient`)."""
        if self.kernels is False or (self.kernels is None and kernels_disabled_by_env()):
            return False
        if self.group_size:
            from bitstack.kernels.planes_layout import planes_group_supported

            if not planes_group_supported(self.group_size):
                return False
        device = torch.device(device)
        if device.type != "cuda" and self.kernels is not True:
            return False
        from bitstack.kernels import triton_available

        if not triton_available():
            return False
        if device.type == "cuda":
            return True
        from bitstack.kernels._checks import interpret_mode

        return interpret_mode()

    def _in_sync(self) -> bool:
        views = self._views
        return len(self.blocks) == len(views) and all(map(operator.is_, self.blocks, views))

    def blocks_changed(self) -> None:
        """Bring the storage in line with ``self.blocks`` after blocks were appended or popped.

        Kernel mode: repack this weight (see the module docstring: one part of the new packed
        tensors at a time coexists with the old ones).  Pure-PyTorch mode: convert views
        back to the stored layout if the module left kernel mode (e.g. moved to the CPU).
        """
        want = self._wants_packed()
        if want and self.packed is not None and self._in_sync():
            return
        if want:
            self._repack()
        elif self.packed is not None or any(isinstance(b, PackedBlockView) for b in self.blocks):
            # fresh tensors for every view, so that no view keeps the old packed storage alive
            if self.group_size:  # planes views: stored-layout signs of the packed tensor
                blocks = [ResidualBlock(b.signs.clone(), b.u.clone(), b.v.clone()) for b in self.blocks]
            else:
                blocks = [ResidualBlock(b.stored().signs, b.u.clone(), b.v.clone()) if isinstance(b, PackedBlockView)
                          else b for b in self.blocks]
            self.packed, self._views, self.blocks = None, (), blocks

    def _repack(self) -> None:
        """Pack ``self.blocks`` (stored blocks and/or views) into fresh packed tensors, one part at
        a time: signs uint8 (J, N, ceil(K/8)) in the bit-plane layout, then u float16 (J, N, k),
        then v float16 (J, k, K).

        After each part, ``self.blocks`` becomes :class:`PackedBlockView` s that take that part
        from its new tensor (and the others from where they were), which drops the last
        reference to the old tensor of that part; a stored block's buffer goes with its last
        part.  So only one new part is allocated on top of the old form, never the whole new
        packed weight (module docstring).  The packed values are those of an all-at-once pack.
        """
        from bitstack.kernels.layout import PackedBitStack

        N, K, k = self.out_features, self.in_features, self.rank
        _check_shapes(self.blocks, N, K, k)  # a helper: a loop variable here would hold the last block
        if self.group_size:
            self._repack_planes()
            return
        group = self.pack_group
        signs = _bitplane_signs(self.blocks, group, N, K)
        self.packed, self._views = None, ()  # the blocks alone hold the old parts now
        self.blocks = [PackedBlockView(signs[i], b.u, b.v, group) for i, b in enumerate(self.blocks)]
        u = _stacked([b.u for b in self.blocks])
        self.blocks = [PackedBlockView(signs[i], u[i], b.v, group) for i, b in enumerate(self.blocks)]
        v = _stacked([b.v for b in self.blocks])
        views = tuple(PackedBlockView(signs[i], u[i], v[i], group) for i in range(len(v)))
        self.packed, self._views, self.blocks = PackedBitStack(signs, u, v, N, K, k, group), views, list(views)

    def _repack_planes(self) -> None:
        """Codec planes: stack the blocks' signs (stored blocks and/or views, stored layout either
        way) into one fresh uint8 (J, N, ceil(K/8)) tensor, make ``self.blocks`` its views (u, v:
        shared empty float16 (N, 0) and (0, K)) and ``self.packed`` a
        :class:`~bitstack.kernels.PackedPlanes` of it and the grid buffers.  One part: the new
        signs (J × one block's) coexist with the old blocks until the views replace them."""
        from bitstack.kernels.planes_layout import PackedPlanes

        signs = _stacked([b.signs for b in self.blocks])
        packed = PackedPlanes(signs, self.plane_offset, self.plane_step, self.out_features, self.in_features,
                              self.group_size)
        views = sign_only_blocks(packed.signs.unbind(0), packed.in_features)
        self.packed, self._views, self.blocks = packed, views, list(views)

    @property
    def pack_group(self) -> int:
        """The sign group of this weight's packed layout: the current one's, else the default;
        0 for codec planes, whose packed signs keep the stored layout (no conversion)."""
        if self.group_size:
            return 0
        if self.packed is not None:
            return self.packed.group
        from bitstack.kernels.layout import DEFAULT_GROUP

        return DEFAULT_GROUP

    # ---- compute ----------------------------------------------------------------------------
    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Ŵ of the loaded blocks (zeros if none), shape (out, in) — for checks, not kept."""
        if not self.blocks:
            device = self.bias.device if self.bias is not None else None
            return torch.zeros(self.out_features, self.in_features, dtype=dtype, device=device)
        if self.group_size:
            return planes_reconstruct(self.blocks, self.plane_offset, self.plane_step, self.group_size, dtype)
        if self.packed is not None and self._in_sync():
            from bitstack.kernels.reference import dense_weight

            return dense_weight(self.packed, dtype)
        if any(isinstance(b, PackedBlockView) for b in self.blocks):
            total = self.blocks[0].dense()
            for block in self.blocks[1:]:
                total += block.dense()
            return total.to(dtype)
        return reconstruct(self.blocks, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and not self._in_sync():
            self.blocks_changed()  # someone edited self.blocks without telling us
        if self.input_rotation is not None:
            x = rotate(x, self.input_rotation)
        if self.input_scale is not None:
            x = x * self.input_scale
        packed = self.packed
        if (packed is not None and x.dtype in _KERNEL_DTYPES and x.device == packed.device
                and not (x.requires_grad and torch.is_grad_enabled())):
            if not self.group_size:
                from bitstack.kernels import bitstack_linear

                return bitstack_linear(x, packed, self.bias)
            from bitstack.kernels import planes_linear
            from bitstack.kernels.planes_layout import KERNEL_MAX_BLOCKS

            if packed.num_blocks <= KERNEL_MAX_BLOCKS:  # (more blocks: the pure path below)
                if packed.offset is not self.plane_offset or packed.step is not self.plane_step:
                    # the grid buffers were replaced (e.g. assigned anew): refer to the current ones
                    packed = self.packed = dataclasses.replace(packed, offset=self.plane_offset, step=self.plane_step)
                return planes_linear(x, packed, self.bias)
        if self._lut_applies(x):
            return planes_linear_lut(x, [b.signs for b in self.blocks], self.plane_offset, self.plane_step,
                                     self.group_size, self.bias)
        weight = self.dense_weight(x.dtype).to(x.device)
        return F.linear(x, weight, self.bias)

    def _lut_applies(self, x: torch.Tensor) -> bool:
        """Whether the pure path computes with :func:`~bitstack.core.planes_lut.planes_linear_lut`
        (codec planes on the CPU, at most ``self.lut_max_tokens`` tokens, default ``LUT_MAX_TOKENS``, no
        gradient wanted) instead of
        rebuilding Ŵ: measured faster there (benchmarks/RESULTS.md, "CPU decode")."""
        return (bool(self.group_size) and bool(self.blocks) and x.device.type == "cpu"
                and x.numel() <= self.lut_max_tokens * x.shape[-1] and supports_lut(self.in_features, self.group_size)
                and not (x.requires_grad and torch.is_grad_enabled()))

    def _apply(self, fn, recurse: bool = True):
        # Blocks and plane grids move with the module but keep their storage dtypes (uint8 signs,
        # float16 u/v and grids): only the device of ``fn``'s result is used, never its dtype
        # (a float16 -> bfloat16 -> float16 round trip would change the values).
        grids = {name: self._buffers.pop(name) for name in self._PLANE_BUFFERS if name in self._buffers}
        super()._apply(fn, recurse)

        def move(t: torch.Tensor) -> torch.Tensor:
            if t.device.type == "meta":
                return t
            target = fn(torch.empty(0, dtype=torch.float16, device=t.device)).device
            return t if t.device == target else t.to(target)

        for name, grid in grids.items():
            self._buffers[name] = move(grid)

        if self.packed is not None and self._in_sync():
            p = self.packed
            if self.group_size:
                moved = dataclasses.replace(p, signs=move(p.signs), offset=self.plane_offset, step=self.plane_step)
                self._views = sign_only_blocks(moved.signs.unbind(0), moved.in_features)
            else:
                moved = dataclasses.replace(p, signs=move(p.signs), u=move(p.u), v=move(p.v))
                self._views = tuple(PackedBlockView(moved.signs[i], moved.u[i], moved.v[i], moved.group)
                                    for i in range(moved.num_blocks))
            self.packed, self.blocks = moved, list(self._views)
        else:
            self.blocks = [dataclasses.replace(b, signs=move(b.signs), u=move(b.u), v=move(b.v)) for b in self.blocks]
        self.blocks_changed()  # pack on CUDA, unpack elsewhere
        return self


def packed_groups(modules: dict[str, "BitStackLinear"], device: torch.device | str) -> dict[str, int]:
    """{name: sign group} of the modules whose blocks on ``device`` are stored packed (kernel
    mode; :attr:`BitStackLinear.pack_group`), the ``packed`` argument of
    :func:`bitstack.runtime.budget.blocks_for_budget`; empty on the pure-PyTorch path."""
    return {name: module.pack_group for name, module in modules.items() if module.packs_on(device)}


def append_blocks(modules: dict[str, "BitStackLinear"], staged) -> None:
    """Append each ``(stack entry, block)`` of ``staged`` to ``modules[entry.tensor].blocks``.

    A function of its own so that no caller's loop variable keeps the last block alive: the
    modules then own every new block, and a kernel-mode repack frees each as it goes."""
    for entry, block in staged:
        modules[entry.tensor].blocks.append(block)


def _check_shapes(blocks, N: int, K: int, k: int) -> None:
    """ValueError unless every block has signs (N, ceil(K/8)), u (N, k) and v (k, K)."""
    for i, block in enumerate(blocks):
        if tuple(block.u.shape) != (N, k) or tuple(block.v.shape) != (k, K) or tuple(block.signs.shape) != (N, (K + 7) // 8):
            raise ValueError(f"block {i} has shapes {tuple(block.signs.shape)}, {tuple(block.u.shape)}, "
                             f"{tuple(block.v.shape)}; this layer is {N}x{K} of rank {k}")


def _bitplane_signs(blocks, group: int, N: int, K: int) -> torch.Tensor:
    """The signs of ``blocks`` (stored blocks, uint8 (N, ceil(K/8)) in the stored layout, and/or
    :class:`PackedBlockView` s) as one fresh uint8 tensor (J, N, ceil(K/8)) in the bit-plane
    layout of ``group``, on the first block's device.  Views of that group are copied; other
    signs are converted ``_SIGN_CHUNK_BYTES`` of rows at a time (scratch: module docstring)."""
    from bitstack.kernels.layout import bitplane_from_standard, standard_from_bitplane

    nb = (K + 7) // 8
    device = blocks[0].signs.device
    signs = torch.empty(len(blocks), N, nb, dtype=torch.uint8, device=device)
    rows = max(1, _SIGN_CHUNK_BYTES // max(1, nb))
    for i, block in enumerate(blocks):
        if isinstance(block, PackedBlockView) and block.group == group:
            signs[i].copy_(block.signs)
            continue
        stored = block.signs
        if isinstance(block, PackedBlockView):
            stored = standard_from_bitplane(stored, K, block.group)
        for r0 in range(0, N, rows):
            signs[i, r0:r0 + rows] = bitplane_from_standard(stored[r0:r0 + rows].to(device), K, group)
    return signs


def part_bytes(out_features: int, in_features: int, rank: int) -> tuple[int, int, int]:
    """Bytes of one block's signs, u and v (uint8 (N, ceil(K/8)), float16 (N, k), float16 (k, K))."""
    return out_features * ((in_features + 7) // 8), out_features * rank * 2, rank * in_features * 2


def sign_scratch_bytes(out_features: int, in_features: int, group: int) -> int:
    """Peak bytes of the uint8 scratch that converting one block's signs to the bit-plane layout
    of ``group`` holds (:func:`_bitplane_signs`: ``_SIGN_CHUNK_BYTES`` of rows at a time, through
    ``bitstack.kernels.layout.bitplane_from_standard``), counted from that function's tensors.

    With r rows converted at once, c = r × ceil(K/8) bytes of them and c_g = r × (the bytes of
    the widest group): unpacking to bits holds a shift table (8 bytes) and two (r, ceil(K/8), 8)
    tensors, 16c; then the bits (8c), the output (c) and, for one group, its zero-padded bits
    (8c_g), their shifted copy (8c_g), its bytes (c_g) and a shift table (8).  So
    max(16c, 9c + 17c_g) + 8: 26c + 8 at the tiny test shapes (one group), 16.6c + 8 at
    SmolLM2's (K = 576: three groups of 32 bytes in 72)."""
    nb = (in_features + 7) // 8
    rows = min(out_features, max(1, _SIGN_CHUNK_BYTES // max(1, nb)))
    c, c_g = rows * nb, rows * min(group, nb)
    return max(16 * c, 9 * c + 17 * c_g) + 8


def repack_transient(out_features: int, in_features: int, rank: int, blocks: int, delta: int, group: int) -> int:
    """Bytes above the resident ones while :meth:`BitStackLinear._repack` packs one weight of
    ``blocks`` blocks, ``delta`` of them new stored blocks (> 0: a load or a grow) or ``-delta``
    fewer than before (< 0: a shrink), measured from the resident bytes when it starts.

    The parts are packed in turn (signs, u, v; one block's bytes s, u, v: :func:`part_bytes`):
    part t allocates its new tensor, ``blocks`` × its bytes, on top of ``delta`` × the bytes of
    the parts before it (on a grow, the new stored blocks' copies of them, whose buffers go with
    their last part; on a shrink, what the fewer blocks have already freed).  New signs are
    converted through :func:`sign_scratch_bytes` while the new signs tensor exists.  ``group`` 0
    (codec planes: rank 0, the signs keep the stored layout) has no conversion and no u, v, so
    the transient is the new signs tensor alone, ``blocks`` × s, whatever ``delta``.  This is the
    module docstring's formula, and what ``tests/peak_meter.py`` measures to the byte."""
    s, u, v = part_bytes(out_features, in_features, rank)
    stages = [blocks * s, blocks * u + delta * s, blocks * v + delta * (s + u)]
    if delta > 0 and group:
        stages[0] += sign_scratch_bytes(out_features, in_features, group)
    return max(0, *stages)


def _stacked(parts: list[torch.Tensor]) -> torch.Tensor:
    """``parts`` (J tensors of one shape and dtype) copied into one fresh tensor (J, *shape) on the
    first part's device, as the packed layouts store u and v (float16) and the planes signs (uint8)."""
    out = torch.empty(len(parts), *parts[0].shape, dtype=parts[0].dtype, device=parts[0].device)
    for i, part in enumerate(parts):
        out[i].copy_(part)
    return out


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
