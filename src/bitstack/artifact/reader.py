"""Reading an artifact: the manifest, the base weights, and any range of the block stack.

Blocks are read with one ``readinto`` each, straight into a buffer of exactly the block's size,
and checked against the manifest's xxh3-128 checksum when ``verify`` is on (base and
tokenizer files: sha256).  Nothing in an artifact is
ever executed: the manifest is JSON, tensors are safetensors, the tokenizer is loaded by
transformers from its JSON files.

Base tensors that :meth:`ArtifactReader.read_base` converts to another dtype are converted chunk
by chunk: the output is allocated in the target dtype and filled from one small reused buffer of
stored bytes, so that a conversion never holds a second whole copy of a tensor.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Collection

import torch
import xxhash

from bitstack.artifact.layout import block_from_buffer, block_tensor_names, part_spans
from bitstack.artifact.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, BlockEntry, Manifest
from bitstack.artifact.safetensors_io import DTYPES, SafetensorsHeader, read_header, read_into, sha256_file
from bitstack.codecs import get_codec
from bitstack.codecs.base import Block
from bitstack.errors import ArtifactError, InputError


_MAX_IOV = 1024  # buffers per preadv call (Linux IOV_MAX)
_STAGING_BYTES = 64 * 1000 * 1000  # per pinned staging buffer when loading onto a GPU
CONVERT_CHUNK_BYTES = 1 << 20  # default bound on the stored bytes held at once while converting a base tensor
_CONVERT_ALIGN = 64  # elements: chunks of a converted tensor are multiples of this (see _read_converted)


class ArtifactReader:
    """An open artifact directory.  Use as a context manager, or call :meth:`close`.

    Library code opens artifacts through :func:`bitstack.artifact.opening.open_artifact`.
    """

    def __init__(self, path: str | Path, *, verify: bool = True):
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"an artifact path must be a string or a path, got {type(path).__name__}")
        self.path = Path(path)
        self.verify = verify
        if not self.path.exists():
            raise InputError(f"artifact {self.path} does not exist")
        manifest_path = self.path / MANIFEST_NAME
        if not self.path.is_dir() or not manifest_path.is_file():
            raise InputError(f"{self.path} is not a bitstack artifact: it has no {MANIFEST_NAME}")
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{manifest_path} is implausibly large")
        self.manifest = Manifest.from_json(manifest_path.read_bytes(), what=str(manifest_path))
        self._handles: dict[int, BinaryIO] = {}
        self._headers: dict[int, SafetensorsHeader] = {}
        self._parts = {w.name: get_codec(w.codec).block_parts(w) for w in self.manifest.weights}  # on-disk parts
        self._spans = {name: part_spans(parts) for name, parts in self._parts.items()}
        self._staging: list[torch.Tensor] | None = None

    # ---- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __enter__(self) -> "ArtifactReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def disk_bytes(self) -> int:
        """Bytes of the artifact's files on disk."""
        return artifact_size_on_disk(self.path)

    # ---- base weights -------------------------------------------------------------------
    def read_base(self, dtype: torch.dtype | None = None, *, chunk_bytes: int = CONVERT_CHUNK_BYTES,
                  names: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """All base tensors on the CPU, by name; floating ``param`` tensors are cast to ``dtype``.
        ``names``: read only these (a rank's part, :mod:`bitstack.distributed.shard`).

        Each tensor is a fresh contiguous CPU tensor of its manifest shape: in its stored dtype,
        or in ``dtype`` for a floating ``param`` when ``dtype`` is given.  A tensor whose stored
        dtype is already ``dtype`` (and every other tensor) is read whole, straight into its own
        buffer.  A tensor to convert is allocated in ``dtype`` first, then filled in flat element
        order from at most ``chunk_bytes`` stored bytes at a time (rounded down to whole stored
        elements, at least one, and to a multiple of 64 elements when there is room for 64 but
        not for the whole tensor), read into one uint8 buffer that is reused for the tensor and
        converted with ``copy_``: the values of ``Tensor.to(dtype)`` (NaN payloads: see
        ``_read_converted``).  So the transient on top of the tensors read is that one buffer,
        at most ``min(chunk_bytes, the tensor's stored bytes)`` (one stored element if
        ``chunk_bytes`` is smaller), and nothing else.

        The file's sha256 is checked first, as a whole, when ``verify`` is on.
        """
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
        base_path = self.path / self.manifest.base["file"]
        header = read_header(base_path)
        expected = {t.name: t for t in self.manifest.base_tensors}
        if set(header.tensors) != set(expected):
            raise ArtifactError(f"{base_path} holds different tensors than the manifest lists")
        if self.verify and sha256_file(base_path) != self.manifest.base["sha256"]:
            raise ArtifactError(f"{base_path} is corrupted: its sha256 does not match the manifest")
        out: dict[str, torch.Tensor] = {}
        with open(base_path, "rb") as handle:
            for name, info in header.tensors.items():
                if names is not None and name not in names:
                    continue
                spec = expected[name]
                if DTYPES[spec.dtype] != info.dtype or tuple(spec.shape) != info.shape:
                    raise ArtifactError(f"{base_path}: tensor {name!r} does not match the manifest's dtype/shape")
                offset, nbytes = header.data_start + info.begin, info.end - info.begin
                if (dtype is not None and spec.kind == "param" and info.dtype.is_floating_point
                        and info.dtype != dtype):
                    out[name] = _read_converted(handle, offset, nbytes, info.dtype, info.shape, dtype, chunk_bytes,
                                                what=str(base_path))
                else:
                    out[name] = read_into(handle, offset, nbytes, what=str(base_path)).view(info.dtype).view(info.shape)
        return out

    # ---- blocks -------------------------------------------------------------------------
    def _shard(self, number: int) -> tuple[BinaryIO, SafetensorsHeader]:
        if number not in self._handles:
            entry = self.manifest.shards[number]
            path = self.path / entry.file
            header = read_header(path)
            if header.data_bytes != entry.bytes:
                raise ArtifactError(f"{path} holds {header.data_bytes} bytes of blocks, the manifest says {entry.bytes}")
            self._check_shard_header(number, header, path)
            self._headers[number] = header
            self._handles[number] = open(path, "rb")
        return self._handles[number], self._headers[number]

    def _check_shard_header(self, number: int, header: SafetensorsHeader, path: Path) -> None:
        for block in self.manifest.stack:
            if block.shard != number:
                continue
            spans = self._spans[block.tensor]
            names = block_tensor_names(block.tensor, block.index, self._parts[block.tensor])
            for name, (_, begin, end, dtype, shape) in zip(names, spans):
                info = header.tensors.get(name)
                if (info is None or info.dtype != dtype or info.shape != shape or info.begin != block.offset + begin
                        or info.end != block.offset + end):
                    raise ArtifactError(f"{path}: block {block.index} of {block.tensor} does not match the manifest ({name})")

    def _shard_of(self, entry: BlockEntry) -> tuple[BinaryIO, SafetensorsHeader]:
        """:meth:`_shard` for a block; a missing or malformed shard's error names the block too."""
        try:
            return self._shard(entry.shard)
        except ArtifactError as err:
            raise ArtifactError(f"{err} (reading block {entry.index} of {entry.tensor})") from err

    def _read_raw(self, position: int) -> tuple[torch.Tensor, str]:
        entry = self.manifest.stack[position]
        handle, header = self._shard_of(entry)
        path = self.path / self.manifest.shards[entry.shard].file
        what = f"{path} (block {entry.index} of {entry.tensor})"
        return read_into(handle, header.data_start + entry.offset, entry.bytes, what=what), what

    def _as_block(self, position: int, buffer: torch.Tensor, device) -> Block:
        if device is not None and (device.type if isinstance(device, torch.device) else torch.device(device).type) != "cpu":
            buffer = buffer.to(device)
        return block_from_buffer(buffer, self._spans[self.manifest.stack[position].tensor])

    def read_block(self, position: int, device: torch.device | str | None = None) -> Block:
        """The block at ``position`` in the stack, as views of one buffer on ``device``."""
        buffer, what = self._read_raw(position)
        if self.verify:
            _check_digest(buffer, self.manifest.stack[position].xxh3_128, what)
        return self._as_block(position, buffer, device)

    def read_blocks(self, start: int, stop: int, device: torch.device | str | None = None) -> list[tuple[BlockEntry, Block]]:
        """Blocks ``start <= position < stop`` of the stack, in order, all verified.

        Each block gets its own buffer of exactly its size (so that it can be freed alone), but
        blocks that lie back to back in a shard — all of a stack range, by construction — are
        read with one ``preadv`` call per run of up to 1024 blocks, and each run's checksums are
        computed on a second thread while the next run is read (xxhash releases the GIL).
        Nothing is returned unless every block verified.
        """
        if not 0 <= start <= stop <= len(self.manifest.stack):
            raise ValueError(f"block range [{start}, {stop}) is outside the stack of {len(self.manifest.stack)}")
        stack = self.manifest.stack
        if device is not None and torch.device(device).type == "cuda":
            return self._read_blocks_cuda(start, stop, torch.device(device))
        buffers = [torch.empty(stack[p].bytes, dtype=torch.uint8) for p in range(start, stop)]
        checks = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            for first, end in self._runs(start, stop):
                run = buffers[first - start : end - start]
                self._read_run(first, run)
                if self.verify:
                    checks.append(pool.submit(self._check_run, first, run))
            for check in checks:
                check.result()  # raises ArtifactError naming the first corrupted block
        return [(stack[p], self._as_block(p, buffers[p - start], device)) for p in range(start, stop)]

    def _runs(self, start: int, stop: int, max_bytes: int | None = None) -> list[tuple[int, int]]:
        """Split [start, stop) into runs of back-to-back blocks (≤ 1024 blocks, ≤ max_bytes unless one block is larger)."""
        stack = self.manifest.stack
        runs = []
        position = start
        while position < stop:
            end, size = position + 1, stack[position].bytes
            while (end < stop and end - position < _MAX_IOV and stack[end].shard == stack[position].shard
                   and stack[end].offset == stack[end - 1].offset + stack[end - 1].bytes
                   and (max_bytes is None or size + stack[end].bytes <= max_bytes)):
                size += stack[end].bytes
                end += 1
            runs.append((position, end))
            position = end
        return runs

    def _read_blocks_cuda(self, start: int, stop: int, device: torch.device) -> list[tuple[BlockEntry, Block]]:
        """GPU variant of :meth:`read_blocks`: no host copy is kept.

        Runs are read into one of two reusable pinned staging buffers; while the next run is read
        into the other, the previous one is checksummed on a worker thread and copied to per-block
        device buffers asynchronously.
        """
        stack = self.manifest.stack
        if start == stop:
            return []
        capacity = max([_STAGING_BYTES] + [stack[p].bytes for p in range(start, stop)])
        if self._staging is None or self._staging[0].numel() < capacity:  # pinned host memory, kept for later resizes
            self._staging = [torch.empty(capacity, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        staging = self._staging
        copied = [None, None]  # CUDA events: the staging buffer's last copy has finished
        hashed = [None, None]  # futures: the staging buffer's last checksum has finished
        targets = [torch.empty(stack[p].bytes, dtype=torch.uint8, device=device) for p in range(start, stop)]
        stream = torch.cuda.current_stream(device)
        checks = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            for number, (first, end) in enumerate(self._runs(start, stop, capacity)):
                slot = number % 2
                if copied[slot] is not None:
                    copied[slot].synchronize()
                if hashed[slot] is not None:
                    hashed[slot].result()
                views, offset = [], 0
                for position in range(first, end):
                    views.append(staging[slot][offset : offset + stack[position].bytes])
                    offset += stack[position].bytes
                self._read_run(first, views)
                if self.verify:
                    hashed[slot] = pool.submit(self._check_run, first, views)
                    checks.append(hashed[slot])
                for position, view in zip(range(first, end), views):
                    targets[position - start].copy_(view, non_blocking=True)
                event = torch.cuda.Event()
                event.record(stream)
                copied[slot] = event
            for check in checks:
                check.result()
        stream.synchronize()
        return [(stack[p], self._as_block(p, targets[p - start], None)) for p in range(start, stop)]

    def _read_run(self, position: int, buffers: list[torch.Tensor]) -> None:
        """Fill ``buffers`` with the back-to-back blocks starting at stack ``position``."""
        first = self.manifest.stack[position]
        handle, header = self._shard_of(first)
        wanted = sum(b.numel() for b in buffers)
        path = self.path / self.manifest.shards[first.shard].file
        try:
            got = os.preadv(handle.fileno(), [memoryview(b.numpy()) for b in buffers], header.data_start + first.offset)
        except OSError as err:
            raise ArtifactError(f"{path} cannot be read (reading block {first.index} of {first.tensor}): {err}") from err
        if got != wanted:
            raise ArtifactError(f"{path} is truncated: stack blocks {position}..{position + len(buffers) - 1} "
                                f"(from block {first.index} of {first.tensor}) need {wanted} bytes, got {got}")

    def _check_run(self, position: int, buffers: list[torch.Tensor]) -> None:
        for offset, buffer in enumerate(buffers):
            entry = self.manifest.stack[position + offset]
            if xxhash.xxh3_128(buffer.numpy()).hexdigest() != entry.xxh3_128:
                path = self.path / self.manifest.shards[entry.shard].file
                raise ArtifactError(f"{path} (block {entry.index} of {entry.tensor}) is corrupted: its checksum does not match the manifest")

    # ---- tokenizer ----------------------------------------------------------------------
    def load_tokenizer(self):
        """The tokenizer saved in the artifact (``None`` if it has none)."""
        section = self.manifest.tokenizer
        if section is None:
            return None
        folder = self.path / section["dir"]
        for name, digest in section["files"].items():
            file = folder / name
            if not file.is_file():
                raise ArtifactError(f"tokenizer file {file} is missing")
            if self.verify and sha256_file(file) != digest:
                raise ArtifactError(f"tokenizer file {file} is corrupted: its sha256 does not match the manifest")
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()} if folder.is_dir() else set()
        unlisted = sorted(present - set(section["files"]))
        if unlisted:  # transformers would read them unchecked
            raise ArtifactError(f"tokenizer folder {folder} holds files the manifest does not list: {', '.join(unlisted[:5])}")
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        except Exception as err:  # tokenizers/transformers raise many types (even bare Exception) on bad files
            message = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ArtifactError(f"the tokenizer in {folder} cannot be loaded: {message}") from err


def _read_converted(handle: BinaryIO, offset: int, nbytes: int, stored: torch.dtype, shape: tuple[int, ...],
                    dtype: torch.dtype, chunk_bytes: int, *, what: str) -> torch.Tensor:
    """Read a tensor of ``stored`` dtype and ``shape`` (``nbytes`` little-endian bytes at file
    ``offset``) into a fresh contiguous CPU tensor of ``dtype``, through one reused uint8 buffer of
    at most ``chunk_bytes``: whole stored elements, at least one, and a multiple of 64 elements
    when there is room for 64 but not for the whole tensor.

    Values are those of ``Tensor.to(dtype)``.  PyTorch's scalar and vectorised conversions give
    different NaN payloads (float16 -> float32); chunks of a multiple of 64 elements split the
    tensor into vector and scalar parts as one single-threaded whole-tensor conversion does, so
    the bytes of NaNs match too.  With smaller chunks only NaN payloads may differ.

    Errors are those of :func:`~bitstack.artifact.safetensors_io.read_into` for the whole tensor:
    ``"{what} cannot be read: ..."`` and ``"{what} is truncated: wanted {nbytes} bytes at offset
    {offset}, got {got}"`` (``got`` counting every byte read for the tensor).
    """
    itemsize = torch.empty((), dtype=stored).element_size()
    count = nbytes // itemsize
    if count * itemsize != nbytes or count != math.prod(shape):
        raise ArtifactError(f"{what}: a tensor of shape {list(shape)} and dtype {stored} cannot take {nbytes} bytes")
    result = torch.empty(shape, dtype=dtype)
    if not count:
        return result
    flat = result.view(-1)
    per_chunk = min(count, max(1, chunk_bytes // itemsize))  # elements per read
    if _CONVERT_ALIGN <= per_chunk < count:
        per_chunk -= per_chunk % _CONVERT_ALIGN
    buffer = torch.empty(per_chunk * itemsize, dtype=torch.uint8)
    done = 0  # elements read and converted
    try:
        handle.seek(offset)
        while done < count:
            take = min(per_chunk, count - done)
            view = memoryview(buffer.numpy())[: take * itemsize]
            got = handle.readinto(view)  # a buffered file reads until the view is full or the file ends
            if got != len(view):
                raise ArtifactError(f"{what} is truncated: wanted {nbytes} bytes at offset {offset}, "
                                    f"got {done * itemsize + got}")
            flat[done : done + take].copy_(buffer[: take * itemsize].view(stored))
            done += take
    except OSError as err:
        raise ArtifactError(f"{what} cannot be read: {err}") from err
    return result


def _check_digest(buffer: torch.Tensor, expected: str, what: str) -> None:
    if xxhash.xxh3_128(buffer.numpy()).hexdigest() != expected:
        raise ArtifactError(f"{what} is corrupted: its checksum does not match the manifest")


def artifact_size_on_disk(path: str | Path) -> int:
    """Total bytes of the files of an artifact directory."""
    return sum(os.path.getsize(p) for p in Path(path).rglob("*") if p.is_file())
