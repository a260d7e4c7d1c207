import pytest
import torch

from bitstack.core.packing import pack_signs, packed_row_bytes, signs_to_float, unpack_signs


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 7), (3, 8), (5, 9), (7, 15), (4, 16), (2, 17), (13, 63), (9, 64), (3, 100), (1, 1031)])
def test_roundtrip_any_shape(rows, cols):
    x = torch.rand(rows, cols) > 0.5
    packed = pack_signs(x)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, packed_row_bytes(cols))
    assert torch.equal(unpack_signs(packed, cols), x)
    assert torch.equal(pack_signs(unpack_signs(packed, cols)), packed)


def test_padding_bits_are_zero():
    x = torch.ones(3, 11, dtype=torch.bool)
    packed = pack_signs(x)
    assert packed[:, 0].tolist() == [255] * 3
    assert packed[:, 1].tolist() == [0b00000111] * 3


def test_golden_bytes_lsb_first():
    # element (0, 0) is bit 0 of byte 0; element (0, 9) is bit 1 of byte 1
    x = torch.zeros(2, 10, dtype=torch.bool)
    x[0, 0] = x[0, 3] = x[0, 9] = True
    x[1, 7] = x[1, 8] = True
    assert pack_signs(x).tolist() == [[0b00001001, 0b00000010], [0b10000000, 0b00000001]]


def test_signs_to_float_is_plus_minus_one():
    x = torch.tensor([[True, False, True]])
    assert signs_to_float(pack_signs(x), 3).tolist() == [[1.0, -1.0, 1.0]]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="bool"):
        pack_signs(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="bytes"):
        unpack_signs(torch.zeros(2, 3, dtype=torch.uint8), 8)
