"""``compactlm lut fit|apply|eval`` end to end on tiny models (parser built from the lut module alone)."""

import argparse

import pytest

from compactlm.commands import lut as lut_cmd
from compactlm.errors import CompactLMError
from compactlm.io import read_json
from compactlm.lut.export import load_luts


def _run(*argv):
    p = argparse.ArgumentParser(prog="compactlm")
    lut_cmd.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["lut", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small local .txt corpus (paragraphs separated by blank lines): no network, no cache."""
    words = "the quick brown fox jumps over a lazy dog while seven bright stars shine above quiet hills".split()
    paras = [" ".join(words[(i * 7 + j) % len(words)] for j in range(60)).capitalize() + "." for i in range(40)]
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n\n".join(paras) + "\n", encoding="ascii")
    return str(path)


def test_registered_in_cli():
    from compactlm.cli import COMMANDS

    assert "compactlm.commands.lut" in COMMANDS


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lut") / "tables"
    assert _run("fit", "--out", str(out), "--entries", "8", "--steps", "5", "--bits", "12") == 0
    return out


def test_fit_writes_float_and_fixed_tables(table_dir):
    floats, fixed = load_luts(table_dir), load_luts(table_dir, fixed_bits=12)
    assert set(floats) == set(fixed) == {"gelu", "silu", "exp", "reciprocal", "rsqrt"}
    assert all(t.entries == 8 for t in floats.values())
    report = read_json(table_dir / "report.json")
    assert all(r["max_abs_err"] < r["uniform_max_abs_err"] for r in report["errors"])


def test_apply_writes_run_dir_and_eval_compares(table_dir, corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert _run("apply", "--model", "tiny-gpt2", "--tables", str(table_dir), "--out", str(run),
                "--ppl", corpus, "--max-tokens", "600", "--seq-len", "128") == 0
    report = read_json(run / "report.json")
    assert report["replaced"] == {"gelu": 2, "layernorm": 5, "softmax": 2}
    assert report["metrics"]["ppl"] > 1
    assert set(load_luts(run / "tables")) == {"gelu", "exp", "reciprocal", "rsqrt"}  # only what was used
    out = tmp_path / "eval.json"
    assert _run("eval", "--model", "tiny-gpt2", "--tables", str(run / "tables"), "--ppl", corpus,
                "--max-tokens", "600", "--seq-len", "128", "--out", str(out)) == 0
    res = read_json(out)
    assert res["lut"]["ppl"] != res["fp"]["ppl"]
    assert abs(res["lut"]["ppl"] - report["metrics"]["ppl"]) < 1e-6 * report["metrics"]["ppl"]
    assert "uniform max" in capsys.readouterr().out


def test_apply_with_calibration(table_dir, corpus, tmp_path):
    run = tmp_path / "cal"
    assert _run("apply", "--model", "tiny-llama", "--samples", "4", "--data", corpus, "--calib-seq-len", "32",
                "--entries", "8", "--steps", "20", "--tables", str(table_dir), "--out", str(run)) == 0
    tables = load_luts(run / "tables")
    assert {t.method for t in tables.values()} == {"nn-lut-calibrated"}


@pytest.mark.parametrize("argv,match", [
    (("fit", "--out", "X", "--fn", "tanh"), "--fn"),
    (("fit", "--out", "X", "--entries", "1"), "--entries"),
    (("apply", "--model", "tiny-llama"), "nothing to do"),
    (("apply", "--model", "tiny-llama", "--tables", "/no/such/dir", "--ppl", "wiki-eval"), "--tables"),
    (("apply", "--model", "tiny-llama", "--ops", "tanh", "--out", "X"), "--ops"),
    (("apply", "--model", "tiny-llama", "--tasks", "nope", "--out", "X"), "--tasks"),
    (("eval", "--model", "tiny-llama", "--tables", "/no/such/dir"), "--tables"),
])
def test_user_errors(argv, match, tmp_path, tmp_cache):
    argv = tuple(str(tmp_path / a) if a == "X" else a for a in argv)
    with pytest.raises(CompactLMError, match=match):
        _run(*argv)
