"""The command-line spine (compactlm.commands.args): one name per concept, help from the config
dataclasses' docs, unused flags as errors, deprecated aliases, --device auto, PTQ resume by default,
LUT run dirs loadable by `compactlm eval`, one recipe loader."""

import argparse
import json

import pytest
import torch

from compactlm.cli import build_parser
from compactlm.commands import args as A
from compactlm.errors import CompactLMError
from compactlm.io import read_json


def _help(*path: str) -> str:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return " ".join(parser.format_help().split())  # one line: no wrapping in the way of matching


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    words = "the quick brown fox jumps over a lazy dog while seven bright stars shine above quiet hills".split()
    paras = [" ".join(words[(i * 5 + j) % len(words)] for j in range(50)).capitalize() + "." for i in range(30)]
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n\n".join(paras) + "\n", encoding="ascii")
    return str(path)


# ----------------------------------------------------------------------------- help from docstrings

def test_quantize_help_shows_each_options_documented_meaning_default_and_methods():
    text = _help("quantize")
    assert "option of" not in text
    assert "--p X Exponent of the clip search (default 2.4; methods: rtn)" in text
    assert "--grid N Number of shrink steps per unit of range (default 100; methods: rtn)" in text
    assert "--rank-ratio X Rank as a fraction of min(C_out, C_in) (rounded, at least 1) (default 0.25; methods: lrq)" in text
    # inherited from ReconstructionConfig's docstring, shared by both reconstruction methods
    assert "--iters N Optimisation steps per block" in text and "(default 200; methods: flexround, lrq)" in text
    # a field documented differently per method shows each method's meaning
    assert "rtn: \"minmax\" (full range)" in text and "smoothquant: Weight range of the following RTN" in text


def test_every_method_option_is_a_flag_and_names_its_methods():
    import dataclasses

    from compactlm.registry import list_methods

    text = _help("quantize")
    for m in list_methods():
        for f in dataclasses.fields(m.config_cls):
            assert ("--seed" if f.name == "seed" else A.flag_name(f.name)) in text, (m.name, f.name)
    assert "fraction of min(C_out, C_in) (rounded, at least 1) (default 0.25; methods: lrq)" in text


def test_field_docs_reads_multi_name_entries_and_inherited_sections():
    import dataclasses

    from compactlm.ptq.flexround import FlexRoundConfig

    @dataclasses.dataclass
    class Base:
        """Base.

        Attributes:
            quantizer / per / clip: Fields of the quantizer,
                continued on a second line.
            steps, batch_size, ...: Budget fields.
            lr (float): Learning rate.

        Example:
            not: an attribute
        """

        quantizer: str = "auto"
        per: str = "channel"
        clip: float | None = None
        steps: int = 1
        batch_size: int = 2
        lr: float = 0.1

    @dataclasses.dataclass
    class Child(Base):
        """Child.

        Attributes:
            lr: The child's own learning rate.
        """

    docs = A.field_docs(Child)
    assert docs["per"] == docs["quantizer"] == docs["clip"] == "Fields of the quantizer, continued on a second line."
    assert docs["steps"] == docs["batch_size"] == "Budget fields."
    assert docs["lr"] == "The child's own learning rate." and "not" not in docs
    assert "work_dir" in A.field_docs(FlexRoundConfig)  # FlexRoundConfig documents no field itself


# ----------------------------------------------------------------------------- unused flags

