import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bitstack.artifact.safetensors_io import encode_header, parse_header, read_header, write_safetensors
from bitstack.errors import ArtifactError


def test_golden_bytes(tmp_path):
    path = tmp_path / "g.safetensors"
    write_safetensors(path, [("b", torch.tensor([1, 2], dtype=torch.uint8)), ("a", torch.tensor([1.0], dtype=torch.float16))])
    raw = path.read_bytes()
    header = b'{"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"F16","shape":[1],"data_offsets":[2,4]}}'
    header += b" " * (-len(header) % 8)
    assert raw == struct.pack("<Q", len(header)) + header + b"\x01\x02" + b"\x00\x3c"


def test_official_reader_reads_our_unaligned_order(tmp_path):
    tensors = [("z", torch.randint(0, 255, (3, 5), dtype=torch.uint8)), ("a", torch.randn(4, 3).half()),
               ("m", torch.randn(2, 2).bfloat16()), ("c", torch.randn(3))]
    path = tmp_path / "x.safetensors"
    write_safetensors(path, tensors, {"k": "v"})
    with safe_open(str(path), "pt") as f:
        for name, t in tensors:
            assert torch.equal(f.get_tensor(name), t)
        assert f.metadata() == {"k": "v"}


def test_we_read_official_files(tmp_path):
    path = tmp_path / "o.safetensors"
    save_file({"w": torch.randn(3, 4), "i": torch.arange(5)}, str(path))
    header = read_header(path)
    assert header.tensors["w"].shape == (3, 4) and header.tensors["i"].dtype == torch.int64


def _file(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("blob", [
    b"",
    b"\x01\x00",
    struct.pack("<Q", 10**12) + b"{}",
    struct.pack("<Q", 4) + b"nope",
    _file({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    _file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4),
    _file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
    _file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 3),
    _file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 5),
    _file({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
    _file({"a": [1, 2]}, b""),
    _file([], b""),
])
def test_corrupt_headers_raise_artifact_error(blob):
    with pytest.raises(ArtifactError):
        parse_header(blob, len(blob), what="f")


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "never.safetensors"
    with pytest.raises(Exception):
        write_safetensors(path, [("a", torch.zeros(2)), ("a", torch.zeros(2))])  # duplicate name
    assert list(tmp_path.iterdir()) == []


def test_encode_header_is_aligned():
    head = encode_header([("a", torch.uint8, (3,), 3)], None)
    assert (len(head) - 8) % 8 == 0
