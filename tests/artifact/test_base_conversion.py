"""``ArtifactReader.read_base(dtype)`` converts base tensors chunk by chunk (issue 6: peak bytes).

The converted tensor is allocated in the target dtype and filled from one reused buffer of at
most ``chunk_bytes`` stored bytes; the result must be byte-identical to converting the whole
stored tensor at once (``raw.to(dtype)``), whatever the chunk, and the transient must be that one
buffer.
"""

from __future__ import annotations

import io
import shutil

import pytest
import torch
from peak_meter import PeakMeter

from bitstack.artifact.reader import ArtifactReader, _read_converted
from bitstack.artifact.safetensors_io import read_into
from bitstack.errors import ArtifactError

_PAIRS = [(torch.bfloat16, torch.float32), (torch.bfloat16, torch.float16), (torch.float32, torch.bfloat16),
          (torch.float32, torch.float16), (torch.float16, torch.float32), (torch.float16, torch.bfloat16)]
_SHAPES = [(), (1,), (7,), (3, 5), (13, 7), (2, 3, 17), (0, 4)]


def _stored(shape, dtype, seed=0):
    """A tensor of ``shape`` and ``dtype`` with ordinary values plus edge cases: ±0, ±inf, NaN,
    tiny and huge magnitudes (overflow, subnormals and rounding in the narrower dtypes)."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator, dtype=torch.float64) * 10.0 ** torch.randint(
        -9, 9, shape, generator=generator).double()
    flat = values.view(-1)
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, 7e4, -1e5, 3.0e38, 1.0 + 2 ** -9])
    flat[: min(flat.numel(), specials.numel())] = specials[: flat.numel()]
    return values.to(dtype)


def _file_of(tensor, lead=5):
    """A file holding ``lead`` junk bytes, then the tensor's raw bytes, then junk: (handle, offset, nbytes)."""
    raw = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
    return io.BufferedReader(io.BytesIO(b"\xab" * lead + raw + b"\xcd" * 9)), lead, len(raw)


