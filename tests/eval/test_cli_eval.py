"""`compactlm eval` and `compactlm data` on tiny models and local files (no downloads)."""

import json

import pytest

from compactlm.cli import main


def test_eval_tiny_model_writes_json(tmp_path, tmp_cache, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"paragraph {i} of a small local corpus." for i in range(30)))
    out = tmp_path / "r" / "report.json"
    assert main(["eval", "--model", "tiny-llama", "--ppl", str(corpus), "--seq-len", "32",
                 "--max-tokens", "256", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "perplexity on" in printed and "wrote" in printed
    result = json.loads(out.read_text())
    assert result["model"] == "tiny-llama" and result["perplexity"]["tokens"] == 8 * 31
    assert result["perplexity"]["ppl"] > 1


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--model", "tiny-llama", "--tasks", "arc_easy,nope"], "--tasks: unknown task 'nope'"),
    (["eval", "--model", "tiny-llama", "--ppl", "none"], "nothing to do"),
    (["eval", "--model", "tiny-llama", "--ppl", "missing.txt"], "file not found"),
    (["data", "fetch"], "--all"),
    (["data", "fetch", "bogus"], "unknown name 'bogus'"),
])
def test_cli_errors_are_one_line(argv, needle, capsys, tmp_cache):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "wiki-eval" in out and "winogrande" in out and "wikitext2" in out
