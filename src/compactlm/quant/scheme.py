"""Quantization schemes: what is quantized, to how many bits, at what granularity.

A scheme is a small frozen dataclass, round-trippable through a string (``"w4a16-g64"``) and a
dict (JSON / YAML recipes). Presets follow the settings of the LRQ paper:

=========  ==========================================  =====================================
preset     weights                                     input activations of every linear
=========  ==========================================  =====================================
w8a8       8-bit symmetric, per output channel         8-bit asymmetric, per tensor, static
w4a8       4-bit asymmetric, per output channel        8-bit asymmetric, per token, dynamic
w4a16      4-bit asymmetric, per output channel        full precision
w3a16      3-bit asymmetric, per output channel        full precision
w2a16      2-bit asymmetric, per output channel        full precision
gguf-q4_0  4-bit symmetric, groups of 32 (GGUF Q4_0)   full precision
gguf-q4_1  4-bit asymmetric, groups of 32 (GGUF Q4_1)  full precision
gguf-q8_0  8-bit symmetric, groups of 32 (GGUF Q8_0)   full precision
=========  ==========================================  =====================================

The ``gguf-*`` names are whole strings (no modifiers); their canonical names are ``w4a16-g32-sym``,
``w4a16-g32`` and ``w8a16-g32``.

W8A8 weights are symmetric because int8 W8A8 kernels (vLLM's compressed-tensors path) need a
symmetric weight grid; everywhere else weights are asymmetric as in the paper.

String grammar: ``w<bits>a<bits>`` followed by any of ``-g<N>`` (groups of N input columns),
``-sym`` / ``-asym`` (weight grid), ``-kv8`` (8-bit k/v projection outputs), ``-tensor`` /
``-token`` (activation granularity), ``-static`` / ``-dynamic`` and ``-actsym`` (a symmetric,
signed activation grid ``s = max|x| / (2^(b−1) − 1)``, zero point 0; activations are asymmetric
otherwise). Each setting is given at most once; the canonical :attr:`QuantScheme.name` lists the
modifiers that differ from the head's defaults, in the order above, and parses back to the same
scheme.

Examples: ``w2a8-tensor-actsym`` is the encoder QAT setting of Kim et al. (EMNLP 2022) and
TernaryBERT (ternary weights, 8-bit symmetric dynamic per-tensor activations);
``w8a8-dynamic-actsym`` that of SDQ. Which *weight quantizer* (TWN, PACT+, LSQ, min/max), pre-clip
and embedding quantization a training run uses is not part of the scheme: it is the
:class:`compactlm.quant.fake.QATConfig` beside it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

from compactlm.errors import CompactLMError

ActGranularity = Literal["tensor", "token"]


@dataclass(frozen=True)
class QuantScheme:
    """How weights (and optionally input activations) of every linear layer are quantized.

    Attributes:
        w_bits: Weight bits (2..8).
        w_group_size: Input columns per weight group; ``None`` means one group per output channel.
        w_symmetric: Symmetric (zero point 0, signed grid) or asymmetric (unsigned grid + zero point).
        a_bits: Input-activation bits, or ``None`` for full-precision activations.
        a_granularity: ``"tensor"`` (one range for the whole input) or ``"token"`` (one per token).
        a_static: Static ranges calibrated on data (only meaningful for per-tensor) or dynamic.
        a_symmetric: Symmetric activation grid.
        kv_bits: Bits for the outputs of the k and v projections (``None``: not quantized).
    """

    w_bits: int = 4
    w_group_size: int | None = None
    w_symmetric: bool = False
    a_bits: int | None = None
    a_granularity: ActGranularity = "token"
    a_static: bool = False
    a_symmetric: bool = False
    kv_bits: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.w_bits <= 8:
            raise CompactLMError(f"scheme: weight bits must be 1..8, got {self.w_bits}")
        if self.w_group_size is not None and self.w_group_size < 1:
            raise CompactLMError(f"scheme: group size must be positive, got {self.w_group_size}")
        if self.a_bits is not None and not 2 <= self.a_bits <= 16:
            raise CompactLMError(f"scheme: activation bits must be 2..16, got {self.a_bits}")
        if self.a_granularity not in ("tensor", "token"):
            raise CompactLMError(
                f"scheme: activation granularity must be 'tensor' or 'token', got {self.a_granularity!r}"
            )
        if self.a_static and self.a_granularity == "token":
            raise CompactLMError("scheme: static activation ranges need per-tensor granularity")
        if self.kv_bits is not None and not 2 <= self.kv_bits <= 16:
            raise CompactLMError(f"scheme: kv bits must be 2..16, got {self.kv_bits}")

    @property
    def quantizes_activations(self) -> bool:
        return self.a_bits is not None

    @property
    def name(self) -> str:
        """Canonical string; ``QuantScheme.parse(s.name) == s``."""
        head = f"w{self.w_bits}a{self.a_bits if self.a_bits is not None else 16}"
        base = parse_scheme(head)
        parts = [head]
        if self.w_group_size is not None:
            parts.append(f"g{self.w_group_size}")
        if self.w_symmetric != base.w_symmetric:
            parts.append("sym" if self.w_symmetric else "asym")
        if self.a_bits is not None:
            if self.a_granularity != base.a_granularity:
                parts.append(self.a_granularity)
            if self.a_static != base.a_static:
                parts.append("static" if self.a_static else "dynamic")
            if self.a_symmetric:
                parts.append("actsym")
        if self.kv_bits is not None:
            parts.append(f"kv{self.kv_bits}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantScheme":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CompactLMError(f"scheme: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def parse(cls, spec: "str | QuantScheme | dict") -> "QuantScheme":
        """Accept a scheme, a dict or a string such as ``"w4a8"`` or ``"w2a16-g64"``."""
        if isinstance(spec, QuantScheme):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        return parse_scheme(spec)


PRESETS: dict[str, QuantScheme] = {
    "w8a8": QuantScheme(w_bits=8, w_symmetric=True, a_bits=8, a_granularity="tensor", a_static=True),
    "w4a8": QuantScheme(w_bits=4, a_bits=8, a_granularity="token"),
    "w8a16": QuantScheme(w_bits=8, w_symmetric=True),
    "w4a16": QuantScheme(w_bits=4),
    "w3a16": QuantScheme(w_bits=3),
    "w2a16": QuantScheme(w_bits=2),
    # Grids of llama.cpp's GGUF block types (blocks of 32), so a method can target the format
    # exactly (compactlm export --format gguf writes these codes without re-rounding).
    "gguf-q4_0": QuantScheme(w_bits=4, w_group_size=32, w_symmetric=True),
    "gguf-q4_1": QuantScheme(w_bits=4, w_group_size=32, w_symmetric=False),
    "gguf-q8_0": QuantScheme(w_bits=8, w_group_size=32, w_symmetric=True),
}
FORMAT_PRESETS = ("gguf-q4_0", "gguf-q4_1", "gguf-q8_0")  # whole-string names, no modifiers

_HEAD = re.compile(r"^w(\d+)a(\d+)$")
_MODIFIERS = "-g<N>, -sym, -asym, -kv<bits>, -tensor, -token, -static, -dynamic, -actsym"
_ACT_MODIFIERS = ("tensor", "token", "static", "dynamic", "actsym")


def _modifier_kind(tok: str) -> str | None:
    """The setting a modifier token sets (two tokens of one kind conflict), or ``None`` if unknown."""
    if re.fullmatch(r"g\d+", tok):
        return "group size (-g<N>)"
    if tok in ("sym", "asym"):
        return "weight grid (-sym/-asym)"
    if re.fullmatch(r"kv\d+", tok):
        return "kv bits (-kv<bits>)"
    if tok in ("tensor", "token"):
        return "activation granularity (-tensor/-token)"
    if tok in ("static", "dynamic"):
        return "activation ranges (-static/-dynamic)"
    if tok == "actsym":
        return "activation grid (-actsym)"
    return None


def _check_modifiers(spec: str, tokens: list[str], a_bits: int | None) -> None:
    """Refuse unknown, repeated or conflicting modifiers, and activation modifiers on a16."""
    seen: dict[str, str] = {}
    for tok in tokens:
        kind = _modifier_kind(tok)
        if kind is None:
            raise CompactLMError(
                f"--scheme: unknown modifier {tok!r} in {spec!r}; known: {_MODIFIERS}"
            )
        if kind in seen:
            raise CompactLMError(
                f"--scheme: {spec!r} sets the {kind} twice (-{seen[kind]} and -{tok}); give it once"
            )
        seen[kind] = tok
        if a_bits is None and tok in _ACT_MODIFIERS:
            raise CompactLMError(
                f"--scheme: -{tok} in {spec!r} configures activation quantization, but a16 keeps "
                f"activations in full precision; use a<bits> below 16 (e.g. w4a8) or drop -{tok}"
            )


def parse_scheme(spec: str) -> QuantScheme:
    """Parse a scheme string (see the module docstring for the grammar).

    Unknown, repeated or conflicting modifiers and out-of-range bit widths are refused rather
    than ignored (``w5a99`` is not ``w5a16``; ``-g64-g32`` is not ``-g32``).

    Raises:
        CompactLMError: naming the ``--scheme`` argument and what is expected.
    """
    if not isinstance(spec, str) or not spec:
        raise CompactLMError(f"--scheme: expected a string like 'w4a16', got {spec!r}")
    if spec.strip().lower() in FORMAT_PRESETS:
        return PRESETS[spec.strip().lower()]
    tokens = spec.strip().lower().split("-")
    m = _HEAD.match(tokens[0])
    if not m:
        raise CompactLMError(
            f"--scheme: cannot parse {spec!r}; expected w<bits>a<bits>[-g<N>][-sym|-asym][-kv8], "
            f"presets: {', '.join(PRESETS)}"
        )
    w_bits, a_bits = int(m.group(1)), int(m.group(2))
    if not 1 <= w_bits <= 8:
        raise CompactLMError(f"--scheme: weight bits must be 1..8 in {spec!r}, got w{w_bits}")
    if not 2 <= a_bits <= 16:
        raise CompactLMError(
            f"--scheme: activation bits must be 2..16 (a16: full precision) in {spec!r}, got a{a_bits}"
        )
    act = None if a_bits == 16 else a_bits
    _check_modifiers(spec, tokens[1:], act)
    if tokens[0] in PRESETS:
        fields = PRESETS[tokens[0]].to_dict()
    else:
        fields = dict(w_bits=w_bits, a_bits=act, w_symmetric=w_bits == 8)
        if act is not None:
            fields.update(a_granularity="token")
    for tok in tokens[1:]:
        if tok.startswith("g"):
            fields["w_group_size"] = int(tok[1:])
        elif tok in ("sym", "asym"):
            fields["w_symmetric"] = tok == "sym"
        elif tok.startswith("kv"):
            fields["kv_bits"] = int(tok[2:])
        elif tok in ("tensor", "token"):
            fields["a_granularity"] = tok
            if tok == "token":
                fields["a_static"] = False
        elif tok in ("static", "dynamic"):
            fields["a_static"] = tok == "static"
        elif tok == "actsym":
            fields["a_symmetric"] = True
    try:
        return QuantScheme(**fields)
    except CompactLMError as e:
        raise CompactLMError(f"--scheme: {spec!r}: {str(e).removeprefix('scheme: ')}") from None