def _bits(tensor):
    return tensor.reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("stored, dtype", _PAIRS, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", _SHAPES, ids=str)
def test_chunked_conversion_is_byte_exact(stored, dtype, shape):
    """Every chunk size (one element, sizes that are no multiple of the itemsize or of the tensor's
    bytes, the whole tensor and more) gives ``torch.equal`` to ``raw.to(dtype)`` (±0, ±inf,
    subnormals and rounding included), NaN where it has NaN; with chunks of at least 64 elements,
    the bytes of NaNs too."""
    tensor = _stored(shape, stored)
    expected = tensor.to(dtype)
    nan = expected.isnan()
    itemsize = tensor.element_size()
    nbytes = tensor.numel() * itemsize
    for chunk in (1, 3, 6, 10, 64, 64 * itemsize + 5, max(1, nbytes - 1), nbytes + 1, 1 << 20):
        handle, offset, size = _file_of(tensor)
        got = _read_converted(handle, offset, size, stored, tuple(shape), dtype, chunk, what="test file")
        assert got.dtype == dtype and got.shape == expected.shape and got.is_contiguous()
        assert torch.equal(got.isnan(), nan), f"chunk {chunk}"
        assert torch.equal(got[~nan], expected[~nan]), f"chunk {chunk}"
        assert torch.equal(_bits(got.masked_fill(nan, 0)), _bits(expected.masked_fill(nan, 0))), f"chunk {chunk}"  # -0
        if chunk >= 64 * itemsize or chunk >= nbytes:
            assert torch.equal(_bits(got), _bits(expected)), f"chunk {chunk}: NaN payloads"


def test_large_tensor_conversion_is_byte_exact():
    """A 300x257 float16 tensor with NaNs strewn about, read in chunks of 1 MiB, 4 KiB and an odd
    size: the same bytes as ``raw.to(float32)`` (this size converts on one thread)."""
    tensor = _stored((300, 257), torch.float16, seed=5)
    tensor.view(-1)[::97] = float("nan")
    expected = tensor.to(torch.float32)
    for chunk in (1 << 20, 4096, 1000):
        handle, offset, size = _file_of(tensor)
        got = _read_converted(handle, offset, size, torch.float16, (300, 257), torch.float32, chunk, what="test file")
        assert torch.equal(_bits(got), _bits(expected)), f"chunk {chunk}"


def test_a_chunk_that_does_not_divide_the_tensor():
    """A 1000-element bfloat16 tensor (2000 bytes) read 768 bytes at a time: two full chunks and a
    remainder of 464 bytes; the result is the same as converting it whole."""
    tensor = torch.randn(8, 125, dtype=torch.float64).to(torch.bfloat16)
    handle, offset, size = _file_of(tensor, lead=3)
    assert size == 2000 and size % 768 == 464
    got = _read_converted(handle, offset, size, torch.bfloat16, (8, 125), torch.float32, 768, what="test file")
    assert torch.equal(got, tensor.to(torch.float32))


def test_truncation_reads_as_read_into_says():
    """A file that ends inside the tensor: the same error as ``read_into`` for the whole tensor,
    counting every byte there was, whichever chunk hits the end."""
    tensor = _stored((10, 10), torch.bfloat16)
    raw = tensor.view(-1).view(torch.uint8).numpy().tobytes()
    for kept in (0, 1, 77, 150, 199):
        data = b"\x00" * 4 + raw[:kept]
        with pytest.raises(ArtifactError) as whole:
            read_into(io.BufferedReader(io.BytesIO(data)), 4, 200, what="f.safetensors")
        for chunk in (2, 50, 1 << 20):
            with pytest.raises(ArtifactError) as chunked:
                _read_converted(io.BufferedReader(io.BytesIO(data)), 4, 200, torch.bfloat16, (10, 10), torch.float32,
                                chunk, what="f.safetensors")
            assert str(chunked.value) == str(whole.value) == f"f.safetensors is truncated: wanted 200 bytes at offset 4, got {kept}"


@pytest.mark.parametrize("chunk", [0, -1, 1.5, True, None])
def test_chunk_bytes_must_be_a_positive_int(tiny_artifact, chunk):
    with ArtifactReader(tiny_artifact[0]) as reader, pytest.raises(ValueError, match="chunk_bytes must be a positive int"):
        reader.read_base(torch.bfloat16, chunk_bytes=chunk)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_read_base_converts_exactly_and_only_floating_params(tiny_artifact, dtype):
    """The tiny artifact is stored in float32: read with another dtype, each floating param equals
    its stored tensor ``.to(dtype)``, every buffer keeps its stored dtype and bytes."""
    with ArtifactReader(tiny_artifact[0]) as reader:
        stored = reader.read_base()
        kinds = {t.name: t.kind for t in reader.manifest.base_tensors}
        for chunk in (2, 1000, 1 << 20):
            converted = reader.read_base(dtype, chunk_bytes=chunk)
            assert converted.keys() == stored.keys()
            for name, tensor in converted.items():
                if kinds[name] == "param" and stored[name].is_floating_point():
                    assert torch.equal(tensor, stored[name].to(dtype)), name
                else:
                    assert tensor.dtype == stored[name].dtype and torch.equal(tensor, stored[name]), name
    assert any(k == "param" for k in kinds.values()) and any(k == "buffer" for k in kinds.values())


def test_conversion_transient_is_one_chunk(tiny_artifact):
    """Measured: while a converting ``read_base`` runs, the live bytes are the tensors returned so
    far plus the one being converted plus its chunk buffer (``min(chunk, its stored bytes)``,
    in whole float32 elements), and nothing else."""
    with ArtifactReader(tiny_artifact[0]) as reader:
        converted = {t.name: t.nbytes(None) for t in reader.manifest.base_tensors
                     if t.kind == "param" and t.dtype == "F32"}
        for chunk in (6, 1000, 4096, 1 << 30):
            meter = PeakMeter()
            with meter:
                out = reader.read_base(torch.bfloat16, chunk_bytes=chunk)
            so_far, expected = 0, 0
            for name, tensor in out.items():  # in the file's order, the order of reading
                so_far += tensor.untyped_storage().nbytes()
                elements = min(converted.get(name, 0) // 4, chunk // 4)
                if 64 <= elements < converted.get(name, 0) // 4:
                    elements -= elements % 64
                buffer = 4 * elements
                expected = max(expected, so_far + buffer)
            assert meter.end == so_far
            assert meter.peak == expected, f"chunk {chunk}: peak {meter.peak} after {meter.peak_op}"
            del out
    assert converted


def test_one_conversion_holds_one_chunk_buffer():
    """Measured on one tensor: the peak is the converted tensor plus the chunk buffer, whatever
    the chunk (one element, rounded to 64 elements, or the whole stored tensor)."""
    tensor = torch.randn(40, 33, dtype=torch.float64).to(torch.bfloat16)  # 2640 stored bytes
    for chunk, buffer in ((1, 2), (127, 126), (1000, 896), (2640, 2640), (1 << 20, 2640)):
        handle, offset, size = _file_of(tensor)
        meter = PeakMeter()
        with meter:
            got = _read_converted(handle, offset, size, torch.bfloat16, (40, 33), torch.float32, chunk, what="test file")
        assert meter.end == got.nbytes == 5280
        assert meter.peak == got.nbytes + buffer, f"chunk {chunk}: peak {meter.peak} after {meter.peak_op}"
        assert torch.equal(got, tensor.to(torch.float32))


def test_checksum_is_verified_before_converting(tiny_artifact, tmp_path):
    """A flipped byte in the base file fails a converting read as it fails a plain one (sha256)."""
    target = tmp_path / "copy.bstk"
    shutil.copytree(tiny_artifact[0], target)
    with ArtifactReader(target) as reader:
        base = target / reader.manifest.base["file"]
    data = bytearray(base.read_bytes())
    data[-3] ^= 0x10
    base.write_bytes(bytes(data))
    for dtype in (None, torch.bfloat16):
        with ArtifactReader(target) as reader, pytest.raises(ArtifactError, match="sha256 does not match"):
            reader.read_base(dtype, chunk_bytes=64)
    with ArtifactReader(target, verify=False) as reader:  # unverified: read, and converted, as it is
        assert reader.read_base(torch.bfloat16, chunk_bytes=64).keys() == reader.read_base().keys()
