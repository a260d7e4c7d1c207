"""Block codecs: how one weight becomes residual blocks (:class:`~bitstack.codecs.base.Codec`).

One folder per codec, one line per codec in :data:`_BUILTIN` below.  Everything outside this
package reaches a codec through :func:`get_codec` and the :class:`~bitstack.codecs.base.Codec`
interface, never by its module.  A built-in codec's module is imported when the codec is first
asked for, so that importing a codec's pure math (e.g. ``bitstack.codecs.planes.grid``, which the
kernels' references use) never imports the run-time side that calls the kernels.

A codec's compression settings become ``bitstack.CompressConfig`` fields (and ``bitstack
compress`` flags) when it is listed here; a codec registered later with :func:`register_codec`
(e.g. by a test) gets its settings' defaults.
"""

from __future__ import annotations

import importlib

from bitstack.codecs.base import Codec
from bitstack.errors import InputError

# name -> (module, class) of the built-in codecs, in the order the CLI lists them
_BUILTIN = {
    "planes": ("bitstack.codecs.planes.codec", "PlanesCodec"),
    "avd": ("bitstack.codecs.avd.codec", "AvdCodec"),
}
DEFAULT_CODEC = "planes"
VERSION_1_CODEC = "avd"  # format and settings version 1 knew one codec, the paper's

_REGISTRY: dict[str, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    """Make ``codec`` available by its name (an error if the name is taken); returns it."""
    if not isinstance(codec, Codec) or not isinstance(codec.name, str) or not codec.name:
        raise InputError(f"a codec must be a named bitstack.codecs.base.Codec instance, got {codec!r}")
    if codec.name in _REGISTRY or codec.name in _BUILTIN:
        raise InputError(f"a codec named {codec.name!r} is already registered")
    _REGISTRY[codec.name] = codec
    return codec


def get_codec(name: str) -> Codec:
    """The codec of that name (InputError naming the known ones otherwise)."""
    if not isinstance(name, str) or name not in _REGISTRY and name not in _BUILTIN:
        raise InputError(f"unknown codec {name!r}: this bitstack knows {', '.join(codec_names())}")
    if name not in _REGISTRY:
        module, cls = _BUILTIN[name]
        _REGISTRY[name] = getattr(importlib.import_module(module), cls)()
    return _REGISTRY[name]


def codec_names() -> tuple[str, ...]:
    """The known codecs' names: the built-in ones, then those registered since."""
    return tuple(dict.fromkeys([*_BUILTIN, *_REGISTRY]))
