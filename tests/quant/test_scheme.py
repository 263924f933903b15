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


@pytest.mark.parametrize(
    "bad, expected",
    [
        ("w5a99", "activation bits must be 2..16"),  # was silently w5a16
        ("w4a17", "activation bits must be 2..16"),
        ("w4a1", "activation bits must be 2..16"),
        ("w0a16", "weight bits must be 1..8"),
        ("w4a16-g64-g32", "group size"),  # was silently g32
        ("w4a16-sym-asym", "weight grid"),
        ("w4a16-sym-sym", "weight grid"),
        ("w4a8-kv8-kv4", "kv bits"),
        ("w4a8-tensor-token", "activation granularity"),
        ("w8a8-static-dynamic", "activation ranges"),
        ("w4a16-static", "a16 keeps activations in full precision"),  # was silently dropped
        ("w4a16-token", "a16 keeps activations in full precision"),
        ("w4a8-token-static", "static activation ranges need per-tensor"),
    ],
)
def test_nonsense_schemes_are_refused_in_one_line_naming_the_flag(bad, expected):
    with pytest.raises(CompactLMError, match="--scheme") as info:
        parse_scheme(bad)
    msg = str(info.value)
    assert expected in msg and "\n" not in msg and repr(bad) in msg


def test_valid_combinations_still_parse():
    assert parse_scheme("w4a8-tensor-static") == QuantScheme(
        w_bits=4, a_bits=8, a_granularity="tensor", a_static=True
    )
    assert parse_scheme("w8a8-token").a_static is False
    assert parse_scheme("w4a12").a_bits == 12
    assert parse_scheme("w4a16-kv8").kv_bits == 8


@pytest.mark.parametrize("spec,fields", [
    ("w2a8-tensor-actsym", dict(w_bits=2, a_bits=8, a_granularity="tensor", a_static=False, a_symmetric=True)),
    ("w4a8-sym-tensor-actsym", dict(w_bits=4, w_symmetric=True, a_granularity="tensor", a_symmetric=True)),
    ("w8a8-dynamic-actsym", dict(w_bits=8, w_symmetric=True, a_granularity="tensor", a_static=False, a_symmetric=True)),
    ("w4a8-actsym-kv8", dict(a_granularity="token", a_symmetric=True, kv_bits=8)),
])
def test_actsym_modifier_sets_a_symmetric_grid_and_round_trips(spec, fields):
    s = QuantScheme.parse(spec)
    for k, v in fields.items():
        assert getattr(s, k) == v, k
    assert s.name == spec and QuantScheme.parse(s.name) == s
    assert QuantScheme.from_dict(s.to_dict()) == s
    assert not QuantScheme.parse(spec.replace("-actsym", "")).a_symmetric
    from compactlm.quant import act_quantizer_for

    assert act_quantizer_for(s).symmetric


def test_actsym_refused_on_a16_and_twice():
    with pytest.raises(CompactLMError, match="a16"):
        QuantScheme.parse("w4a16-actsym")
    with pytest.raises(CompactLMError, match="twice"):
        QuantScheme.parse("w4a8-actsym-actsym")
