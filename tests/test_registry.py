"""The method table: lookup, listing, option checking, and no import-time registration."""

import ast
from pathlib import Path

import pytest

from compactlm.errors import CompactLMError
from compactlm.ptq.lrq import LRQConfig, apply_lrq
from compactlm.registry import METHODS, get_method, list_methods


def test_every_method_is_listed_once_in_name_order():
    names = [m.name for m in list_methods()]
    assert names == ["flexround", "lrq", "rtn", "smoothquant"]
    assert sorted(m.name for m in METHODS) == names


def test_get_method_returns_the_row():
    m = get_method("lrq")
    assert m.config_cls is LRQConfig and m.apply is apply_lrq and m.needs_calibration
    assert not get_method("rtn").needs_calibration


def test_unknown_method_is_one_line_naming_the_flag_and_the_known_ones():
    with pytest.raises(CompactLMError, match=r"--method: unknown method 'gptq'; known: flexround, lrq, rtn, smoothquant$"):
        get_method("gptq")


def test_make_config_builds_the_dataclass_and_rejects_foreign_options():
    assert get_method("lrq").make_config({"rank": 4}) == LRQConfig(rank=4)
    assert get_method("rtn").make_config(None) == get_method("rtn").config_cls()
    with pytest.raises(CompactLMError, match=r"method 'rtn' has no option\(s\) rank; its options: --clip, --p"):
        get_method("rtn").make_config({"rank": 4})


def test_method_modules_do_not_import_the_registry():
    """The table imports the methods, never the other way round (no import circle)."""
    import compactlm.ptq

    offenders = []
    for path in Path(compactlm.ptq.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "compactlm.registry" or n.startswith("compactlm.registry.") for n in names):
                offenders.append(path.name)
    assert offenders == []
