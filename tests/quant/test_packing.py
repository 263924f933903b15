"""The deployed code layout: exact round trips, real size, refused out-of-grid codes."""

import pytest
import torch

from compactlm.errors import CompactLMError
from compactlm.quant import QuantLinear, QuantizedWeight, qrange
from compactlm.quant.packing import pack_codes, packed_shape, unpack_codes
from compactlm.quant.primitives import weight_qparams


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("c_in", [64, 63])
def test_pack_round_trip_is_exact(bits, symmetric, c_in):
    qmin, qmax = qrange(bits, symmetric)
    codes = torch.randint(qmin, qmax + 1, (16, c_in))
    codes[0, :2] = torch.tensor([qmin, qmax])  # both ends of the grid
    packed = pack_codes(codes, bits, symmetric)
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == packed_shape(16, c_in, bits)
    back = unpack_codes(packed, bits, symmetric, c_in)
    assert back.dtype == (torch.int8 if symmetric else torch.uint8)
    assert torch.equal(back.long(), codes)


def test_four_bit_codes_take_half_a_byte():
    codes = torch.randint(0, 16, (32, 128))
    assert pack_codes(codes, 4, False).numel() == 32 * 64
    assert pack_codes(codes, 8, False).numel() == 32 * 128


def test_out_of_grid_codes_are_refused():
    with pytest.raises(CompactLMError, match="outside the 3-bit grid"):
        pack_codes(torch.tensor([[0, 8]]), 3, False)
    with pytest.raises(CompactLMError, match="outside the 4-bit grid"):
        pack_codes(torch.tensor([[-9, 0]]), 4, True)


@pytest.mark.parametrize("bits,group,symmetric", [(4, None, False), (4, 32, False), (3, 16, True), (2, None, True), (8, None, True), (8, 32, False)])
def test_quant_linear_holds_packed_codes_and_round_trips_the_grid(bits, group, symmetric):
    w = torch.randn(48, 64)
    s, z = weight_qparams(w, bits, group, symmetric)
    qw = QuantizedWeight.from_float(w, s, z, bits, group, symmetric)
    layer = QuantLinear(qw)
    assert "int_weight" not in dict(layer.named_buffers())  # no unpacked copy is kept
    assert layer.weight_packed.numel() == 48 * (32 if bits <= 4 else 64)
    assert torch.equal(layer.int_weight, qw.int_weight)
    assert torch.equal(layer.qweight.zero_point, qw.zero_point)
    assert torch.equal(layer.weight, qw.dequantize())
