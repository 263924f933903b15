import pytest

from compactlm.errors import CompactLMError
from compactlm.quant.scheme import PRESETS, QuantScheme, parse_scheme


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_string_and_dict(name):
    s = PRESETS[name]
    assert QuantScheme.parse(s.name) == s
    assert QuantScheme.from_dict(s.to_dict()) == s


def test_preset_semantics_follow_the_paper():
    w8a8, w4a8 = parse_scheme("w8a8"), parse_scheme("w4a8")
    assert (w8a8.a_bits, w8a8.a_granularity, w8a8.a_static, w8a8.a_symmetric) == (8, "tensor", True, False)
    assert w8a8.w_symmetric and w8a8.w_group_size is None
    assert (w4a8.a_granularity, w4a8.a_static, w4a8.w_symmetric) == ("token", False, False)
    assert parse_scheme("w3a16").a_bits is None


def test_modifiers():
    s = parse_scheme("w2a16-g64-sym")
    assert (s.w_bits, s.w_group_size, s.w_symmetric) == (2, 64, True)
    assert parse_scheme("w4a8-kv8").kv_bits == 8
    assert QuantScheme.parse(s.name) == s


@pytest.mark.parametrize("bad", ["", "int4", "w4a16-g", "w4a16-foo", "w9a16", "w4a8-static-token-x"])
def test_bad_scheme_strings_name_the_argument(bad):
    with pytest.raises(CompactLMError, match="scheme"):
        parse_scheme(bad)


def test_static_per_token_is_rejected():
    with pytest.raises(CompactLMError, match="static"):
        QuantScheme(w_bits=4, a_bits=8, a_granularity="token", a_static=True)