@pytest.mark.parametrize("argv, needle", [
    (["quantize", "--model", "tiny-llama", "--method", "rtn", "--iters", "5"],
     "--iters: not used by method 'rtn'; it takes --clip, --grid, --max-shrink, --p"),
    (["quantize", "--model", "tiny-llama", "--method", "flexround", "--alpha", "0.5"],
     "--alpha: not used by method 'flexround'; it takes "),
    (["quantize", "--model", "tiny-llama", "--method", "rtn", "--samples", "8"],
     "--samples: not used by method 'rtn' with scheme w4a16 (no calibration)"),
    (["quantize", "--model", "tiny-llama", "--method", "rtn", "--calib", "wiki"],
     "--calib: not used by method 'rtn' with scheme w4a16 (no calibration)"),
    (["eval", "--model", "tiny-llama", "--limit", "5"], "--limit: not used by a run without --tasks"),
    (["eval", "--model", "tiny-llama", "--ppl", "none", "--tasks", "piqa", "--stride", "4"], "--stride: not used by --ppl none"),
    (["eval", "--model", "tiny-llama", "--backend", "reference"], "--backend: not used by --model tiny-llama (no quantized"),
    (["export", "--model", "x", "--out", "y", "--lossy"], "--lossy: not used by --format compressed-tensors; it takes --verify"),
    (["export", "--model", "x", "--format", "gguf", "--out", "y.gguf", "--verify"], "--verify: not used by --format gguf"),
    (["generate", "--model", "tiny-llama", "--top-p", "0.9", "hi"], "--top-p: not used by greedy decoding"),
    (["speed", "--model", "tiny-llama", "--keep-codes"], "--keep-codes: not used by --model tiny-llama (no quantized"),
    (["lut", "apply", "--model", "tiny-llama", "--ppl", "x.txt", "--steps", "5"], "--steps: not used by lut apply without calibration"),
    (["lut", "eval", "--ppl", "wiki-eval"], "--ppl: not used by lut eval without --model"),
    (["lut", "fit", "--out", "t", "--method", "uniform", "--steps", "3"], "--steps: not used by --method uniform"),
])
def test_a_flag_the_chosen_path_ignores_is_a_one_line_error(argv, needle, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(argv + (["--out", "o"] if argv[0] == "quantize" else []))
    assert code == 2, err
    assert needle in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_calibration_flags_are_taken_when_the_scheme_calibrates(tmp_path, run_cli):
    out = tmp_path / "o"
    code, _, err = run_cli(["quantize", "--model", "tiny-llama", "--method", "rtn", "--scheme", "w8a8",
                            "--samples", "3", "--seq-len", "16", "--out", str(out)])
    assert code == 0, err
    assert read_json(out / "config.json")["calib"] == {"source": "wiki", "samples": 3, "seq_len": 16}


def test_reject_unused_ignores_flags_left_at_their_default():
    p = A.SpineParser(prog="x")
    A.add_seed(p)
    ns = p.parse_args([])
    A.reject_unused(ns, ["seed"], "anything")  # not typed: no error
    ns = p.parse_args(["--seed", "0"])  # typed, even at its default value
    with pytest.raises(CompactLMError, match="--seed: not used by anything"):
        A.reject_unused(ns, ["seed"], "anything")


# ----------------------------------------------------------------------------- deprecated aliases

def test_old_calibration_flag_names_still_work_warn_and_are_hidden(tmp_path, run_cli, corpus, caplog):
    out = tmp_path / "o"
    with caplog.at_level("WARNING"):
        code, stdout, err = run_cli(["quantize", "--model", "tiny-llama", "--method", "flexround", "--iters", "1",
                                     "--calib", corpus, "--calib-samples", "2", "--calib-seq-len", "16", "--out", str(out)])
    assert code == 0, err
    assert read_json(out / "config.json")["calib"] == {"source": corpus, "samples": 2, "seq_len": 16}
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "--calib-samples is deprecated; use --samples" in warned and "--calib is deprecated; use --data" in warned
    text = _help("quantize")
    assert "--samples N" in text and "--calib-samples" not in text and "--calib " not in text


def test_lut_apply_old_names_are_aliases():
    ns = build_parser().parse_args(["lut", "apply", "--model", "m", "--calibrate", "4", "--calib", "c.txt",
                                    "--fit-steps", "7"])
    assert (ns.samples, ns.data, ns.steps) == (4, "c.txt", 7)
    assert [old for old, _ in A.deprecated_used(ns)] == ["--calibrate", "--calib", "--fit-steps"]


# ----------------------------------------------------------------------------- --device

@pytest.mark.parametrize("path", [("quantize",), ("eval",), ("generate",), ("speed",), ("lut", "apply"), ("lut", "eval")])
def test_every_command_that_runs_a_model_defaults_to_device_auto(path):
    assert "--device DEVICE torch device: auto (cuda when present, else cpu)" in _help(*path)
    assert "(default: auto)" in _help(*path)


def test_device_auto_picks_cuda_only_when_present(monkeypatch):
    from compactlm.devices import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("argv", [
    ["quantize", "--model", "tiny-llama", "--out", "o"],
    ["eval", "--model", "tiny-llama"],
    ["generate", "--model", "tiny-llama", "hi"],
    ["lut", "apply", "--model", "tiny-llama", "--ppl", "x.txt"],
])
def test_device_cuda_without_cuda_is_a_one_line_error(argv, run_cli, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(argv + ["--device", "cuda"])
    assert code == 2 and "--device: 'cuda' asked for, but this machine has no CUDA device" in err
    assert err.strip().count("\n") == 0


def test_eval_runs_with_device_auto(tmp_path, run_cli, corpus):
    out = tmp_path / "r.json"
    code, _, err = run_cli(["eval", "--model", "tiny-llama", "--ppl", corpus, "--seq-len", "32", "--max-tokens", "128",
                            "--device", "auto", "--out", str(out)])
    assert code == 0, err
    assert read_json(out)["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- PTQ resumes by default

_FLEX = ["quantize", "--model", "tiny-llama", "--method", "flexround", "--iters", "2", "--samples", "4",
         "--seq-len", "16"]


def _interrupt_after_first_block(monkeypatch):
    from compactlm.ptq import store

    original = store.WorkDir.save_block

    def save_then_die(self, index, *a, **k):
        original(self, index, *a, **k)
        if index == 0:
            raise KeyboardInterrupt  # the user's Ctrl-C (or a kill) after block 0 was saved

    monkeypatch.setattr(store.WorkDir, "save_block", save_then_die)


def test_killed_quantize_resumes_with_the_same_command_and_cleans_up(tmp_path, run_cli, monkeypatch):
    from compactlm.commands.quantize import default_work_dir

    ref = tmp_path / "ref"
    assert run_cli(_FLEX + ["--out", str(ref)])[0] == 0
    assert not default_work_dir(ref).exists()  # removed after success
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after_first_block(m)
        code, _, err = run_cli(_FLEX + ["--out", str(out)])
    assert code == 130 and not out.exists()
    work = default_work_dir(out)
    assert work == tmp_path / "run.work" and json.loads((work / "progress.json").read_text())["done"] == 1
    code, stdout, err = run_cli(_FLEX + ["--out", str(out)])  # the same command again
    assert code == 0, err
    assert '"resumed_blocks": 1' in stdout and read_json(out / "report.json")["resumed_blocks"] == 1
    assert not work.exists()
    from safetensors.torch import load_file

    a, b = load_file(ref / "quant_state.safetensors"), load_file(out / "quant_state.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # identical to an uninterrupted run


def test_overwrite_discards_the_resume_state(tmp_path, run_cli, monkeypatch):
    from compactlm.commands.quantize import default_work_dir

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after_first_block(m)
        assert run_cli(_FLEX + ["--out", str(out)])[0] == 130
    assert default_work_dir(out).exists()
    code, stdout, err = run_cli(_FLEX + ["--out", str(out), "--overwrite"])
    assert code == 0, err
    assert read_json(out / "report.json")["resumed_blocks"] == 0 and not default_work_dir(out).exists()


def test_changed_settings_after_a_kill_say_how_to_go_on(tmp_path, run_cli, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after_first_block(m)
        assert run_cli(_FLEX + ["--out", str(out)])[0] == 130
    code, _, err = run_cli(_FLEX[:-1] + ["12", "--out", str(out)])  # another --seq-len
    assert code == 2 and "run.work holds the state of an interrupted run with other settings" in err
    assert "--overwrite" in err and err.strip().count("\n") == 0


def test_an_explicit_work_dir_is_kept(tmp_path, run_cli):
    work = tmp_path / "state"
    code, _, err = run_cli(_FLEX + ["--work-dir", str(work), "--out", str(tmp_path / "o")])
    assert code == 0, err
    assert (work / "progress.json").is_file() and not (tmp_path / "o.work").exists()


# ----------------------------------------------------------------------------- LUT run dirs in eval

def test_eval_loads_a_lut_run_dir_with_its_tables_applied(tmp_path, run_cli, corpus):
    run = tmp_path / "lutrun"
    ppl = ["--ppl", corpus, "--seq-len", "64", "--max-tokens", "400"]
    code, _, err = run_cli(["lut", "apply", "--model", "tiny-gpt2", "--entries", "8", *ppl, "--out", str(run)])
    assert code == 0, err
    lut_ppl = read_json(run / "report.json")["metrics"]["ppl"]
    code, _, err = run_cli(["eval", "--model", str(run), *ppl])
    assert code == 0, err
    got = read_json(run / "eval.json")["perplexity"]["ppl"]
    code, _, _ = run_cli(["eval", "--model", "tiny-gpt2", *ppl, "--out", str(tmp_path / "fp.json")])
    fp = read_json(tmp_path / "fp.json")["perplexity"]["ppl"]
    assert abs(got - lut_ppl) < 1e-5 * lut_ppl and abs(got - fp) > 1e-4 * fp


def test_load_model_of_a_fixed_point_lut_run_over_a_quantized_run(tmp_path, run_cli):
    from compactlm.lut.apply import LUTActivation
    from compactlm.models import load_model
    from compactlm.quant import QuantLinear

    q = tmp_path / "q"
    assert run_cli(["quantize", "--model", "tiny-gpt2", "--out", str(q)])[0] == 0
    run = tmp_path / "lut"
    code, _, err = run_cli(["lut", "apply", "--model", str(q), "--entries", "8", "--bits", "12", "--ops", "gelu",
                            "--out", str(run)])
    assert code == 0, err
    model, _ = load_model(str(run))
    mods = list(model.modules())
    assert any(isinstance(m, QuantLinear) for m in mods)
    acts = [m for m in mods if isinstance(m, LUTActivation)]
    assert len(acts) == 2 and all(getattr(a.table, "bits", None) == 12 for a in acts)
    model.lut_handle.remove()
    assert not any(isinstance(m, LUTActivation) for m in model.modules())


# ----------------------------------------------------------------------------- recipes

def test_quantize_recipe_with_flags_on_top(tmp_path, run_cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tiny-llama\nmethod: flexround\niters: 3\nsamples: 2\nseq-len: 16\nlr: 0.01\n")
    out = tmp_path / "o"
    code, _, err = run_cli(["quantize", "--recipe", str(recipe), "--iters", "1", "--out", str(out)])
    assert code == 0, err
    config = read_json(out / "config.json")
    assert config["method"] == "flexround" and config["options"]["iters"] == 1 and config["options"]["lr"] == 0.01
    assert config["calib"]["samples"] == 2 and config["calib"]["seq_len"] == 16


@pytest.mark.parametrize("text, needle", [
    ("model: tiny-llama\nitres: 3\n", "has unknown key 'itres'"),
    ("model: tiny-llama\nmethod: rtn\niters: 3\n", "key 'iters' is not an option of method 'rtn'"),
    ("- a\n- b\n", "must hold a mapping"),
    ("a: [1,\n", "is not valid YAML"),
])
def test_recipe_mistakes_are_one_line_errors_naming_the_file(text, needle, tmp_path, run_cli):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    code, _, err = run_cli(["quantize", "--recipe", str(recipe), "--out", str(tmp_path / "o")])
    assert code == 2 and needle in err and str(recipe) in err and err.strip().count("\n") == 0


def test_load_recipe_json_and_merge(tmp_path):
    from compactlm.recipes import load_recipe, merge

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"seq-len": 64, "steps": 10}))
    recipe = load_recipe(path, known={"seq_len", "steps"})
    assert recipe == {"seq_len": 64, "steps": 10}
    assert merge(recipe, {"steps": 3, "seq_len": None}) == {"seq_len": 64, "steps": 3}
    with pytest.raises(CompactLMError, match=r"--recipe: .*r.json has unknown key 'steps'"):
        load_recipe(path, known={"seq_len"})
    with pytest.raises(CompactLMError, match="no such file"):
        load_recipe(tmp_path / "none.yaml")
