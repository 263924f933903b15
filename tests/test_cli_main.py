"""The command line as a user meets it: run dirs written atomically, one-line errors, exit codes."""

import json

import pytest
import torch

from compactlm.cli import build_parser, main
from compactlm.models import load_model
from compactlm.quant import QuantLinear


def test_quantize_writes_a_complete_run_dir_that_reloads(tmp_path, run_cli):
    out = tmp_path / "runs" / "x"
    code, stdout, _ = run_cli(["quantize", "--model", "tiny-llama", "--method", "rtn", "--scheme", "w4a16-g32",
                               "--clip", "lp", "--out", str(out)])
    assert code == 0, stdout
    assert {p.name for p in out.iterdir()} >= {"model", "config.json", "report.json", "quantization.json",
                                                "quant_state.safetensors"}
    model, _ = load_model(str(out))
    qls = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert len(qls) == 14 and {(q.bits, q.group_size) for q in qls.values()} == {(4, 32)}
    # --clip lp reached the method: the grid is the API's lp grid, not the min/max one
    from compactlm.api import quantize

    grids = {}
    for clip in ("lp", "minmax"):
        ref, _ = load_model("tiny-llama")
        quantize(ref, "rtn", "w4a16-g32", clip=clip)
        grids[clip] = {n: m.weight_scale for n, m in ref.named_modules() if isinstance(m, QuantLinear)}
    assert all(torch.equal(q.weight_scale, grids["lp"][n]) for n, q in qls.items())
    assert not all(torch.equal(q.weight_scale, grids["minmax"][n]) for n, q in qls.items())
    assert not list(out.parent.glob(".x.tmp-*"))  # no temporary leftovers


def test_existing_out_needs_overwrite(tmp_path, run_cli):
    out = tmp_path / "x"
    args = ["quantize", "--model", "tiny-gpt2", "--out", str(out)]
    assert run_cli(args)[0] == 0
    code, _, err = run_cli(args)
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1
    assert run_cli(args + ["--overwrite"])[0] == 0


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--scheme", "w4a16-g48"], "group size 48 does not divide"),
        (["--scheme", "int4"], "--scheme: cannot parse 'int4'"),
        (["--method", "magic"], "--method: unknown method 'magic'"),
        (["--model", "no-such-model"], "--model: 'no-such-model' not found"),
        (["--model", "tiny-llama", "--method", "rtn", "--rank", "4"], "--rank: not used by method 'rtn'; it takes --clip, --grid, --max-shrink, --p"),
    ],
)
def test_bad_input_is_one_line_error_not_traceback(argv, needle, tmp_path, run_cli):
    base = ["quantize", "--model", "tiny-llama", "--out", str(tmp_path / "o")]
    code, _, err = run_cli(base + argv)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()


def test_failed_quantization_leaves_no_output(tmp_path, monkeypatch):
    import compactlm.ptq.rtn as rtn

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(rtn, "quantize_weight_rtn", boom)
    with pytest.raises(RuntimeError):
        main(["quantize", "--model", "tiny-llama", "--out", str(tmp_path / "o")])
    assert list(tmp_path.iterdir()) == []


def test_models_and_methods_list(run_cli):
    assert run_cli(["models"])[1].count("smollm2-135m") == 1
    code, out, _ = run_cli(["methods"])
    assert code == 0 and "rtn" in out and "--clip" in out


def _subcommands(parser, prefix=()):
    """``(path, one-line help, parser)`` of every (nested) subcommand."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, p in action.choices.items():
                yield (*prefix, name), helps.get(name), p
                yield from _subcommands(p, (*prefix, name))


def test_every_subcommand_and_option_is_documented():
    """`compactlm --help` lists each command with a line of help, and every flag says what it does."""
    import argparse

    found = list(_subcommands(build_parser()))
    assert {"quantize", "eval", "qat", "export", "lut"} <= {path[0] for path, _, _ in found}
    for path, line, p in found:
        assert line and line.strip(), f"{' '.join(path)}: no help line in the command list"
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            text = (action.help or "").strip()
            names = {o.lstrip("-") for o in action.option_strings} | {action.dest}
            assert text and text not in names, f"{' '.join(path)} {action.option_strings}: no help text"


def test_the_session_never_uses_the_users_cache():
    """tests/conftest.py points $COMPACTLM_CACHE at a temporary folder for the whole session."""
    import os
    from pathlib import Path

    from compactlm.cache import cache_dir

    if os.environ.get("COMPACTLM_TEST_CACHE"):
        pytest.skip("COMPACTLM_TEST_CACHE chooses the cache explicitly")
    root = cache_dir()
    assert root != Path.home() / ".cache" / "compactlm"
    assert Path(os.environ["COMPACTLM_CACHE"]) == root
