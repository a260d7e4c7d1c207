"""The codec interface: one weight as residual blocks, and everything that depends on how.

A codec turns one activation-scaled weight W·diag(s) (float32 (out, in)) into ``niter`` residual
blocks whose every prefix is a valid approximation Ŵ_j, and it alone knows those blocks: their
on-disk parts and byte size, the weight's base buffers they need, their reference reconstruction,
their packed form and linear product at run time, the bytes a repack holds, a weight's parameters
in the manifest and their validation, and its own compression settings.  The rest of bitstack
(compressor, artifact, runtime, sorting) calls a codec only through :class:`Codec`
(``bitstack.codecs.get_codec(name)``) and never branches on which one it is.

Terms used by the methods:

* **weight**: anything with ``out_features``, ``in_features`` and ``params`` (the codec's
  parameters of that weight, a JSON object such as ``{"group_size": 128}``): a manifest
  ``WeightEntry``, a :class:`WeightShape` or a ``BitStackLinear``.
* **base**: {part: tensor} of the weight's base buffers (:meth:`Codec.base_buffers`), stored with
  the non-decomposed weights (a ``BitStackLinear`` holds them as buffers of the same names).
* **module**: a ``BitStackLinear`` (:mod:`bitstack.runtime.linear`): ``blocks`` (its
  :class:`Block` s), ``packed`` (the codec's packed form in kernel mode, else None),
  ``set_blocks(blocks)`` / ``set_packed(packed, views)`` to change them, ``bias``,
  ``input_scale``, ``kernels``, ``lut_max_tokens`` and its base buffers as attributes.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from bitstack.errors import ArtifactError, InputError

Parts = tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]


class Block:
    """One residual block of one weight: named tensors (its *parts*) in on-disk order.

    Which parts a block has is its codec's (:meth:`Codec.block_parts`); each is an attribute
    (``block.signs``), so part names must not be those of the attributes below.  A block is
    immutable; its tensors may be views of one buffer (a block read from an artifact: its resident
    size is that buffer's) or of packed tensors.
    """

    stored_layout = True  # the parts are in the stored (on-disk) layout; False for views of a kernel layout

    def __init__(self, **parts: torch.Tensor):
        for name, tensor in parts.items():
            if hasattr(type(self), name):
                raise ValueError(f"{name!r} cannot name a block part")
            object.__setattr__(self, name, tensor)
        object.__setattr__(self, "_names", tuple(parts))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a block is immutable")

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.parts.items())
        return f"{type(self).__name__}({shapes})"

    @property
    def parts(self) -> dict[str, torch.Tensor]:
        """{name: tensor} of the parts, in on-disk order."""
        return {name: self.__dict__[name] for name in self._names}

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The parts' tensors, in on-disk order."""
        return tuple(self.__dict__[name] for name in self._names)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Block":
        """A block of the same parts, each passed through ``fn`` (e.g. moved to a device)."""
        return Block(**{name: fn(tensor) for name, tensor in self.parts.items()})


@dataclass(frozen=True, eq=False)
class WeightShape:
    """A weight as the codec methods see it: its shape and its codec parameters."""

    out_features: int
    in_features: int
    params: Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class Decomposition:
    """What :meth:`Codec.decompose` returns for one weight.

    params: the weight's codec parameters (stored in the manifest).
    blocks: ``niter`` blocks, in load order, their parts as :meth:`Codec.block_parts` lists them.
    base: {part: tensor} of the weight's base buffers, in their stored dtype (may be empty).
    residual_sq: ``niter + 1`` energies E[i] of W·diag(s) − Ŵ_i (E[0]: of the weight itself), the
        compress-time input of the ``proxy`` sort (:mod:`bitstack.sorting.strategies`).
    """

    params: dict[str, Any]
    blocks: list[Block]
    base: dict[str, torch.Tensor]
    residual_sq: list[float]


# ---- settings ---------------------------------------------------------------------------------
def setting(default: Any, help: str, **extra: Any) -> Any:
    """A settings field: its default, its help (the CLI's) and optional ``choices`` or ``minimum``
    (an int's least value), checked by :func:`check_settings`."""
    return field(default=default, metadata={"help": help, **extra})


def check_settings(settings: Any) -> None:
    """InputError naming the first field of a settings dataclass outside its ``choices`` or below
    its ``minimum`` (ints only: bools are refused)."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        least = f.metadata.get("minimum")
        if least is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            kind = "a positive" if least == 1 else "a non-negative"
            raise InputError(f"{f.name} must be {kind} integer, got {value!r}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise InputError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class NoSettings:
    """The settings of a codec that has none of its own."""


# ---- the interface ----------------------------------------------------------------------------
class Codec(abc.ABC):
    """One block codec (see the module docstring for the terms).  Instances are stateless."""

    name: str = ""  # the manifest's and the CLI's name
    description: str = ""  # one line: what a block is
    settings_type: type = NoSettings  # frozen dataclass of the codec's compression settings (:func:`setting` fields)
    scale_power_rule: str = "1"  # what scale_power 'auto' means for this codec, in words

    # ---- compression ------------------------------------------------------------------------
    def needs_hessian(self, settings: Any) -> bool:
        """Whether :meth:`decompose` wants the calibration Hessian Σ x xᵀ of the weight's input."""
        return False

    def auto_scale_power(self, weights: Sequence[torch.Tensor], hessians: Sequence[torch.Tensor | None],
                         scale: torch.Tensor, settings: Any) -> float:
        """The exponent p of the activation scale (W·diag(s^p)) for ``scale_power='auto'``, given
        the unscaled weights (float32 (out, in)) that read one input, their Hessians and the
        shared scale s (float32 (in,)).  Default: 1, the paper's scale."""
        return 1.0

    @abc.abstractmethod
    def decompose(self, weight: torch.Tensor, settings: Any, *, niter: int, hessian: torch.Tensor | None,
                  calib_tokens: int, seed: int) -> Decomposition:
        """Decompose ``weight`` (float32 (out, in), already scaled) into ``niter`` blocks.

        hessian: float32 (in, in) of the scaled inputs, if :meth:`needs_hessian`; calib_tokens:
        how many calibration tokens it sums; seed: fixes any randomness (the result is a pure
        function of the arguments).
        """

    # ---- format -----------------------------------------------------------------------------
    @abc.abstractmethod
    def block_parts(self, weight: Any) -> Parts:
        """(name, dtype, shape) of a block's parts, in on-disk order."""

    def block_nbytes(self, weight: Any) -> int:
        """Bytes of one stored block (the parts back to back)."""
        return sum(_numel(shape) * _itemsize(dtype) for _, dtype, shape in self.block_parts(weight))

    def base_buffers(self, weight: Any) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """{part: (dtype, shape)} of the weight's base buffers, stored in base as ``NAME.part``."""
        return {}

    @abc.abstractmethod
    def check_params(self, params: Any, what: str) -> None:
        """ArtifactError (naming ``what``) unless ``params`` are valid parameters of this codec."""

    def legacy_params(self, entry: dict, version: int) -> tuple[dict, tuple[str, ...]] | None:
        """For a weight entry of manifest format ``version`` < 3 (a JSON object) that this codec
        wrote: (its parameters, the legacy keys they replace); else None."""
        return None

    @abc.abstractmethod
    def describe(self, params: Mapping[str, Any]) -> str:
        """A few words on a weight's parameters, e.g. 'groups of 128'."""

    # ---- reference math ---------------------------------------------------------------------
    @abc.abstractmethod
    def contribution(self, weight: Any, block: Block, index: int, base: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Block ``index``'s term of Ŵ, float32 (out, in): Ŵ_j is the sum of the first j terms in
        block order (accumulated in float32)."""

    def uniform_grid(self, module: Any, block: int) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """(d, m, bits) when the loaded blocks of ``module`` (a BitStackLinear) are, per row and run
        of ``block`` consecutive inputs, exactly the uniform grid Ŵ = m + d·q with q an integer in
        [0, 2^bits): d and m float32 (out, in / block).  None (the default) when they are not; used
        to store a prefix exactly in another format (GGUF's affine block types)."""
        return None

    # ---- run time (module: a BitStackLinear) -------------------------------------------------
    def kernel_supported(self, weight: Any) -> bool:
        """Whether the Triton kernels take this weight (else it stays on the pure path)."""
        return False

    def pack_layout(self, module: Any) -> int:
        """The packed layout a repack of ``module`` would use, as :meth:`repack_transient` reads it."""
        return 0

    def pack(self, module: Any) -> None:
        """Kernel mode: store ``module.blocks`` in the packed form (``module.set_packed``)."""
        raise NotImplementedError(f"codec {self.name} has no packed form")

    def unpack(self, module: Any) -> None:
        """Leave kernel mode: blocks of fresh stored-layout tensors (``module.set_blocks``)."""
        module.set_blocks([b.map(torch.clone) for b in module.blocks])

    def fast_linear(self, module: Any, x: torch.Tensor) -> torch.Tensor | None:
        """``x · Ŵᵀ + bias`` (x already multiplied by the input scale) without rebuilding Ŵ, when
        this codec has such a path for ``x`` (kernels, lookup tables); else None (rebuild Ŵ)."""
        return None

    def dense_weight(self, module: Any, dtype: torch.dtype) -> torch.Tensor:
        """Ŵ of ``module``'s blocks (at least one), ``dtype`` (out, in), accumulated in float32."""
        base = module.codec_base()
        total = self.contribution(module, module.blocks[0], 0, base)
        for index in range(1, len(module.blocks)):
            total = total + self.contribution(module, module.blocks[index], index, base)
        return total.to(dtype)

    def move_packed(self, module: Any, move: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Kernel mode: move ``module``'s packed form with ``move`` (which keeps dtypes) and make
        its views the blocks (``module.set_packed``); the base buffers have moved already."""
        raise NotImplementedError(f"codec {self.name} has no packed form")

    def repack_transient(self, weight: Any, blocks: int, delta: int, layout: int) -> int:
        """Bytes above the resident ones while :meth:`pack` packs a weight of ``blocks`` blocks,
        ``delta`` of them new (> 0) or ``-delta`` fewer than before (< 0) (0: no packed form)."""
        return 0


def check_positive_params(params: Any, keys: tuple[str, ...], codec: str, what: str) -> None:
    """ArtifactError unless ``params`` is an object of exactly ``keys``, each an int >= 1 (the
    ``check_params`` of a codec whose parameters are such counts)."""
    if not isinstance(params, dict) or set(params) != set(keys):
        raise ArtifactError(f"{what}: codec {codec}'s params must be exactly {', '.join(keys)}, got {params!r}"[:300])
    for key in keys:
        if type(params[key]) is not int:
            raise ArtifactError(f"{what}: field {key!r} must be of type int")
        if params[key] < 1:
            raise ArtifactError(f"{what}: {key} must be >= 1, got {params[key]}")


KERNEL_DTYPES = (torch.float16, torch.bfloat16)  # what the Triton kernels compute in


def kernel_input_ok(module: Any, x: torch.Tensor) -> bool:
    """Whether ``module``'s packed form can take ``x`` now: packed, a kernel dtype, the packed
    form's device, and no gradient wanted (the kernels have no backward)."""
    packed = module.packed
    return (packed is not None and x.dtype in KERNEL_DTYPES and x.device == packed.device
            and not (x.requires_grad and torch.is_grad_enabled()))


def stacked(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``parts`` (J tensors of one shape and dtype) copied into one fresh tensor (J, *shape) on the
    first part's device (the packed forms' stacked signs and factors)."""
    out = torch.empty(len(parts), *parts[0].shape, dtype=parts[0].dtype, device=parts[0].device)
    for i, part in enumerate(parts):
        out[i].copy_(part)
    return out


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
