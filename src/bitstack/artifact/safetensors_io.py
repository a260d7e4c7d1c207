"""Reading and writing safetensors files with the tensor data in a chosen order.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
N, N bytes of JSON header (padded with spaces to a multiple of 8), then the tensor data.  The
header maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative
to the start of the data; ``"__metadata__"`` maps strings to strings.  The official library
writes tensors sorted by dtype and name; we write them in the order given, so that an artifact's
blocks lie on disk in stack order and a budget reads a prefix.  The files stay valid
safetensors: the official reader loads them (tested).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from bitstack.artifact.atomic import atomic_open
from bitstack.errors import ArtifactError

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}
DTYPES: dict[str, torch.dtype] = {v: k for k, v in DTYPE_NAMES.items()}
MAX_HEADER_BYTES = 100 * 1000 * 1000


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (copied to CPU and made contiguous)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def encode_header(entries: list[tuple[str, torch.dtype, tuple[int, ...], int]], metadata: dict[str, str] | None) -> bytes:
    """Header bytes (length prefix included) for tensors laid out back to back in the given order.

    entries: (name, dtype, shape, nbytes) per tensor.
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        if name in header:
            raise ValueError(f"duplicate tensor name {name!r}")
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(path: str | Path, tensors: list[tuple[str, torch.Tensor]], metadata: dict[str, str] | None = None) -> str:
    """Write ``tensors`` in the given order, atomically.  Returns the sha256 of the whole file."""
    entries = [(name, t.dtype, tuple(t.shape), t.numel() * t.element_size()) for name, t in tensors]
    digest = hashlib.sha256()
    with atomic_open(path) as handle:
        head = encode_header(entries, metadata)
        handle.write(head)
        digest.update(head)
        for _, tensor in tensors:
            data = tensor_bytes(tensor)
            handle.write(data)
            digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # offset in the data section
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int  # file offset of the data section
    data_bytes: int


def parse_header(raw: bytes, file_size: int, *, what: str) -> SafetensorsHeader:
    """Validate and parse the first bytes of a safetensors file.

    ``raw`` must hold at least the length prefix and the header.  Raises :class:`ArtifactError`
    naming ``what`` for anything malformed.
    """
    if len(raw) < 8 or file_size < 8:
        raise ArtifactError(f"{what} is truncated: too short for a safetensors header")
    (length,) = struct.unpack("<Q", raw[:8])
    if length > MAX_HEADER_BYTES or 8 + length > file_size:
        raise ArtifactError(f"{what} has a corrupt safetensors header length ({length})")
    if len(raw) < 8 + length:
        raise ArtifactError(f"{what} is truncated inside its safetensors header")
    try:
        header = json.loads(raw[8 : 8 + length].decode("utf-8"))
    except (ValueError, RecursionError) as err:  # bad UTF-8 or JSON, too deep, an integer too long
        raise ArtifactError(f"{what} has a corrupt safetensors header: {str(err)[:200]}") from err
    if not isinstance(header, dict):
        raise ArtifactError(f"{what} has a safetensors header that is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ArtifactError(f"{what} has malformed safetensors metadata")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ArtifactError(f"{what}: tensor {name!r} has a malformed header entry")
        dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        shape, offsets = entry["shape"], entry["data_offsets"]
        if dtype is None:
            raise ArtifactError(f"{what}: tensor {name!r} has unsupported dtype {entry['dtype']!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ArtifactError(f"{what}: tensor {name!r} has a malformed shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ArtifactError(f"{what}: tensor {name!r} has malformed data offsets")
        begin, end = offsets
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end or end - begin != math.prod(shape) * itemsize:
            raise ArtifactError(f"{what}: tensor {name!r} has data offsets that do not match its shape")
        tensors[name] = TensorInfo(dtype, tuple(shape), begin, end)
    spans = sorted((t.begin, t.end) for t in tensors.values())
    position = 0
    for begin, end in spans:
        if begin != position:
            raise ArtifactError(f"{what}: tensor data overlaps or leaves a gap at offset {position}")
        position = end
    data_start = 8 + length
    if data_start + position != file_size:
        raise ArtifactError(
            f"{what} is {'truncated' if data_start + position > file_size else 'longer than its header says'}: "
            f"expected {data_start + position} bytes, found {file_size}"
        )
    return SafetensorsHeader(tensors, metadata, data_start, position)


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse the header of the safetensors file at ``path`` (reads only the header)."""
    path = Path(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
            rest = handle.read(min(length, MAX_HEADER_BYTES)) if length <= MAX_HEADER_BYTES else b""
    except FileNotFoundError as err:
        raise ArtifactError(f"{path} is missing") from err
    except OSError as err:
        raise ArtifactError(f"{path} cannot be read: {err}") from err
    return parse_header(prefix + rest, size, what=str(path))


def read_into(handle: BinaryIO, offset: int, nbytes: int, *, what: str) -> torch.Tensor:
    """Read ``nbytes`` at file ``offset`` into a fresh uint8 CPU tensor of exactly that size."""
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    try:
        handle.seek(offset)
        got = handle.readinto(memoryview(buffer.numpy()))
    except OSError as err:
        raise ArtifactError(f"{what} cannot be read: {err}") from err
    if got != nbytes:
        raise ArtifactError(f"{what} is truncated: wanted {nbytes} bytes at offset {offset}, got {got}")
    return buffer


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes; :class:`ArtifactError` naming the file if it is missing or unreadable."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    except FileNotFoundError as err:
        raise ArtifactError(f"{path} is missing") from err
    except OSError as err:
        raise ArtifactError(f"{path} cannot be read: {err}") from err
    return digest.hexdigest()
